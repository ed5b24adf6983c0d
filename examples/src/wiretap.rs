//! A counting UDP forwarder: clients talk QUIC to it, it passes every
//! datagram on to the relay unchanged and counts them.
//!
//! The demo uses it to show what an observer on the relay's network sees:
//! sizes of encrypted packets, nothing else. Being a plain forwarder it needs
//! no cooperation from client or relay (the relay's certificate is pinned by
//! fingerprint, not by address, so clients connect through it as to the
//! relay itself). One upstream socket per client keeps the relay's view of
//! each client a separate QUIC path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::task::{JoinHandle, JoinSet};

/// Datagrams and bytes that crossed the tap so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireTotals {
    /// Datagrams from clients to the relay.
    pub up_packets: u64,
    /// UDP payload bytes from clients to the relay.
    pub up_bytes: u64,
    /// Datagrams from the relay to clients.
    pub down_packets: u64,
    /// UDP payload bytes from the relay to clients.
    pub down_bytes: u64,
}

impl WireTotals {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &WireTotals) -> WireTotals {
        WireTotals {
            up_packets: self.up_packets.saturating_sub(earlier.up_packets),
            up_bytes: self.up_bytes.saturating_sub(earlier.up_bytes),
            down_packets: self.down_packets.saturating_sub(earlier.down_packets),
            down_bytes: self.down_bytes.saturating_sub(earlier.down_bytes),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    up_packets: AtomicU64,
    up_bytes: AtomicU64,
    down_packets: AtomicU64,
    down_bytes: AtomicU64,
}

/// A running tap; stops when dropped.
#[derive(Debug)]
pub struct WireTap {
    /// Where clients should connect instead of the relay.
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl WireTap {
    /// Listens on an ephemeral loopback port and forwards to `relay`.
    pub async fn start(relay: SocketAddr) -> std::io::Result<Self> {
        let front = Arc::new(UdpSocket::bind(("127.0.0.1", 0)).await?);
        let addr = front.local_addr()?;
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(forward(front, relay, counters.clone()));
        Ok(WireTap {
            addr,
            counters,
            task,
        })
    }

    /// Totals so far.
    pub fn totals(&self) -> WireTotals {
        let c = &self.counters;
        WireTotals {
            up_packets: c.up_packets.load(Relaxed),
            up_bytes: c.up_bytes.load(Relaxed),
            down_packets: c.down_packets.load(Relaxed),
            down_bytes: c.down_bytes.load(Relaxed),
        }
    }
}

impl Drop for WireTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(front: Arc<UdpSocket>, relay: SocketAddr, counters: Arc<Counters>) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    // Dropped with this task: the per-client return paths stop with it.
    let mut returns = JoinSet::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, client)) = front.recv_from(&mut buf).await else {
            continue;
        };
        let up = match upstreams.get(&client) {
            Some(s) => s.clone(),
            None => {
                let Ok(s) = UdpSocket::bind(("127.0.0.1", 0)).await else {
                    continue;
                };
                if s.connect(relay).await.is_err() {
                    continue;
                }
                let s = Arc::new(s);
                returns.spawn(back(s.clone(), front.clone(), client, counters.clone()));
                upstreams.insert(client, s.clone());
                s
            }
        };
        counters.up_packets.fetch_add(1, Relaxed);
        counters.up_bytes.fetch_add(n as u64, Relaxed);
        // UDP: a lost datagram is QUIC's to retransmit, as on a real network.
        let _ = up.send(&buf[..n]).await;
    }
}

async fn back(up: Arc<UdpSocket>, front: Arc<UdpSocket>, client: SocketAddr, c: Arc<Counters>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok(n) = up.recv(&mut buf).await else {
            continue;
        };
        c.down_packets.fetch_add(1, Relaxed);
        c.down_bytes.fetch_add(n as u64, Relaxed);
        let _ = front.send_to(&buf[..n], client).await;
    }
}
