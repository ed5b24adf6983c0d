// JMH benchmarks of libsignal 0.86.5 (its Java API over the bundled Rust library): session setup
// both sides, one-way 256 B and ping-pong, timed like Sotto's and Olm's in ../../benches/olm.rs so
// that the three can be compared on one machine in one run. See README.md for what is timed.
package org.sotto.bench;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.Arrays;
import java.util.concurrent.TimeUnit;

import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.Warmup;
import org.signal.libsignal.protocol.IdentityKey;
import org.signal.libsignal.protocol.IdentityKeyPair;
import org.signal.libsignal.protocol.SessionBuilder;
import org.signal.libsignal.protocol.SessionCipher;
import org.signal.libsignal.protocol.SignalProtocolAddress;
import org.signal.libsignal.protocol.ecc.ECKeyPair;
import org.signal.libsignal.protocol.ecc.ECPublicKey;
import org.signal.libsignal.protocol.kem.KEMKeyPair;
import org.signal.libsignal.protocol.kem.KEMKeyType;
import org.signal.libsignal.protocol.kem.KEMPublicKey;
import org.signal.libsignal.protocol.message.CiphertextMessage;
import org.signal.libsignal.protocol.message.PreKeySignalMessage;
import org.signal.libsignal.protocol.message.SignalMessage;
import org.signal.libsignal.protocol.state.KyberPreKeyRecord;
import org.signal.libsignal.protocol.state.PreKeyBundle;
import org.signal.libsignal.protocol.state.PreKeyRecord;
import org.signal.libsignal.protocol.state.SignedPreKeyRecord;
import org.signal.libsignal.protocol.state.impl.InMemorySignalProtocolStore;

/**
 * libsignal (org.signal:libsignal-client, Java binding over the Rust core) measured the
 * same way as Sotto and vodozemac in ../benches/olm.rs: session setup on both sides,
 * one-way 256 B messages, and a 64 B ping-pong. Every message crosses the "wire":
 * the sender serializes, the receiver parses the bytes, as a real client would.
 */
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MICROSECONDS)
@Fork(1)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
public class LibsignalBench {

    static final SignalProtocolAddress ALICE = new SignalProtocolAddress("alice", 1);
    static final SignalProtocolAddress BOB = new SignalProtocolAddress("bob", 1);
    static final int BOB_DEVICE = 1;
    static final int SIGNED_PREKEY_ID = 1;
    static final int KYBER_PREKEY_ID = 1;
    static final int ONE_TIME_PREKEY_ID = 1;
    static final byte[] HELLO = "hello".getBytes(StandardCharsets.UTF_8);

    /** Long-lived identities and Bob's signed prekeys: the same for the whole run. */
    static final class Identities {
        final IdentityKeyPair alice = IdentityKeyPair.generate();
        final IdentityKeyPair bob = IdentityKeyPair.generate();
        final int aliceRegId = 1111;
        final int bobRegId = 2222;
        final SignedPreKeyRecord signedPreKey;
        final KyberPreKeyRecord kyberPreKey;
        // Public halves as Bob would publish them (what Alice fetches from the server).
        final byte[] bobIdentityPub;
        final byte[] signedPreKeyPub;
        final byte[] signedPreKeySig;
        final byte[] kyberPreKeyPub;
        final byte[] kyberPreKeySig;

        Identities() {
            long now = System.currentTimeMillis();
            ECKeyPair spk = ECKeyPair.generate();
            signedPreKeyPub = spk.getPublicKey().serialize();
            signedPreKeySig = bob.getPrivateKey().calculateSignature(signedPreKeyPub);
            signedPreKey = new SignedPreKeyRecord(SIGNED_PREKEY_ID, now, spk, signedPreKeySig);
            // 0.86's PreKeyBundle requires a Kyber prekey; KYBER_1024 is the only KEMKeyType.
            KEMKeyPair kem = KEMKeyPair.generate(KEMKeyType.KYBER_1024);
            kyberPreKeyPub = kem.getPublicKey().serialize();
            kyberPreKeySig = bob.getPrivateKey().calculateSignature(kyberPreKeyPub);
            kyberPreKey = new KyberPreKeyRecord(KYBER_PREKEY_ID, now, kem, kyberPreKeySig);
            bobIdentityPub = bob.getPublicKey().serialize();
        }

        InMemorySignalProtocolStore aliceStore() {
            return new InMemorySignalProtocolStore(alice, aliceRegId);
        }

        /** A fresh Bob store holding the long-lived prekeys and one new one-time prekey. */
        InMemorySignalProtocolStore bobStore(PreKeyRecord oneTime) {
            InMemorySignalProtocolStore s = new InMemorySignalProtocolStore(bob, bobRegId);
            s.storeSignedPreKey(SIGNED_PREKEY_ID, signedPreKey);
            s.storeKyberPreKey(KYBER_PREKEY_ID, kyberPreKey);
            s.storePreKey(oneTime.getId(), oneTime);
            return s;
        }

        /** Alice's side: build the bundle from the published bytes (as fetched from a server). */
        PreKeyBundle bundle(byte[] oneTimePub) throws Exception {
            return new PreKeyBundle(
                    bobRegId, BOB_DEVICE,
                    ONE_TIME_PREKEY_ID, new ECPublicKey(oneTimePub),
                    SIGNED_PREKEY_ID, new ECPublicKey(signedPreKeyPub), signedPreKeySig,
                    new IdentityKey(bobIdentityPub),
                    KYBER_PREKEY_ID, new KEMPublicKey(kyberPreKeyPub), kyberPreKeySig);
        }
    }

    /** X3DH/PQXDH first contact; fresh stores and a fresh one-time prekey per invocation. */
    @State(Scope.Thread)
    public static class Handshake {
        Identities ids;
        InMemorySignalProtocolStore aliceStore;
        InMemorySignalProtocolStore bobStore;
        byte[] oneTimePub;

        @Setup(Level.Trial)
        public void trial() throws Exception {
            ids = new Identities();
            reportNativeLibrary();
            fresh();
            byte[] pt = LibsignalBench.handshake(this);
            check(Arrays.equals(pt, HELLO), "handshake round trip");
        }

        /** Outside the timed region: key generation and store population for Bob. */
        @Setup(Level.Invocation)
        public void fresh() {
            ECKeyPair otk = ECKeyPair.generate();
            oneTimePub = otk.getPublicKey().serialize();
            aliceStore = ids.aliceStore();
            bobStore = ids.bobStore(new PreKeyRecord(ONE_TIME_PREKEY_ID, otk));
        }
    }

    /** An established session: Alice initiated, Bob replied, so both send plain SignalMessages. */
    @State(Scope.Thread)
    public static class Established {
        SessionCipher alice;
        SessionCipher bob;

        @Setup(Level.Trial)
        public void trial() throws Exception {
            Handshake h = new Handshake();
            h.trial();
            h.fresh();
            check(Arrays.equals(handshake(h), HELLO), "first message");
            alice = new SessionCipher(h.aliceStore, BOB);
            bob = new SessionCipher(h.bobStore, ALICE);
            CiphertextMessage reply = bob.encrypt(HELLO);
            check(reply.getType() == CiphertextMessage.WHISPER_TYPE, "Bob replies with a SignalMessage");
            check(Arrays.equals(alice.decrypt(new SignalMessage(reply.serialize())), HELLO), "reply");
            for (int n : new int[] {64, 256}) {
                CiphertextMessage m = alice.encrypt(new byte[n]);
                check(m.getType() == CiphertextMessage.WHISPER_TYPE, "Alice now sends SignalMessages");
                byte[] wire = m.serialize();
                SignalMessage parsed = new SignalMessage(wire);
                System.out.printf("# libsignal %d B plaintext -> %d B SignalMessage (pq_ratchet field %d B)%n",
                        n, wire.length, parsed.getPqRatchet().length);
                check(bob.decrypt(parsed).length == n, "one-way " + n);
            }
        }
    }

    static byte[] handshake(Handshake s) throws Exception {
        PreKeyBundle bundle = s.ids.bundle(s.oneTimePub);
        new SessionBuilder(s.aliceStore, BOB).process(bundle); // verifies both prekey signatures
        CiphertextMessage first = new SessionCipher(s.aliceStore, BOB).encrypt(HELLO);
        byte[] wire = first.serialize();
        PreKeySignalMessage received = new PreKeySignalMessage(wire);
        return new SessionCipher(s.bobStore, ALICE).decrypt(received);
    }

    static final byte[] PT256 = filled(256);
    static final byte[] PT64 = filled(64);

    /**
     * Timed: Alice parses Bob's published keys into a PreKeyBundle, SessionBuilder.process
     * (signature checks, X3DH + ML-KEM-1024 encapsulation), encrypts "hello", serializes it;
     * Bob parses the PreKeySignalMessage and decrypts it (ML-KEM decapsulation, one-time
     * prekey consumed, session stored). Not timed: Bob's one-time prekey generation and
     * both fresh in-memory stores (JMH @Setup(Level.Invocation)).
     */
    @Benchmark
    public byte[] setupBothSides(Handshake s) throws Exception {
        return handshake(s);
    }

    /** Timed: Alice encrypts 256 B and serializes; Bob parses and decrypts. */
    @Benchmark
    public byte[] oneWay256(Established s) throws Exception {
        byte[] wire = s.alice.encrypt(PT256).serialize();
        return s.bob.decrypt(new SignalMessage(wire));
    }

    /** Timed: two messages (Alice to Bob, Bob to Alice), 64 B each; divide by 2 per message. */
    @Benchmark
    public byte[] pingPong(Established s) throws Exception {
        byte[] ping = s.alice.encrypt(PT64).serialize();
        s.bob.decrypt(new SignalMessage(ping));
        byte[] pong = s.bob.encrypt(PT64).serialize();
        return s.alice.decrypt(new SignalMessage(pong));
    }

    static byte[] filled(int n) {
        byte[] b = new byte[n];
        Arrays.fill(b, (byte) 0x42);
        return b;
    }

    static void check(boolean ok, String what) {
        if (!ok) {
            throw new IllegalStateException("sanity check failed: " + what);
        }
    }

    /** Print which libsignal native library the JVM mapped (must not be the testing build). */
    static void reportNativeLibrary() {
        try {
            Files.readAllLines(Paths.get("/proc/self/maps")).stream()
                    .filter(l -> l.contains("signal_jni"))
                    .map(l -> l.substring(l.indexOf('/')))
                    .distinct()
                    .forEach(p -> System.out.println("# libsignal native library: " + p));
        } catch (IOException | RuntimeException e) {
            System.out.println("# libsignal native library: unknown (" + e + ")");
        }
    }
}
