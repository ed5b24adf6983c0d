//! The one harness for a real `sotto-relay` process on a temp data dir: the
//! end-to-end tests' (and the demo's, which borrows it).
//!
//! The relay writes `relay.addr` into its data dir once it listens (see
//! `sotto_relay::addr_file`); we start it on ephemeral loopback ports and read
//! that file, so nothing here guesses ports. The process is killed when the handle drops.
//! [`RelayProcess::metrics_snapshot`] reads its Prometheus counters, which is
//! how the demo shows what the relay did at each step.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sotto_relay::addr_file::{self, AddrFile};

/// Harness failures are I/O errors (a failed start says why in its text).
type Result<T> = std::io::Result<T>;

fn failed(why: String) -> std::io::Error {
    std::io::Error::other(why)
}

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
        Self::start_logging(binary, extra, "info")
    }

    /// [`RelayProcess::start`], logging at `filter` (`RUST_LOG` syntax) to
    /// `relay.log` in its data dir.
    pub fn start_logging(binary: &Path, extra: &[&str], filter: &str) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_path_buf();
        let mut relay = Self::spawn_with(
            binary,
            &dir,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            extra,
            filter,
        )?;
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
        Self::spawn_with(binary, dir, listen, extra, "info")
    }

    fn spawn_with(
        binary: &Path,
        dir: &Path,
        listen: SocketAddr,
        extra: &[&str],
        filter: &str,
    ) -> Result<Self> {
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
            .env("RUST_LOG", filter)
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
                    return Err(failed(format!(
                        "relay exited with {status}; see {}",
                        dir.join("relay.log").display()
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(failed(
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

    /// Reads the relay's Prometheus `/metrics` (plain counters and gauges;
    /// histogram series and labelled lines are skipped).
    pub fn metrics_snapshot(&self) -> Result<RelayMetrics> {
        Ok(RelayMetrics::parse(&self.metrics_text()?))
    }

    /// The relay's Prometheus `/metrics` page, as text.
    pub fn metrics_text(&self) -> Result<String> {
        let addr = self
            .metrics
            .ok_or_else(|| failed("relay publishes no metrics".into()))?;
        let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        sock.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        sock.read_to_string(&mut text)?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| failed("bad metrics response".into()))?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(failed(format!(
                "metrics: {}",
                head.lines().next().unwrap_or_default()
            )));
        }
        Ok(body.to_string())
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

/// One reading of a relay's plain metrics, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RelayMetrics(pub BTreeMap<String, f64>);

impl RelayMetrics {
    /// Parses the Prometheus text format's unlabelled samples.
    pub fn parse(text: &str) -> Self {
        let values = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains('{'))
            .filter_map(|l| {
                let (name, value) = l.split_once(' ')?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect();
        RelayMetrics(values)
    }

    /// The value of `name` (0 if the relay does not export it).
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).map_or(0, |v| *v as u64)
    }

    /// How much counter `name` grew since `earlier`.
    pub fn delta(&self, earlier: &RelayMetrics, name: &str) -> u64 {
        self.get(name).saturating_sub(earlier.get(name))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_plain_samples_and_skips_the_rest() {
        let m = RelayMetrics::parse(
            "# HELP sotto_envelopes_accepted_total x\n# TYPE sotto_envelopes_accepted_total counter\n\
             sotto_envelopes_accepted_total 7\nsotto_send_seconds_bucket{le=\"0.1\"} 3\n\
             sotto_send_seconds_sum 0.25\ngarbage\n",
        );
        assert_eq!(m.get("sotto_envelopes_accepted_total"), 7);
        assert_eq!(m.get("sotto_send_seconds_bucket"), 0);
        assert_eq!(m.get("missing"), 0);
        let later = RelayMetrics::parse("sotto_envelopes_accepted_total 10\n");
        assert_eq!(later.delta(&m, "sotto_envelopes_accepted_total"), 3);
    }
}
