//! Prometheus metrics and the health endpoint, over a minimal HTTP/1.1 server.
//!
//! Only counts, sizes and latencies: never keys, mailbox ids or content.
//! Counters are plain atomics rendered in the Prometheus text format, so the
//! hot path pays one relaxed increment.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Latency histogram buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; 12],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.counts[i].fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.counts[i].load(Relaxed)
            );
        }
        let n = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {n}");
    }
}

/// All relay metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open QUIC connections.
    pub connections: AtomicU64,
    /// Connections that authenticated.
    pub auth_ok: AtomicU64,
    /// Authentication failures.
    pub auth_failed: AtomicU64,
    /// Envelopes durably accepted.
    pub envelopes_accepted: AtomicU64,
    /// Payloads durably accepted by shared sends (each stored once for all
    /// the envelopes that refer to it).
    pub shared_payloads: AtomicU64,
    /// Envelopes refused (limits).
    pub envelopes_refused: AtomicU64,
    /// Ephemeral envelopes handed to a live subscription.
    pub ephemeral_delivered: AtomicU64,
    /// Ephemeral envelopes dropped: no live subscription, or its queue full.
    pub ephemeral_dropped: AtomicU64,
    /// Envelopes written to a device (fetch or push).
    pub envelopes_delivered: AtomicU64,
    /// Envelopes acknowledged (deleted).
    pub envelopes_acked: AtomicU64,
    /// Envelopes expired undelivered.
    pub envelopes_expired: AtomicU64,
    /// Envelopes currently stored.
    pub queue_depth: AtomicU64,
    /// Payload bytes currently stored.
    pub bytes_stored: AtomicU64,
    /// One-time prekeys handed out.
    pub prekeys_handed_out: AtomicU64,
    /// Webhook calls made.
    pub push_webhooks: AtomicU64,
    /// Blobs stored.
    pub blobs_uploaded: AtomicU64,
    /// Synced write batches.
    pub commits: AtomicU64,
    /// Jobs merged into those batches.
    pub committed_jobs: AtomicU64,
    /// Batches of stream acks written without an fsync of their own.
    pub lazy_writes: AtomicU64,
    /// Malformed frames received.
    pub malformed_frames: AtomicU64,
    /// Connections refused at the caps (total or per source address).
    pub connections_refused: AtomicU64,
    /// Requests refused because the relay's memory budget was exhausted.
    pub overloaded: AtomicU64,
    /// Bytes of the memory budget held by requests and replies in flight.
    pub budget_in_use: AtomicU64,
    /// Time of one synced write batch.
    pub commit_latency: Histogram,
    /// Time from receiving a send to answering "accepted".
    pub send_latency: Histogram,
}

impl Metrics {
    /// Records one group commit.
    pub fn observe_commit(&self, jobs: usize, took: Duration) {
        self.commits.fetch_add(1, Relaxed);
        self.committed_jobs.fetch_add(jobs as u64, Relaxed);
        self.commit_latency.observe(took);
    }

    /// Prometheus text exposition; `disk_bytes` and `udp_drops` are sampled
    /// by the caller.
    pub fn render(&self, disk_bytes: u64, udp_drops: Option<u64>) -> String {
        let mut out = String::with_capacity(4096);
        let counters: [(&str, &str, &AtomicU64, &str); 23] = [
            (
                "sotto_connections_refused_total",
                "Connections refused at the connection caps",
                &self.connections_refused,
                "counter",
            ),
            (
                "sotto_overloaded_total",
                "Requests refused: relay memory budget exhausted",
                &self.overloaded,
                "counter",
            ),
            (
                "sotto_memory_budget_in_use_bytes",
                "Memory held by requests and replies in flight",
                &self.budget_in_use,
                "gauge",
            ),
            (
                "sotto_connections",
                "Open QUIC connections",
                &self.connections,
                "gauge",
            ),
            (
                "sotto_auth_ok_total",
                "Successful authentications",
                &self.auth_ok,
                "counter",
            ),
            (
                "sotto_auth_failed_total",
                "Failed authentications",
                &self.auth_failed,
                "counter",
            ),
            (
                "sotto_envelopes_accepted_total",
                "Envelopes durably accepted",
                &self.envelopes_accepted,
                "counter",
            ),
            (
                "sotto_shared_payloads_total",
                "Payloads stored once for many mailboxes (shared sends)",
                &self.shared_payloads,
                "counter",
            ),
            (
                "sotto_envelopes_refused_total",
                "Envelopes refused by a limit",
                &self.envelopes_refused,
                "counter",
            ),
            (
                "sotto_ephemeral_delivered_total",
                "Ephemeral envelopes handed to a live subscription",
                &self.ephemeral_delivered,
                "counter",
            ),
            (
                "sotto_ephemeral_dropped_total",
                "Ephemeral envelopes dropped (no live subscription, or its queue full)",
                &self.ephemeral_dropped,
                "counter",
            ),
            (
                "sotto_envelopes_delivered_total",
                "Envelopes written to devices",
                &self.envelopes_delivered,
                "counter",
            ),
            (
                "sotto_envelopes_acked_total",
                "Envelopes acknowledged",
                &self.envelopes_acked,
                "counter",
            ),
            (
                "sotto_envelopes_expired_total",
                "Envelopes expired undelivered",
                &self.envelopes_expired,
                "counter",
            ),
            (
                "sotto_queue_depth",
                "Envelopes stored",
                &self.queue_depth,
                "gauge",
            ),
            (
                "sotto_bytes_stored",
                "Envelope payload bytes stored",
                &self.bytes_stored,
                "gauge",
            ),
            (
                "sotto_prekeys_handed_out_total",
                "One-time prekeys handed out",
                &self.prekeys_handed_out,
                "counter",
            ),
            (
                "sotto_push_webhooks_total",
                "Webhook push calls",
                &self.push_webhooks,
                "counter",
            ),
            (
                "sotto_blobs_uploaded_total",
                "Blobs stored",
                &self.blobs_uploaded,
                "counter",
            ),
            (
                "sotto_commits_total",
                "Synced write batches",
                &self.commits,
                "counter",
            ),
            (
                "sotto_committed_jobs_total",
                "Jobs merged into synced batches",
                &self.committed_jobs,
                "counter",
            ),
            (
                "sotto_lazy_writes_total",
                "Batches of stream acks written without an fsync of their own",
                &self.lazy_writes,
                "counter",
            ),
            (
                "sotto_malformed_frames_total",
                "Malformed frames received",
                &self.malformed_frames,
                "counter",
            ),
        ];
        for (name, help, v, kind) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP sotto_disk_bytes RocksDB SST and memtable bytes\n# TYPE sotto_disk_bytes gauge\nsotto_disk_bytes {disk_bytes}"
        );
        if let Some(d) = udp_drops {
            let _ = writeln!(
                out,
                "# HELP sotto_udp_receive_drops_total Datagrams dropped by the kernel: the relay socket's receive buffer was full\n# TYPE sotto_udp_receive_drops_total counter\nsotto_udp_receive_drops_total {d}"
            );
        }
        self.commit_latency.render(
            "sotto_commit_seconds",
            "Synced write batch latency",
            &mut out,
        );
        self.send_latency.render(
            "sotto_send_seconds",
            "Send request to durable accept",
            &mut out,
        );
        out
    }
}

/// Serves `GET /metrics` and `GET /health` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    healthy: Arc<dyn Fn() -> bool + Send + Sync>,
) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let render = render.clone();
        let healthy = healthy.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut n = 0;
            // Read the request head (bounded, with a deadline).
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while n < buf.len() {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/metrics" => ("200 OK", render()),
                "/health" if healthy() => ("200 OK", "ok\n".to_owned()),
                "/health" => ("503 Service Unavailable", "unhealthy\n".to_owned()),
                _ => ("404 Not Found", "not found\n".to_owned()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
