// A real sotto-relay process on a temp data dir, for the JVM tests: started
// on ephemeral loopback ports, it writes <data-dir>/relay.addr
// (`quic=IP:PORT`, `fingerprint=HEX`), from which the relay address
// `IP:PORT/FINGERPRINT` is built. The binary comes from the system property
// `sotto.relay.bin` (scripts/test-bindings sets it).
package dev.sotto

import java.io.File
import java.nio.file.Files
import java.nio.file.Path
import java.util.concurrent.TimeUnit
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.BeforeAll
import org.junit.jupiter.api.TestInstance

class RelayProcess private constructor(
    private val process: Process,
    val dataDir: Path,
    /** `IP:PORT/FINGERPRINTHEX`, what `SottoClient.create` takes. */
    val address: String,
) : AutoCloseable {
    override fun close() {
        process.destroy()
        if (!process.waitFor(5, TimeUnit.SECONDS)) process.destroyForcibly().waitFor()
        dataDir.toFile().deleteRecursively()
    }

    companion object {
        fun start(): RelayProcess {
            val bin = System.getProperty("sotto.relay.bin")
                ?: error("set -Dsotto.relay.bin=/path/to/sotto-relay (scripts/test-bindings does)")
            require(File(bin).canExecute()) { "relay binary not found or not executable: $bin" }
            val dir = Files.createTempDirectory("sotto-relay-")
            val process = ProcessBuilder(
                bin, "--data-dir", dir.toString(),
                "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
            )
                .redirectOutput(ProcessBuilder.Redirect.DISCARD)
                .redirectError(dir.resolve("relay.log").toFile())
                .start()
            val addrFile = dir.resolve("relay.addr")
            val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60)
            while (true) {
                if (Files.exists(addrFile)) {
                    val fields = Files.readAllLines(addrFile)
                        .mapNotNull { line -> line.split("=", limit = 2).takeIf { it.size == 2 } }
                        .associate { it[0] to it[1] }
                    val quic = fields["quic"]
                    val fingerprint = fields["fingerprint"]
                    if (quic != null && fingerprint != null) {
                        return RelayProcess(process, dir, "$quic/$fingerprint")
                    }
                }
                if (!process.isAlive) {
                    error("relay exited with ${process.exitValue()}: " + dir.resolve("relay.log").toFile().readText())
                }
                if (System.nanoTime() > deadline) {
                    process.destroyForcibly()
                    error("relay did not write relay.addr within 60 s")
                }
                Thread.sleep(20)
            }
        }
    }
}

/**
 * A test class with one real relay for all its tests, and a way to register
 * users on it.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
abstract class RelayTest {
    protected lateinit var relay: RelayProcess

    @BeforeAll
    fun startRelay() {
        relay = RelayProcess.start()
    }

    @AfterAll
    fun stopRelay() {
        relay.close()
    }

    /** A new user registered on the relay, its store in `dir`. */
    protected suspend fun newUser(dir: Path, name: String): SottoClient =
        SottoClient.create(dir.resolve("$name.db").toString(), randomKey(), relay.address)
}
