//! The relay server: QUIC endpoint, startup, expiry sweep and graceful shutdown.
//!
//! Storage and services are sans-QUIC modules ([`mailbox`], [`directory`],
//! [`blobs`], [`writer`]); `connection` is the thin layer that maps request
//! streams onto them. Startup writes `<data_dir>/relay.addr` with the bound
//! address and certificate fingerprint so scripts and tests can find the relay.

pub mod blobs;
mod budget;
pub mod cert;
pub mod config;
mod connection;
pub mod db;
pub mod directory;
pub mod mailbox;
pub mod metrics;
pub mod push;
pub mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::{RelayError, Result};
use crate::frame::ALPN;
use config::Config;
use db::Db;
use directory::{Directory, DirectoryLimits};
use mailbox::{Mailboxes, Quota};
use metrics::Metrics;
use writer::Writer;

/// Everything a connection task needs.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) config: Config,
    pub(crate) db: Arc<Db>,
    pub(crate) writer: Arc<Writer>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) mailboxes: Mailboxes,
    pub(crate) directory: Directory,
    pub(crate) blobs: blobs::Blobs,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) budget: budget::RelayBudget,
    /// Send rate limits, relay-wide so reconnecting does not reset them.
    pub(crate) sends: SendLimits,
    /// Delivery-token and push-token registrations per source address: each
    /// keeps a record per (free) key, so their rate bounds that growth.
    pub(crate) registrations: std::sync::Mutex<crate::limits::BucketMap<std::net::IpAddr>>,
    /// Ephemeral envelopes per (source address, recipient mailbox): live
    /// signals come a few a minute, so one address cannot crowd out a
    /// mailbox's live queue (and its owner's opening allowance).
    pub(crate) ephemeral:
        std::sync::Mutex<crate::limits::BucketMap<(std::net::IpAddr, crate::ids::MailboxId)>>,
}

/// Registrations per source address: burst, and per second after it.
const REGISTRATIONS_PER_SEC: f64 = 1.0;

/// Keys tracked at once by each send-rate map (a bucket that has refilled
/// is forgotten; past the bound new keys are refused until some refill).
const MAX_RATE_KEYS: usize = 100_000;

/// Envelopes per second per authenticated key and per source address
/// ([`crate::limits::source_key`]); a send takes from both or from neither.
#[derive(Debug)]
pub(crate) struct SendLimits {
    by_key: std::sync::Mutex<crate::limits::BucketMap<crate::ids::MailboxId>>,
    by_source: std::sync::Mutex<crate::limits::BucketMap<std::net::IpAddr>>,
}

impl SendLimits {
    fn new(config: &Config) -> Self {
        use crate::limits::BucketMap;
        SendLimits {
            by_key: std::sync::Mutex::new(BucketMap::new(
                config.send_burst,
                config.send_rate_per_sec,
                MAX_RATE_KEYS,
            )),
            by_source: std::sync::Mutex::new(BucketMap::new(
                config.source_send_burst,
                config.source_send_rate_per_sec,
                MAX_RATE_KEYS,
            )),
        }
    }

    /// Takes `n` sends for `key` from `source`, or refuses without taking.
    pub(crate) fn try_take(
        &self,
        key: crate::ids::MailboxId,
        source: std::net::IpAddr,
        n: u32,
        now: std::time::Instant,
    ) -> bool {
        let mut by_source = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        if !by_source.try_take(source, n, now) {
            return false;
        }
        let mut by_key = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        if by_key.try_take(key, n, now) {
            return true;
        }
        by_source.give_back(source, n);
        false
    }
}

/// Where a started relay can be reached.
#[derive(Debug, Clone)]
pub struct RelayInfo {
    /// Bound QUIC address.
    pub addr: SocketAddr,
    /// SHA-256 of the certificate, for client pinning.
    pub fingerprint: [u8; 32],
    /// Bound metrics/health address, if enabled.
    pub metrics_addr: Option<SocketAddr>,
}

/// A started relay.
#[derive(Debug)]
pub struct Relay {
    state: Arc<State>,
    endpoint: quinn::Endpoint,
    info: RelayInfo,
    shutdown_tx: watch::Sender<bool>,
}

fn server_config(config: &Config, id: cert::Identity) -> Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![id.cert], id.key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|_| RelayError::Config("no TLS 1.3 QUIC cipher suite".into()))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(quic));
    // Sized for many mostly idle connections, not bulk transfer: at most
    // 1 MiB buffered per connection, 256 KiB per stream.
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(config.max_concurrent_streams.into());
    t.max_concurrent_uni_streams(0u8.into());
    t.stream_receive_window((256u32 * 1024).into());
    t.receive_window((1024u32 * 1024).into());
    t.send_window(2 * 1024 * 1024);
    t.ack_frequency_config(Some(crate::udp::ack_frequency()));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(config.idle_timeout_secs))
            .map_err(|_| RelayError::Config("idle timeout too large".into()))?,
    ));
    sc.transport_config(Arc::new(t));
    Ok(sc)
}

impl Relay {
    /// Opens storage, binds the endpoint and starts background tasks.
    pub async fn start(config: Config) -> Result<Self> {
        config.validate()?;
        // Every directory created here gets its entry made durable (its
        // parent fsynced), so a power cut cannot take the data dir back.
        let created: Vec<std::path::PathBuf> = config
            .data_dir
            .ancestors()
            .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
            .map(|d| d.to_path_buf())
            .collect();
        std::fs::create_dir_all(&config.data_dir)
            .map_err(crate::error::io_at(config.data_dir.display()))?;
        for dir in created.iter().rev() {
            if let Some(parent) = dir.parent() {
                cert::sync_dir(parent)?;
            }
        }
        let own_files = config.cert.is_none() && config.key.is_none();
        let identity = cert::load_or_generate(&config.cert_path(), &config.key_path(), own_files)?;
        let fingerprint = crate::client::pin::fingerprint(&identity.cert);
        let db = Arc::new(Db::open(&config.data_dir.join("db"))?);
        let metrics = Arc::new(Metrics::default());
        let writer = Arc::new(Writer::start(db.clone(), metrics.clone())?);
        let notifier = match &config.webhook_url {
            Some(url) => Some(push::Notifier::start(
                url,
                Duration::from_millis(config.push_coalesce_ms),
                metrics.clone(),
            )?),
            None => None,
        };
        let mailboxes = Mailboxes::load(
            db.clone(),
            writer.clone(),
            metrics.clone(),
            notifier,
            Quota {
                max_envelopes: config.mailbox_max_envelopes,
                max_bytes: config.mailbox_max_bytes,
                max_envelope_bytes: config.max_envelope_bytes,
                stranger_max_envelopes: config.stranger_max_envelopes,
                stranger_max_bytes: config.stranger_max_bytes,
            },
        )?;
        let directory = Directory::load(
            db.clone(),
            writer.clone(),
            metrics.clone(),
            DirectoryLimits {
                max_bundle: config.max_signed_bundle_bytes,
                max_item: config.max_prekey_bytes,
                max_items: config.max_one_time_prekeys,
                low: config.prekeys_low_threshold,
                max_device_list: config.max_device_list_bytes,
                requester_burst: config.bundle_requester_burst,
                target_burst: config.bundle_target_burst,
                rate: config.bundle_rate_per_sec,
            },
        )?;
        let blobs = blobs::Blobs::new(
            db.clone(),
            writer.clone(),
            metrics.clone(),
            config.max_blob_bytes,
        );
        let reset_key = cert::load_or_generate_reset_key(&config.data_dir.join("reset.key"))?;
        // The entries of `db/`, the certificate, its key and `reset.key`:
        // files fsynced in a directory that is not can vanish at a power cut
        // (a first start would then come back as a new relay, with a new
        // certificate and an empty database).
        cert::sync_dir(&config.data_dir)?;
        let endpoint_config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            reset_key.as_ref(),
        )));
        let socket = crate::udp::bind(config.listen, crate::udp::RELAY_BUFFER_BYTES)
            .map_err(crate::error::io_at(format!("listen {}", config.listen)))?;
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(server_config(&config, identity)?),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let addr = endpoint.local_addr()?;
        let memory_probe = budget::RelayBudget::new(config.memory_budget_bytes);
        let metrics_addr = match config.metrics_listen {
            Some(a) => {
                let l = metrics::bind(a).await?;
                let bound = l.local_addr()?;
                let (m, d) = (metrics.clone(), db.clone());
                let w = writer.clone();
                let (budget, total) = (memory_probe.clone(), config.memory_budget_bytes);
                tokio::spawn(metrics::serve(
                    l,
                    Arc::new(move || {
                        let used = total.saturating_sub(budget.available());
                        m.budget_in_use.store(used as u64, Ordering::Relaxed);
                        m.render(d.approximate_bytes(), crate::udp::receive_drops(addr))
                    }),
                    Arc::new(move || w.is_running()),
                ));
                Some(bound)
            }
            None => None,
        };
        let memory = memory_probe;
        let (shutdown_tx, shutdown) = watch::channel(false);
        let info = RelayInfo {
            addr,
            fingerprint,
            metrics_addr,
        };
        write_addr_file(&config, &info)?;
        let sends = SendLimits::new(&config);
        let state = Arc::new(State {
            sends,
            registrations: std::sync::Mutex::new(crate::limits::BucketMap::new(
                config.registration_burst,
                REGISTRATIONS_PER_SEC,
                MAX_RATE_KEYS,
            )),
            ephemeral: std::sync::Mutex::new(crate::limits::BucketMap::new(
                config.ephemeral_burst,
                config.ephemeral_rate_per_sec,
                MAX_RATE_KEYS,
            )),
            config,
            db,
            writer,
            metrics,
            mailboxes,
            directory,
            blobs,
            shutdown,
            in_flight: AtomicUsize::new(0),
            budget: memory,
        });
        tokio::spawn(sweep(state.clone()));
        tracing::info!(%addr, fingerprint = %hex::encode(fingerprint), "relay listening");
        Ok(Self {
            state,
            endpoint,
            info,
            shutdown_tx,
        })
    }

    /// Where the relay listens.
    pub fn info(&self) -> &RelayInfo {
        &self.info
    }

    /// Serves connections until `signal` resolves, then shuts down gracefully:
    /// refuse new connections, let in-flight requests finish (bounded), close,
    /// and write everything queued before returning.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) -> Result<()> {
        let accept = {
            let endpoint = self.endpoint.clone();
            let state = self.state.clone();
            let caps = Arc::new(ConnectionCaps::new(
                state.config.max_connections,
                state.config.max_connections_per_ip,
                state.config.address_budget_bytes,
            ));
            tokio::spawn(async move {
                while let Some(incoming) = endpoint.accept().await {
                    // Counted from the first packet, before any handshake
                    // work; refused at the caps (keys are free, addresses
                    // are not).
                    let source = crate::limits::source_key(incoming.remote_address().ip());
                    match caps.admit(source) {
                        Some(admitted) => {
                            let state = state.clone();
                            let budget = admitted.budget.clone();
                            tokio::spawn(async move {
                                connection::handle(state, incoming, source, budget).await;
                                drop(admitted);
                            });
                        }
                        None => {
                            state
                                .metrics
                                .connections_refused
                                .fetch_add(1, Ordering::Relaxed);
                            incoming.refuse();
                        }
                    }
                }
            })
        };
        signal.await;
        tracing::info!("shutting down");
        let _ = self.shutdown_tx.send(true);
        self.endpoint.set_server_config(None);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.state.in_flight.load(Ordering::Acquire) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.endpoint.close(0u32.into(), b"relay shutting down");
        accept.abort();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        self.state.writer.shutdown();
        self.state.db.flush_all()?;
        Ok(())
    }
}

/// Connections at once, in total and per source IP address, and the memory
/// budget each address's connections share.
#[derive(Debug)]
struct ConnectionCaps {
    total: usize,
    per_ip: usize,
    address_bytes: usize,
    open: std::sync::Mutex<OpenConnections>,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    by_ip: std::collections::HashMap<std::net::IpAddr, (usize, budget::AddressBudget)>,
}

/// One admitted connection; gives its place back when dropped.
struct Admitted {
    caps: Arc<ConnectionCaps>,
    ip: std::net::IpAddr,
    budget: budget::AddressBudget,
}

impl ConnectionCaps {
    fn new(total: usize, per_ip: usize, address_bytes: usize) -> Self {
        ConnectionCaps {
            total,
            per_ip,
            address_bytes,
            open: std::sync::Mutex::new(OpenConnections::default()),
        }
    }

    fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<Admitted> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.total {
            return None;
        }
        let address_bytes = self.address_bytes;
        let (here, budget) = open
            .by_ip
            .entry(ip)
            .or_insert_with(|| (0, budget::AddressBudget::new(address_bytes)));
        if *here >= self.per_ip {
            return None;
        }
        *here += 1;
        let budget = budget.clone();
        open.total += 1;
        Some(Admitted {
            caps: self.clone(),
            ip,
            budget,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some((n, _)) = open.by_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.by_ip.remove(&self.ip);
            }
        }
    }
}

fn write_addr_file(config: &Config, info: &RelayInfo) -> Result<()> {
    crate::addr_file::AddrFile {
        quic: info.addr,
        fingerprint: info.fingerprint,
        metrics: info.metrics_addr,
    }
    .write(&config.data_dir)?;
    Ok(())
}

async fn sweep(state: Arc<State>) {
    let mut tick = tokio::time::interval(Duration::from_secs(state.config.sweep_interval_secs));
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let tracked = state.directory.prune_rate_limits();
        tracing::debug!(tracked, "pruned idle rate-limit buckets");
        let ttl = state.config.envelope_ttl_secs.saturating_mul(1000);
        match state.mailboxes.expire(ttl).await {
            Ok(n) if n > 0 => tracing::info!(expired = n, "expired envelopes"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "envelope expiry failed"),
        }
        reclaim(&state).await;
        match state
            .blobs
            .expire(state.config.blob_ttl_secs.saturating_mul(1000))
            .await
        {
            Ok(n) if n > 0 => tracing::info!(expired = n, "expired blobs"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "blob expiry failed"),
        }
    }
}

/// Gives the disk back once the queue has drained. Deletion-triggered
/// compaction only picks SST files dense in tombstones; envelopes flushed
/// before their acks stay in older files until something compacts over them,
/// and an idle relay's memtable (with its WAL on disk) never fills up to be
/// flushed (nor lets its WAL files go). When most of the envelope family's bytes are dead (live payload
/// under a quarter of its SST + memtable bytes, and those over 64 MiB), one
/// flush and full compaction is cheap (little live data to rewrite) and
/// returns the space.
async fn reclaim(state: &Arc<State>) {
    use db::Cf;
    let live = state
        .metrics
        .bytes_stored
        .load(std::sync::atomic::Ordering::Relaxed);
    let before = state.db.family_bytes(Cf::Envelopes);
    if before < 64 << 20 || live >= before / 4 {
        return;
    }
    let db = state.db.clone();
    let started = std::time::Instant::now();
    let done = tokio::task::spawn_blocking(move || {
        // Every family: `meta` is touched by each send, and a WAL file is
        // only deleted once every family holding writes from it has flushed.
        db.flush_all()?;
        db.flush_and_compact(Cf::Envelopes)?;
        db.flush_and_compact(Cf::EnvelopeIndex)
    })
    .await;
    match done {
        Ok(Ok(())) => tracing::info!(
            bytes_before = before,
            bytes_after = state.db.family_bytes(Cf::Envelopes),
            ms = started.elapsed().as_millis() as u64,
            "compacted drained envelope files"
        ),
        Ok(Err(e)) => tracing::warn!(error = %e, "envelope compaction failed"),
        Err(_) => tracing::warn!("envelope compaction task failed"),
    }
}
