//! Test harness: spawns the real `sotto-relay` binary on loopback with a temp
//! data dir, reads its bound address and certificate fingerprint from
//! `relay.addr`, and hands out authenticated clients.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use rand_core::OsRng;
use sotto_relay::addr_file::AddrFile;
use sotto_relay::RelayClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) struct RelayProc {
    child: Option<Child>,
    pub(crate) dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub(crate) addr: SocketAddr,
    pub(crate) pin: [u8; 32],
    pub(crate) metrics: Option<SocketAddr>,
    args: Vec<String>,
}

fn read_addr_file(dir: &Path, deadline: Instant) -> (SocketAddr, [u8; 32], Option<SocketAddr>) {
    loop {
        if let Some(f) = AddrFile::read(dir) {
            return (f.quic, f.fingerprint, f.metrics);
        }
        assert!(
            Instant::now() < deadline,
            "relay did not start; see {}/relay.log",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl RelayProc {
    /// Starts a relay in a fresh temp dir with extra flags.
    pub(crate) fn start(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut r = Self::spawn(dir, extra.iter().map(|s| s.to_string()).collect());
        r._tmp = Some(tmp);
        r
    }

    fn spawn(dir: PathBuf, args: Vec<String>) -> Self {
        let _ = std::fs::remove_file(dir.join("relay.addr"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("relay.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sotto-relay"))
            .arg("--data-dir")
            .arg(&dir)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(&args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let (addr, pin, metrics) = read_addr_file(&dir, Instant::now() + Duration::from_secs(60));
        Self {
            child: Some(child),
            dir,
            _tmp: None,
            addr,
            pin,
            metrics,
            args,
        }
    }

    /// The relay process's resident memory, in bytes (Linux `/proc`).
    pub(crate) fn rss(&self) -> u64 {
        let pid = self.child.as_ref().expect("relay running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    /// kill -9: no chance to flush anything.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for a graceful exit.
    pub(crate) fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let status = c.wait().unwrap();
            assert!(status.success(), "relay exited with {status}");
        }
    }

    /// Sends SIGTERM and returns at once (the relay begins its graceful
    /// shutdown); [`Self::wait_exit`] waits for it.
    pub(crate) fn sigterm(&self) {
        let c = self.child.as_ref().expect("relay running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
    }

    /// Waits for the relay to exit and checks that it exited cleanly.
    pub(crate) fn wait_exit(&mut self) {
        if let Some(mut c) = self.child.take() {
            let status = c.wait().unwrap();
            assert!(status.success(), "relay exited with {status}");
        }
    }

    /// Starts the relay again on the same data dir (new port, same cert).
    pub(crate) fn restart(&mut self) {
        let tmp = self._tmp.take();
        let mut r = Self::spawn(self.dir.clone(), self.args.clone());
        r._tmp = tmp;
        *self = r;
    }

    pub(crate) async fn client(&self, key: &SigningKey) -> RelayClient {
        RelayClient::connect(self.addr, self.pin, key)
            .await
            .unwrap()
    }

    pub(crate) async fn http_get(&self, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(self.metrics.unwrap())
            .await
            .unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let code = out[9..12].parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (code, body)
    }

    /// A metric's value from /metrics.
    pub(crate) async fn metric(&self, name: &str) -> u64 {
        let (_, body) = self.http_get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("metric {name} missing")) as u64
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub(crate) fn key() -> SigningKey {
    SigningKey::generate(&mut OsRng)
}

/// Total size of files under `dir`.
pub(crate) fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += dir_size(&p);
            } else if let Ok(m) = e.metadata() {
                total += m.len();
            }
        }
    }
    total
}
