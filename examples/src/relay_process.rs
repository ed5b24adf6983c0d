//! A real `sotto-relay` process on a temp data dir, for demos and tests.
//!
//! The relay writes `relay.addr` into its data dir once it listens
//! (`quic=`, `fingerprint=` hex SHA-256 of its certificate, `metrics=`); we
//! start it on ephemeral loopback ports and read that file, so nothing here
//! guesses ports. The process is killed when the handle drops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
        let addr_file = dir.join("relay.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("relay.log"))?;
        let child = Command::new(binary)
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
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
            if let Some((addr, pin, metrics)) = read_addr_file(&addr_file) {
                relay.addr = addr;
                relay.pin = pin;
                relay.metrics = metrics;
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

fn read_addr_file(path: &Path) -> Option<(SocketAddr, [u8; 32], Option<SocketAddr>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (mut addr, mut pin, mut metrics) = (None, None, None);
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("quic=") {
            addr = v.parse().ok();
        } else if let Some(v) = line.strip_prefix("fingerprint=") {
            pin = hex::decode(v).ok().and_then(|b| b.try_into().ok());
        } else if let Some(v) = line.strip_prefix("metrics=") {
            metrics = v.parse().ok();
        }
    }
    Some((addr?, pin?, metrics))
}
