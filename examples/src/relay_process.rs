//! A real `sotto-relay` process on a temp data dir, for demos and tests.
//!
//! The relay writes `relay.addr` into its data dir once it listens (see
//! `sotto_relay::addr_file`); we start it on ephemeral loopback ports and read
//! that file, so nothing here guesses ports. The process is killed when the handle drops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sotto_relay::addr_file::{self, AddrFile};

use crate::{ExampleError, Result};

/// A running relay process.
#[derive(Debug)]
pub struct RelayProcess {
    child: Option<Child>,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// SHA-256 of its certificate, for pinning.
    pub pin: [u8; 32],
    /// Its metrics/health HTTP address, if it publishes one.
    pub metrics: Option<SocketAddr>,
}

impl RelayProcess {
    /// Starts `binary` on a fresh temp dir with `extra` flags.
    pub fn start(binary: &Path, extra: &[&str]) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_path_buf();
        let mut relay = Self::spawn(binary, &dir, extra)?;
        relay._tmp = Some(tmp);
        Ok(relay)
    }

    /// Starts `binary` on `dir` (kept after the process ends).
    pub fn spawn(binary: &Path, dir: &Path, extra: &[&str]) -> Result<Self> {
        Self::spawn_at(binary, dir, SocketAddr::from(([127, 0, 0, 1], 0)), extra)
    }

    /// Kills this relay (SIGKILL) and starts `binary` again on the same data
    /// dir and the same QUIC address, as an operator restarting a crashed
    /// relay would: clients' addresses and pins stay valid.
    pub fn restart(&mut self, binary: &Path) -> Result<()> {
        self.kill()?;
        let mut next = Self::spawn_at(binary, &self.dir, self.addr, &[])?;
        self.child = next.child.take();
        self.pin = next.pin;
        self.metrics = next.metrics;
        Ok(())
    }

    /// Starts `binary` on `dir`, listening on `listen`.
    pub fn spawn_at(binary: &Path, dir: &Path, listen: SocketAddr, extra: &[&str]) -> Result<Self> {
        let _ = std::fs::remove_file(dir.join(addr_file::FILE_NAME));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("relay.log"))?;
        let child = Command::new(binary)
            .arg("--data-dir")
            .arg(dir)
            .arg("--listen")
            .arg(listen.to_string())
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut relay = RelayProcess {
            child: Some(child),
            dir: dir.to_path_buf(),
            _tmp: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pin: [0; 32],
            metrics: None,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(f) = AddrFile::read(dir) {
                relay.addr = f.quic;
                relay.pin = f.fingerprint;
                relay.metrics = f.metrics;
                return Ok(relay);
            }
            if let Some(child) = relay.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(ExampleError::RelayProcess(format!(
                        "relay exited with {status}; see {}",
                        dir.join("relay.log").display()
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(ExampleError::RelayProcess(
                    "relay did not publish its address within 60 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The relay's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// True if any file under the relay's data dir contains `needle`: how the
    /// demo and the tests show the relay's disk holds no plaintext.
    pub fn disk_contains(&self, needle: &[u8]) -> Result<bool> {
        let mut stack = vec![self.dir.clone()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d)? {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Ok(bytes) = std::fs::read(&path) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }

    /// Ends the process at once (SIGKILL: nothing flushed).
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
