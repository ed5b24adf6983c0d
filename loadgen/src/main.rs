//! `sotto-loadgen`: drives a running relay over loopback and reports
//! throughput and latency (W1: durable enqueue then drain, optionally on top
//! of the tombstones a million earlier acks left; W2: end-to-end latency at
//! fixed offered rates; idle: connections held and relay RSS).
//! Every run is bounded in message count and time.

/// The same allocator as the relay: the load generator shares the machine's
/// two cores with it, so every cycle it wastes in glibc malloc (per-request
/// buffers freed on other threads) is taken from the relay being measured.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};
use sotto_relay::{MailboxId, Pushed, RelayClient};

mod measure;
use measure::{latency_histogram, micros, ms, CpuMark};

#[derive(Debug, Parser)]
#[command(
    name = "sotto-loadgen",
    about = "Load generator for sotto-relay (loopback only)"
)]
struct Args {
    /// Relay data dir holding `relay.addr` (address + fingerprint).
    #[arg(long)]
    relay_dir: PathBuf,
    /// Seed for the deterministic mailbox keys.
    #[arg(long, default_value = "loadgen")]
    seed: String,
    /// Relay process id: also report the CPU time the relay (and this load
    /// generator) used per phase, a figure that holds on a busy machine.
    #[arg(long)]
    cpu_pid: Option<u32>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// W1: durable enqueue with N producers x W unconfirmed sends, then drain (fetch + ack).
    W1 {
        #[arg(long, default_value_t = 1000)]
        mailboxes: usize,
        #[arg(long, default_value_t = 200_000)]
        messages: usize,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, default_value_t = 8)]
        producers: usize,
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Mailboxes drained concurrently (each by its own connection).
        #[arg(long, default_value_t = 32)]
        consumers: usize,
        /// Fetch page size (envelopes).
        #[arg(long, default_value_t = 1000)]
        page: u32,
        /// First enqueue, drain and ack this many envelopes (same mailboxes),
        /// so the measured W1 runs on top of their tombstones.
        #[arg(long, default_value_t = 0)]
        preload: usize,
        /// Only enqueue (leave the backlog, e.g. to measure relay startup).
        #[arg(long)]
        no_drain: bool,
        /// Send each payload to this many mailboxes at once with one
        /// `SendShared` (a group message, stored once); `messages` still
        /// counts envelopes (one per mailbox).
        #[arg(long, default_value_t = 1)]
        shared: usize,
    },
    /// W2: every mailbox subscribed, open-loop sends at a fixed rate.
    W2 {
        #[arg(long, default_value_t = 1000)]
        mailboxes: usize,
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, default_value_t = 8)]
        producers: usize,
        /// Each device acks what it received after this many milliseconds
        /// (or 32 envelopes), in one request.
        #[arg(long, default_value_t = 20)]
        ack_window_ms: u64,
        /// Ack with `Ack` requests (a stream and a durable reply each) instead
        /// of on the push stream (what `sotto-core`'s client does).
        #[arg(long)]
        request_acks: bool,
        /// Send ephemeral envelopes (`SendEphemeral`: pushed now or never,
        /// never stored, never acked) with each mailbox's delivery token,
        /// registered first (start the relay with `--registration-burst`
        /// at least `--mailboxes`).
        #[arg(long)]
        ephemeral: bool,
    },
    /// With the relay STOPPED: time its startup index rebuild on the data
    /// dir given as `--relay-dir`, by reading the small index records (what
    /// the relay does) and, for comparison, by a full scan of every envelope.
    Startup,
    /// Attack for `seconds` (to measure W2 beside it): N authenticated
    /// connections, each with `streams` request streams that send only the
    /// 4-byte prefix of a 2 MiB - 1 frame and stall, and one stream that
    /// trickles a frame one byte per 100 ms (the relay issue's attacks).
    Hostile {
        #[arg(long, default_value_t = 100)]
        connections: usize,
        #[arg(long, default_value_t = 60)]
        streams: usize,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Hold N idle authenticated connections; report the relay's RSS growth.
    Idle {
        #[arg(long, default_value_t = 2000)]
        connections: usize,
        /// Relay process id (for /proc/PID/status).
        #[arg(long)]
        relay_pid: u32,
        #[arg(long, default_value_t = 5)]
        hold_seconds: u64,
    },
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How CPU reports name the relay and this process.
const CPU_NAMES: (&str, &str) = ("relay", "loadgen");

fn mailbox_key(seed: &str, i: usize) -> SigningKey {
    let d: [u8; 32] = Sha256::digest(format!("{seed}/{i}").as_bytes()).into();
    SigningKey::from_bytes(&d)
}

fn read_relay(dir: &std::path::Path) -> Result<(SocketAddr, [u8; 32]), BoxError> {
    let f = sotto_relay::addr_file::AddrFile::read(dir)
        .ok_or("no valid relay.addr in the relay dir")?;
    if !f.quic.ip().is_loopback() {
        return Err("loadgen only targets loopback relays".into());
    }
    Ok((f.quic, f.fingerprint))
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if let Mode::Startup = args.mode {
        return startup(&args.relay_dir);
    }
    // W2 measures latency on a machine it shares with the relay: one thread
    // drives every device, so no send or push waits for a wake-up from
    // another of the load generator's threads (a quarter less CPU per
    // message than tokio's multi-thread scheduler here). The throughput
    // workloads keep a worker per core.
    let mut runtime = match args.mode {
        Mode::W2 { .. } => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> Result<(), BoxError> {
    let (addr, pin) = read_relay(&args.relay_dir)?;
    match args.mode {
        Mode::W1 {
            mailboxes,
            messages,
            size,
            producers,
            window,
            consumers,
            page,
            preload,
            no_drain,
            shared,
        } => {
            let w = W1 {
                shared: shared.clamp(1, mailboxes),
                addr,
                pin,
                seed: args.seed.clone(),
                mailboxes,
                size,
                producers,
                window,
                consumers,
                page,
                cpu_pid: args.cpu_pid,
            };
            if preload > 0 {
                w.run(preload, "preload", false).await?;
            }
            w.run(messages, "W1", no_drain).await
        }
        Mode::W2 {
            mailboxes,
            rate,
            seconds,
            size,
            producers,
            ack_window_ms,
            request_acks,
            ephemeral,
        } => {
            w2(
                addr,
                pin,
                &args.seed,
                W2 {
                    mailboxes,
                    rate,
                    seconds,
                    size,
                    producers,
                    ack_window: Duration::from_millis(ack_window_ms),
                    request_acks,
                    ephemeral,
                },
                args.cpu_pid,
            )
            .await
        }
        Mode::Startup => Ok(()),
        Mode::Idle {
            connections,
            relay_pid,
            hold_seconds,
        } => idle(addr, pin, connections, relay_pid, hold_seconds).await,
        Mode::Hostile {
            connections,
            streams,
            seconds,
        } => hostile(addr, pin, connections, streams, seconds).await,
    }
}

/// W1 parameters.
struct W1 {
    addr: SocketAddr,
    pin: [u8; 32],
    seed: String,
    mailboxes: usize,
    size: usize,
    producers: usize,
    window: usize,
    consumers: usize,
    page: u32,
    cpu_pid: Option<u32>,
    /// Mailboxes per `SendShared` (1: one `Send` per envelope).
    shared: usize,
}

impl W1 {
    #[allow(clippy::print_stdout)]
    async fn run(&self, messages: usize, label: &str, no_drain: bool) -> Result<(), BoxError> {
        let mark = CpuMark::now(self.cpu_pid, CPU_NAMES);
        let enq = self.enqueue(messages).await?;
        let cpu = mark.since(self.cpu_pid, messages as u64);
        println!(
            "{label} enqueue: {messages} x {} B to {} mailboxes, {} producers x {} in flight: {:.2} s, {:.0} msgs/s (each confirmed after fsync){cpu}",
            self.size,
            self.mailboxes,
            self.producers,
            self.window,
            enq.as_secs_f64(),
            messages as f64 / enq.as_secs_f64()
        );
        if no_drain {
            return Ok(());
        }
        let (n, connect, d, cpu) = self.drain().await?;
        println!(
            "{label} drain: {n} fetched + acked (durable deletes), {} mailboxes {} at a time, pages of {}: {:.2} s, {:.0} msgs/s (after connecting and authenticating {} devices in {:.2} s){cpu}",
            self.mailboxes,
            self.consumers,
            self.page,
            d.as_secs_f64(),
            n as f64 / d.as_secs_f64(),
            self.mailboxes,
            connect.as_secs_f64()
        );
        if n != messages as u64 {
            return Err(format!("drained {n}, expected {messages}").into());
        }
        Ok(())
    }

    /// `producers` connections x `window` sends in flight, each confirmed
    /// only once durable.
    async fn enqueue(&self, messages: usize) -> Result<Duration, BoxError> {
        let ids: Arc<Vec<MailboxId>> = Arc::new(
            (0..self.mailboxes)
                .map(|i| MailboxId(mailbox_key(&self.seed, i).verifying_key().to_bytes()))
                .collect(),
        );
        let next = Arc::new(AtomicU64::new(0));
        let mut clients = Vec::new();
        for p in 0..self.producers {
            clients.push(Arc::new(
                RelayClient::connect(self.addr, self.pin, &mailbox_key("producer", p)).await?,
            ));
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for client in &clients {
            for _ in 0..self.window {
                let (client, next, ids) = (client.clone(), next.clone(), ids.clone());
                let (size, shared) = (self.size, self.shared);
                tasks.push(tokio::spawn(async move {
                    let payload = vec![0xa5u8; size];
                    loop {
                        let i = next.fetch_add(shared as u64, Ordering::Relaxed) as usize;
                        if i >= messages {
                            return Ok::<_, sotto_relay::RelayError>(());
                        }
                        if shared == 1 {
                            client.send(&ids[i % ids.len()], payload.clone()).await?;
                            continue;
                        }
                        // One payload for `shared` consecutive mailboxes.
                        let n = shared.min(messages - i);
                        let to = (0..n).map(|k| (ids[(i + k) % ids.len()], None)).collect();
                        for r in client.send_shared(payload.clone(), to).await? {
                            r?;
                        }
                    }
                }));
            }
        }
        for t in tasks {
            t.await??;
        }
        let took = started.elapsed();
        for c in clients {
            if let Ok(c) = Arc::try_unwrap(c) {
                c.close().await;
            }
        }
        Ok(took)
    }

    /// Connects every mailbox's device first (a device online before its
    /// backlog is drained, like a broker's consumers), then drains
    /// `consumers` mailboxes at a time: each fetches pages after the last id
    /// it saw while the previous page's ack is in flight.
    /// Returns (envelopes acked, connect time, drain time).
    async fn drain(&self) -> Result<(u64, Duration, Duration, String), BoxError> {
        let started = Instant::now();
        let eps = (0..4)
            .map(|_| sotto_relay::client::endpoint(self.pin, false))
            .collect::<Result<Vec<_>, _>>()?;
        let mut clients = Vec::with_capacity(self.mailboxes);
        let mut batch = Vec::new();
        for i in 0..self.mailboxes {
            let (ep, addr, key) = (
                eps[i % eps.len()].clone(),
                self.addr,
                mailbox_key(&self.seed, i),
            );
            batch.push(tokio::spawn(async move {
                RelayClient::connect_on(&ep, addr, &key).await
            }));
            if batch.len() == 64 || i + 1 == self.mailboxes {
                for t in batch.drain(..) {
                    clients.push(Arc::new(t.await??));
                }
            }
        }
        let connect = started.elapsed();
        let clients = Arc::new(std::sync::Mutex::new(clients));
        let drained = Arc::new(AtomicU64::new(0));
        let mark = CpuMark::now(self.cpu_pid, CPU_NAMES);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..self.consumers {
            let (clients, drained, page) = (clients.clone(), drained.clone(), self.page);
            tasks.push(tokio::spawn(async move {
                loop {
                    let client = match clients.lock() {
                        Ok(mut c) => c.pop(),
                        Err(_) => None,
                    };
                    let Some(client) = client else {
                        return Ok::<_, sotto_relay::RelayError>(());
                    };
                    let mut fetched = client.fetch(None, page).await?;
                    while let Some(last) = fetched.envelopes.last().map(|e| e.id) {
                        let ids: Vec<_> = fetched.envelopes.iter().map(|e| e.id).collect();
                        if fetched.more {
                            let (acked, next) =
                                tokio::join!(client.ack(&ids), client.fetch(Some(last), page));
                            drained.fetch_add(u64::from(acked?), Ordering::Relaxed);
                            fetched = next?;
                        } else {
                            drained
                                .fetch_add(u64::from(client.ack(&ids).await?), Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        let took = started.elapsed();
        let n = drained.load(Ordering::Relaxed);
        let cpu = mark.since(self.cpu_pid, n);
        for ep in eps {
            ep.close(0u32.into(), b"done");
        }
        Ok((n, connect, took, cpu))
    }
}

/// Acks a W2 device's envelopes on its push stream or by request.
struct Acker {
    client: Arc<RelayClient>,
    stream: Option<sotto_relay::StreamAcks>,
}

impl Acker {
    async fn ack(&mut self, ids: &[sotto_relay::EnvelopeId]) {
        match &mut self.stream {
            Some(s) => {
                let _ = s.ack(ids).await;
            }
            None => {
                let _ = self.client.ack(ids).await;
            }
        }
    }
}

/// W2 parameters.
struct W2 {
    mailboxes: usize,
    rate: u64,
    seconds: u64,
    size: usize,
    producers: usize,
    ack_window: Duration,
    request_acks: bool,
    ephemeral: bool,
}

/// Mailbox `i`'s delivery token (for ephemeral sends).
fn token_of(i: usize) -> [u8; 32] {
    let mut t = [0x5a; 32];
    t[..8].copy_from_slice(&(i as u64).to_be_bytes());
    t
}

#[allow(clippy::print_stdout)]
async fn w2(
    addr: SocketAddr,
    pin: [u8; 32],
    seed: &str,
    params: W2,
    cpu_pid: Option<u32>,
) -> Result<(), BoxError> {
    let W2 {
        mailboxes,
        rate,
        seconds,
        size,
        producers,
        ack_window,
        request_acks,
        ephemeral,
    } = params;
    // Latency from the scheduled send, and from the moment it really started.
    let hist = Arc::new(std::sync::Mutex::new((
        latency_histogram()?,
        latency_histogram()?,
    )));
    let received = Arc::new(AtomicU64::new(0));
    // The schedule starts once every device is connected and subscribed:
    // setting up 1,000 connections can take seconds on a busy machine, and a
    // schedule already running by then would count that as latency.
    let start = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut receivers = Vec::new();
    let mut ids = Vec::new();
    let mut conns = Vec::new();
    let eps = (0..4)
        .map(|_| sotto_relay::client::endpoint(pin, false))
        .collect::<Result<Vec<_>, _>>()?;
    for i in 0..mailboxes {
        let client = Arc::new(
            RelayClient::connect_on(&eps[i % eps.len()], addr, &mailbox_key(seed, i)).await?,
        );
        ids.push(client.mailbox());
        conns.push(client.connection().clone());
        if ephemeral {
            client.set_delivery_token(Some(&token_of(i))).await?;
        }
        let mut sub = client.subscribe().await?;
        let mut acker = Acker {
            client: client.clone(),
            stream: (!request_acks).then(|| sub.acks()).flatten(),
        };
        let (hist, received, start) = (hist.clone(), received.clone(), start.clone());
        // Subscription::next is not cancel-safe: read in its own task and
        // hand envelopes over a channel, so the ack timer can time out safely.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        receivers.push(tokio::spawn(async move {
            while let Ok(Some(p)) = sub.next().await {
                let (id, payload) = match p {
                    Pushed::Envelope(e) => (Some(e.id), e.payload),
                    Pushed::Ephemeral(payload) => (None, payload),
                    _ => continue,
                };
                {
                    let now = Instant::now();
                    let Some(t0) = start.get() else {
                        // Left over from an earlier run on the same seed:
                        // acknowledge it, but it is not part of this one.
                        if let Some(id) = id {
                            if tx.send(id).is_err() {
                                return;
                            }
                        }
                        continue;
                    };
                    let since = |range: std::ops::Range<usize>| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(payload.get(range).unwrap_or(&[0; 8]));
                        let at = *t0 + Duration::from_micros(u64::from_be_bytes(b));
                        micros(now.saturating_duration_since(at))
                    };
                    let (scheduled, started) = (since(0..8), since(8..16));
                    if let Ok(mut h) = hist.lock() {
                        let _ = h.0.record(scheduled);
                        let _ = h.1.record(started);
                    }
                    received.fetch_add(1, Ordering::Relaxed);
                    if let Some(id) = id {
                        if tx.send(id).is_err() {
                            return;
                        }
                    }
                }
            }
        }));
        receivers.push(tokio::spawn(async move {
            let mut pending = Vec::new();
            let mut due = tokio::time::Instant::now();
            loop {
                // Idle mailboxes sleep on the channel; a timer runs only while
                // acks are pending (1,000 idle 20 ms timers cost the machine
                // 50,000 wake-ups a second, CPU the relay then lacks). The
                // window counts from the first envelope waiting for its ack.
                let next = if pending.is_empty() {
                    Ok(rx.recv().await)
                } else {
                    tokio::time::timeout_at(due, rx.recv()).await
                };
                match next {
                    Ok(Some(id)) => {
                        if pending.is_empty() {
                            due = tokio::time::Instant::now() + ack_window;
                        }
                        pending.push(id);
                        if pending.len() >= 32 {
                            acker.ack(&std::mem::take(&mut pending)).await;
                        }
                    }
                    Ok(None) => return,
                    Err(_) => {
                        if !pending.is_empty() {
                            acker.ack(&std::mem::take(&mut pending)).await;
                        }
                    }
                }
            }
        }));
    }
    let mut senders = Vec::new();
    for p in 0..producers {
        let c = RelayClient::connect(addr, pin, &mailbox_key("producer", p)).await?;
        conns.push(c.connection().clone());
        senders.push(Arc::new(c));
    }
    let total = rate * seconds;
    let ids = Arc::new(ids);
    let failures = Arc::new(AtomicU64::new(0));
    let t0 = *start.get_or_init(|| Instant::now() + Duration::from_millis(500));
    tokio::time::sleep_until(t0.into()).await;
    let mark = CpuMark::now(cpu_pid, CPU_NAMES);
    let wire0 = Wire::sum(&conns);
    let lag = Arc::new(std::sync::Mutex::new(latency_histogram()?));
    // Scheduled on tokio's timer (1 ms granularity): a precise OS-thread
    // schedule cost the load generator a wake-up per send, CPU the relay
    // then lacked. The lag is reported, and a second latency figure starts
    // when the send actually started.
    let mut inflight = Vec::with_capacity(total as usize);
    for i in 0..total {
        let offset_us = i * 1_000_000 / rate;
        let scheduled = t0 + Duration::from_micros(offset_us);
        tokio::time::sleep_until(scheduled.into()).await;
        let client = senders[(i as usize) % producers].clone();
        let to_index = (i as usize) % ids.len();
        let to = ids[to_index];
        let (failures, lag) = (failures.clone(), lag.clone());
        inflight.push(tokio::spawn(async move {
            let started = Instant::now();
            let late = started.saturating_duration_since(scheduled);
            if let Ok(mut h) = lag.lock() {
                let _ = h.record(micros(late));
            }
            let started_us = micros(started.saturating_duration_since(t0));
            let mut payload = vec![0x3cu8; size.max(16)];
            payload[..8].copy_from_slice(&offset_us.to_be_bytes());
            payload[8..16].copy_from_slice(&started_us.to_be_bytes());
            let sent = if ephemeral {
                match client
                    .send_ephemeral(vec![(to, payload, token_of(to_index))])
                    .await
                {
                    Ok(r) => r.into_iter().all(|r| r.is_ok()),
                    Err(_) => false,
                }
            } else {
                client.send(&to, payload).await.is_ok()
            };
            if !sent {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in inflight {
        let _ = t.await;
    }
    let send_done = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) + failures.load(Ordering::Relaxed) < total
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu = mark.since(cpu_pid, total);
    let wire = Wire::sum(&conns).minus(&wire0).per(total);
    let h = hist.lock().map_err(|_| "poisoned")?;
    let (h, from_start) = (&h.0, &h.1);
    println!(
        "W2{} rate {rate}/s for {seconds} s to {mailboxes} subscribed mailboxes ({size} B): offered {total}, received {}, failed {}, sends finished at {:.2} s{cpu}",
        if ephemeral { " ephemeral" } else { "" },
        received.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
        send_done.as_secs_f64()
    );
    println!(
        "W2 latency scheduled-send -> push: p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms",
        ms(h, 0.5),
        ms(h, 0.99),
        ms(h, 0.999),
        h.max() as f64 / 1000.0
    );
    let lag = lag.lock().map_err(|_| "poisoned")?;
    println!(
        "W2 of which the load generator's own lag (scheduled -> send started): p50 {:.2} ms, p99 {:.2} ms",
        ms(&lag, 0.5),
        ms(&lag, 0.99),
    );
    println!(
        "W2 latency send started -> push: p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms",
        ms(from_start, 0.5),
        ms(from_start, 0.99),
        ms(from_start, 0.999),
    );
    println!("W2 client-side QUIC per message: {wire}");
    for r in receivers {
        r.abort();
    }
    Ok(())
}

/// Client-side QUIC traffic summed over connections (what the relay
/// receives and sends, seen from the other end).
#[derive(Default)]
struct Wire([f64; 8]);

impl Wire {
    fn sum(conns: &[quinn::Connection]) -> Self {
        let mut w = Wire::default();
        for c in conns {
            let s = c.stats();
            let v = [
                s.udp_tx.datagrams,
                s.udp_rx.datagrams,
                s.frame_tx.acks,
                s.frame_rx.acks,
                s.frame_tx.stream,
                s.frame_rx.stream,
                s.frame_tx.max_streams_bidi + s.frame_tx.max_data + s.frame_tx.max_stream_data,
                s.frame_rx.max_streams_bidi + s.frame_rx.max_data + s.frame_rx.max_stream_data,
            ];
            for (a, b) in w.0.iter_mut().zip(v) {
                *a += b as f64;
            }
        }
        w
    }
    fn minus(mut self, o: &Self) -> Self {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a -= b;
        }
        self
    }
    fn per(mut self, n: u64) -> Self {
        for a in self.0.iter_mut() {
            *a /= n.max(1) as f64;
        }
        self
    }
}

impl std::fmt::Display for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = &self.0;
        write!(
            f,
            "datagrams to relay {:.2}, from relay {:.2}; ACK frames {:.2} / {:.2}; \
             STREAM frames {:.2} / {:.2}; flow-control frames {:.2} / {:.2}",
            v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
        )
    }
}

#[allow(clippy::print_stdout)]
fn startup(data_dir: &std::path::Path) -> Result<(), BoxError> {
    use sotto_relay::server::db::{Cf, Db};
    let db = Db::open(&data_dir.join("db"))?;
    let scan = |cf: Cf| -> Result<(u64, u64, Duration), BoxError> {
        let started = Instant::now();
        let (mut n, mut bytes) = (0u64, 0u64);
        db.scan(cf, &[], &[0xff; 41], |_, v| {
            n += 1;
            bytes += v.len() as u64;
            Ok(true)
        })?;
        Ok((n, bytes, started.elapsed()))
    };
    let (n, bytes, full) = scan(Cf::Envelopes)?;
    println!(
        "startup: full scan of every envelope: {n} records, {:.1} MiB, {:.3} s",
        bytes as f64 / 1048576.0,
        full.as_secs_f64()
    );
    let (n, bytes, index) = scan(Cf::EnvelopeIndex)?;
    println!(
        "startup: scan of the index records: {n} records, {:.1} MiB, {:.3} s",
        bytes as f64 / 1048576.0,
        index.as_secs_f64()
    );
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64, BoxError> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).ok_or("bad VmRSS")?.parse()?)
}

#[allow(clippy::print_stdout)]
async fn hostile(
    addr: SocketAddr,
    pin: [u8; 32],
    n: usize,
    streams: usize,
    seconds: u64,
) -> Result<(), BoxError> {
    let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let ep = sotto_relay::client::endpoint(pin, false)?;
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let ep = ep.clone();
        tasks.push(tokio::spawn(async move {
            let c = RelayClient::connect_on(&ep, addr, &mailbox_key("hostile", i)).await?;
            let conn = c.connection().clone();
            let open = || tokio::time::timeout(Duration::from_secs(5), conn.open_bi());
            let mut held = Vec::new();
            for _ in 0..streams {
                let Ok(Ok((mut s, r))) = open().await else {
                    break;
                };
                s.write_all(&((2u32 << 20) - 1).to_be_bytes()).await?;
                held.push((s, r));
            }
            let mut trickled = 0u64;
            if let Ok(Ok((mut s, _r))) = open().await {
                s.write_all(&200u32.to_be_bytes()).await?;
                while tokio::time::Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if s.write_all(&[0x0a]).await.is_err() {
                        break;
                    }
                    trickled += 1;
                }
            }
            tokio::time::sleep_until(until).await;
            Ok::<_, BoxError>((held.len(), trickled, c))
        }));
    }
    let (mut stalled, mut trickled, mut conns) = (0, 0, Vec::new());
    for t in tasks {
        let (s, b, c) = t.await??;
        stalled += s;
        trickled += b;
        conns.push(c);
    }
    println!(
        "hostile: {} connections held {stalled} stalled 2 MiB length prefixes and trickled {trickled} bytes for {seconds} s",
        conns.len()
    );
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn idle(
    addr: SocketAddr,
    pin: [u8; 32],
    n: usize,
    pid: u32,
    hold: u64,
) -> Result<(), BoxError> {
    let before = rss_kib(pid)?;
    let started = Instant::now();
    let mut conns = Vec::with_capacity(n);
    let mut batch = Vec::new();
    let eps = (0..8)
        .map(|_| sotto_relay::client::endpoint(pin, false))
        .collect::<Result<Vec<_>, _>>()?;
    for i in 0..n {
        let ep = eps[i % eps.len()].clone();
        batch.push(tokio::spawn(async move {
            RelayClient::connect_on(&ep, addr, &mailbox_key("idle", i)).await
        }));
        if batch.len() == 64 {
            for t in batch.drain(..) {
                conns.push(t.await??);
            }
        }
    }
    for t in batch {
        conns.push(t.await??);
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let after = rss_kib(pid)?;
    println!(
        "idle: {} authenticated connections held (connect+auth {:.2} s, {:.0}/s); relay RSS {} -> {} KiB, {:.1} KiB per connection",
        conns.len(),
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        before,
        after,
        (after.saturating_sub(before)) as f64 / n as f64
    );
    Ok(())
}
