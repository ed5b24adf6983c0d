//! `<data_dir>/relay.addr`: how a started relay tells local tools where it
//! listens and which certificate to pin.
//!
//! The relay binds ephemeral ports in tests and demos, so the file is the one
//! place that says what it got. Format, one `key=value` per line:
//! `quic=<socket addr>`, `fingerprint=<hex SHA-256 of the certificate>`, and
//! optionally `metrics=<socket addr>`. Written atomically (temp + rename).

use std::net::SocketAddr;
use std::path::Path;

/// File name inside the relay's data directory.
pub const FILE_NAME: &str = "relay.addr";

/// What a running relay published about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrFile {
    /// QUIC listen address.
    pub quic: SocketAddr,
    /// SHA-256 of the relay's certificate (pin it).
    pub fingerprint: [u8; 32],
    /// Metrics / health HTTP address, if enabled.
    pub metrics: Option<SocketAddr>,
}

impl AddrFile {
    /// The file's text.
    pub fn render(&self) -> String {
        let mut text = format!(
            "quic={}\nfingerprint={}\n",
            self.quic,
            hex::encode(self.fingerprint)
        );
        if let Some(m) = self.metrics {
            text.push_str(&format!("metrics={m}\n"));
        }
        text
    }

    /// Parses the text; `None` if the address or fingerprint is missing or bad.
    pub fn parse(text: &str) -> Option<Self> {
        let (mut quic, mut fingerprint, mut metrics) = (None, None, None);
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("quic=") {
                quic = v.parse().ok();
            } else if let Some(v) = line.strip_prefix("fingerprint=") {
                fingerprint = hex::decode(v).ok().and_then(|b| b.try_into().ok());
            } else if let Some(v) = line.strip_prefix("metrics=") {
                metrics = v.parse().ok();
            }
        }
        Some(AddrFile {
            quic: quic?,
            fingerprint: fingerprint?,
            metrics,
        })
    }

    /// Reads `<dir>/relay.addr`; `None` if absent (not started yet) or invalid.
    pub fn read(dir: &Path) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(dir.join(FILE_NAME)).ok()?)
    }

    /// Writes `<dir>/relay.addr` atomically.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        std::fs::write(&tmp, self.render())?;
        std::fs::rename(tmp, dir.join(FILE_NAME))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_and_rejects_incomplete() {
        let f = AddrFile {
            quic: "127.0.0.1:4433".parse().unwrap(),
            fingerprint: [7; 32],
            metrics: Some("127.0.0.1:9090".parse().unwrap()),
        };
        assert_eq!(AddrFile::parse(&f.render()), Some(f));
        let no_metrics = AddrFile { metrics: None, ..f };
        assert_eq!(AddrFile::parse(&no_metrics.render()), Some(no_metrics));
        assert_eq!(AddrFile::parse("quic=127.0.0.1:1\n"), None);
        assert_eq!(
            AddrFile::parse("quic=127.0.0.1:1\nfingerprint=abcd\n"),
            None
        );
    }
}
