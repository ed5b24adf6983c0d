//! Addresses: which relay a user lives on, like the domain of an e-mail
//! address, and who the user is, by their identity key.
//!
//! A relay address is `host:port/fingerprint` (the SHA-256 of the relay's
//! certificate in hex, pinned on every connection), so an address alone is
//! enough to reach a relay safely. A user address is `user@relay`, where
//! `user` is the hex Ed25519 identity key: addresses are self-certifying, so a
//! relay cannot substitute another identity for the one the address names.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use sotto_core::identity::IdentityKey;

/// Where a relay listens and the certificate it must present.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayAddress {
    /// Host name or IP literal (IPv6 in brackets).
    pub host: String,
    /// UDP port.
    pub port: u16,
    /// SHA-256 of the relay's DER certificate.
    pub fingerprint: [u8; 32],
}

impl RelayAddress {
    /// Builds a relay address from a socket address and fingerprint.
    pub fn new(addr: std::net::SocketAddr, fingerprint: [u8; 32]) -> Self {
        let host = match addr.ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        RelayAddress {
            host,
            port: addr.port(),
            fingerprint,
        }
    }

    /// `host:port`, as accepted by `tokio::net::lookup_host`.
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for RelayAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.host,
            self.port,
            hex::encode(self.fingerprint)
        )
    }
}

impl fmt::Debug for RelayAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelayAddress({self})")
    }
}

impl FromStr for RelayAddress {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |what| Error::InvalidAddress(what);
        let (host_port, fp) = s.rsplit_once('/').ok_or(bad("missing /fingerprint"))?;
        let (host, port) = host_port.rsplit_once(':').ok_or(bad("missing :port"))?;
        // A DNS name or IPv4 literal, or a bracketed IPv6 literal: nothing
        // else (no control or bidirectional characters reach a screen).
        let dns = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '-';
        let v6 = |c: char| c.is_ascii_hexdigit() || c == ':' || c == '.';
        let ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(inner) => !inner.is_empty() && inner.chars().all(v6),
            None => host.chars().all(dns),
        };
        if host.is_empty() || host.len() > 253 || !ok {
            return Err(bad("bad host"));
        }
        let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
        Ok(RelayAddress {
            host: host.to_string(),
            port,
            fingerprint: parse_hex32(fp).ok_or(bad("fingerprint is not 64 hex digits"))?,
        })
    }
}

/// A user: their Ed25519 identity key and their home relay.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserAddress {
    /// The user's Ed25519 identity public key (the user id).
    pub user: [u8; 32],
    /// The relay holding the user's mailboxes and device list.
    pub relay: RelayAddress,
}

impl UserAddress {
    /// True if `identity` is this user's identity key.
    pub fn is_identity(&self, identity: &IdentityKey) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(identity.as_bytes()[..32].ct_eq(&self.user))
    }
}

impl fmt::Display for UserAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", hex::encode(self.user), self.relay)
    }
}

impl fmt::Debug for UserAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserAddress({self})")
    }
}

impl FromStr for UserAddress {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (user, relay) = s
            .split_once('@')
            .ok_or(Error::InvalidAddress("missing @relay"))?;
        Ok(UserAddress {
            user: parse_hex32(user).ok_or(Error::InvalidAddress("user is not 64 hex digits"))?,
            relay: relay.parse()?,
        })
    }
}

/// 32 bytes from exactly 64 hex digits (either case); `None` otherwise.
pub(crate) fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let relay = RelayAddress::new("127.0.0.1:4433".parse().unwrap(), [7; 32]);
        let user = UserAddress {
            user: [0xab; 32],
            relay: relay.clone(),
        };
        let text = user.to_string();
        assert_eq!(text.parse::<UserAddress>().unwrap(), user);
        let v6 = RelayAddress::new("[::1]:9".parse().unwrap(), [1; 32]);
        assert_eq!(v6.to_string().parse::<RelayAddress>().unwrap(), v6);
        for bad in [
            "",
            "abc",
            "ab@127.0.0.1:1/00",
            &format!("{}@127.0.0.1/{}", "a".repeat(64), "0".repeat(64)),
            &format!("{}@127.0.0.1:99999/{}", "a".repeat(64), "0".repeat(64)),
            &format!("{}@127.0.0.1:1/{}", "g".repeat(64), "0".repeat(64)),
            &format!("{}@evil\u{202e}moc:1/{}", "a".repeat(64), "0".repeat(64)),
            &format!("{}@a b:1/{}", "a".repeat(64), "0".repeat(64)),
            &format!("{}@[::1:1/{}", "a".repeat(64), "0".repeat(64)),
        ] {
            assert!(bad.parse::<UserAddress>().is_err(), "{bad}");
        }
    }
}
