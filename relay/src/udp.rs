//! UDP sockets for QUIC endpoints, with receive and send buffers sized for
//! bursts.
//!
//! One relay socket carries every connection's packets. With the kernel's
//! default buffer (about 208 KiB) a burst of pushes and acks from a thousand
//! devices overflows it while the endpoint task waits for a CPU, and every
//! dropped datagram costs a QUIC loss-recovery delay (hundreds of
//! milliseconds at the tail). The kernel caps the request at
//! `net.core.rmem_max` / `wmem_max`: operators of busy relays raise those.

use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// Buffer size asked for on the relay's socket.
pub const RELAY_BUFFER_BYTES: usize = 4 << 20;
/// Buffer size asked for on a client socket (one may carry many connections).
pub const CLIENT_BUFFER_BYTES: usize = 1 << 20;

/// Binds a UDP socket at `addr` and asks for `buffer` bytes of receive and
/// send buffer (best effort: the kernel may grant less).
pub fn bind(addr: SocketAddr, buffer: usize) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Same as std's bind: an IPv6 wildcard also accepts IPv4 where allowed.
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    let granted = socket.recv_buffer_size().unwrap_or(0);
    if granted < buffer {
        tracing::debug!(
            asked = buffer,
            granted,
            "UDP receive buffer capped by net.core.rmem_max"
        );
    }
    Ok(socket.into())
}

/// Datagrams the kernel dropped because the socket bound to `local`'s port
/// had a full receive buffer (the `drops` column of `/proc/net/udp` and
/// `udp6`); `None` where that is not available. A growing count means the
/// buffer (see [`RELAY_BUFFER_BYTES`] and `net.core.rmem_max`) is too small
/// for the bursts this relay sees.
pub fn receive_drops(local: SocketAddr) -> Option<u64> {
    let port = format!("{:04X}", local.port());
    let mut found = None;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(addr) = fields.get(1) else { continue };
            if addr.rsplit(':').next() != Some(port.as_str()) {
                continue;
            }
            if let Some(d) = fields.last().and_then(|d| d.parse::<u64>().ok()) {
                *found.get_or_insert(0) += d;
            }
        }
    }
    found
}

/// What each side asks its peer (QUIC ACK frequency extension): acknowledge
/// after 8 ack-eliciting packets or the usual delay, not after every second
/// one, so a busy sender's requests are not each answered by an ACK-only
/// datagram (every datagram costs both ends a system call and a wake-up).
pub fn ack_frequency() -> quinn::AckFrequencyConfig {
    let mut a = quinn::AckFrequencyConfig::default();
    a.ack_eliciting_threshold(quinn::VarInt::from_u32(8));
    a
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn drops_are_read_for_a_bound_socket() {
        let s = bind("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        assert_eq!(receive_drops(s.local_addr().unwrap()), Some(0));
    }

    #[test]
    fn binds_and_asks_for_bigger_buffers() {
        let s = bind("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        assert_ne!(s.local_addr().unwrap().port(), 0);
        let sock = Socket::from(s);
        // Linux doubles the request for bookkeeping and caps it at rmem_max;
        // either way it is more than the 208 KiB default whenever allowed.
        assert!(sock.recv_buffer_size().unwrap() >= 212_992);
    }
}
