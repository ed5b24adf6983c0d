//! Shared by the power-cut tests: a LazyFs mounted on a temp dir, the
//! workspace binaries, and a random source the failure message can replay.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use sotto_powercut::LazyFs;

/// A LazyFs on a fresh temp dir (unmounted before the dir is removed).
pub(crate) struct Mount {
    pub(crate) fs: LazyFs,
    _dir: tempfile::TempDir,
}

impl Mount {
    pub(crate) fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lazyfs-")
            .tempdir()
            .unwrap();
        let fs = LazyFs::mount(dir.path()).unwrap_or_else(|e| {
            panic!(
                "{e}\nThese tests mount a FUSE filesystem: run them as root on a machine \
                 with /dev/fuse (./dev installs fuse3)."
            )
        });
        Mount { fs, _dir: dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.fs.path()
    }

    /// Power cut and remount; returns how many inodes lost changes.
    pub(crate) fn cut(&mut self) -> u64 {
        self.fs.power_cut_and_remount().unwrap()
    }
}

/// A workspace binary next to this test's target directory
/// (`target/debug/deps/<test>` -> `target/debug/<name>`), or `$env_var`.
pub(crate) fn workspace_binary(name: &str, env_var: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace --bins` (./dev test builds it) or set {env_var}",
        path.display()
    );
    path
}

/// A small seeded generator (xorshift), so a failing run can be replayed
/// with `POWERCUT_SEED`.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn from_env() -> Self {
        let seed = std::env::var("POWERCUT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("POWERCUT_SEED={seed}");
        Rng(seed | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `lo..hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

/// Starts `sotto-relay` on `data_dir` (without waiting for it to listen).
pub(crate) fn launch_relay(data_dir: &Path, log: &Path, extra: &[String]) -> std::process::Child {
    use std::process::{Command, Stdio};
    let _ = std::fs::remove_file(data_dir.join(sotto_relay::addr_file::FILE_NAME));
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(workspace_binary("sotto-relay", "SOTTO_RELAY_BIN"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0", "--no-metrics"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .unwrap()
}

/// A real `sotto-relay` process whose data dir may be on a LazyFs; its log
/// goes elsewhere (a log on the mount would be cut too).
pub(crate) struct RelayProc {
    child: Option<std::process::Child>,
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) pin: [u8; 32],
    pub(crate) log: PathBuf,
}

impl RelayProc {
    /// Starts the relay on `data_dir`; `Err` (with the log's tail) if it
    /// exits or does not publish its address within a minute.
    pub(crate) fn start(data_dir: &Path, log: &Path, extra: &[String]) -> Result<Self, String> {
        use std::time::{Duration, Instant};
        let mut child = launch_relay(data_dir, log, extra);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(f) = sotto_relay::addr_file::AddrFile::read(data_dir) {
                return Ok(RelayProc {
                    child: Some(child),
                    addr: f.quic,
                    pin: f.fingerprint,
                    log: log.to_path_buf(),
                });
            }
            let exited = child.try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(format!(
                    "relay did not start ({exited:?}); log tail:\n{}",
                    tail.join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reap it (so nothing of it holds a file on the mount).
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the graceful exit.
    pub(crate) fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let status = c.wait().unwrap();
            assert!(status.success(), "relay exited with {status}");
        }
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Quotas and rates out of the way (the tests are about the disk).
pub(crate) fn relay_flags() -> Vec<String> {
    [
        ("--mailbox-max-envelopes", "1000000"),
        ("--stranger-max-envelopes", "1000000"),
        ("--stranger-max-bytes", "268435456"),
        ("--send-rate-per-sec", "1000000"),
        ("--send-burst", "1000000"),
        ("--source-send-rate-per-sec", "1000000"),
        ("--source-send-burst", "1000000"),
    ]
    .iter()
    .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
    .collect()
}

/// Every envelope in `k`'s mailbox.
pub(crate) async fn fetch_all(
    relay: &RelayProc,
    k: &ed25519_dalek::SigningKey,
) -> Vec<(sotto_relay::EnvelopeId, Vec<u8>)> {
    let c = sotto_relay::RelayClient::connect(relay.addr, relay.pin, k)
        .await
        .unwrap();
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = c.fetch(cursor, 1000).await.unwrap();
        cursor = page.envelopes.last().map(|e| e.id).or(cursor);
        all.extend(page.envelopes.into_iter().map(|e| (e.id, e.payload)));
        if !page.more {
            break;
        }
    }
    c.close().await;
    all
}
