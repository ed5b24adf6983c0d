//! `sotto-loadgen`: drives a running relay over loopback and reports
//! throughput and latency (W1: durable enqueue then drain; W2: end-to-end
//! latency at fixed offered rates; idle: connections held and relay RSS).
//! Every run is bounded in message count and time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ed25519_dalek::SigningKey;
use hdrhistogram::Histogram;
use sha2::{Digest, Sha256};
use sotto_relay::{MailboxId, Pushed, RelayClient};

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
        #[arg(long, default_value_t = 8)]
        consumers: usize,
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

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let (addr, pin) = read_relay(&args.relay_dir)?;
    match args.mode {
        Mode::W1 {
            mailboxes,
            messages,
            size,
            producers,
            window,
            consumers,
        } => {
            w1(
                addr, pin, &args.seed, mailboxes, messages, size, producers, window, consumers,
            )
            .await
        }
        Mode::W2 {
            mailboxes,
            rate,
            seconds,
            size,
            producers,
        } => {
            w2(
                addr, pin, &args.seed, mailboxes, rate, seconds, size, producers,
            )
            .await
        }
        Mode::Idle {
            connections,
            relay_pid,
            hold_seconds,
        } => idle(addr, pin, connections, relay_pid, hold_seconds).await,
    }
}

#[allow(clippy::too_many_arguments, clippy::print_stdout)]
async fn w1(
    addr: SocketAddr,
    pin: [u8; 32],
    seed: &str,
    mailboxes: usize,
    messages: usize,
    size: usize,
    producers: usize,
    window: usize,
    consumers: usize,
) -> Result<(), BoxError> {
    let ids: Arc<Vec<MailboxId>> = Arc::new(
        (0..mailboxes)
            .map(|i| MailboxId(mailbox_key(seed, i).verifying_key().to_bytes()))
            .collect(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let client = Arc::new(RelayClient::connect(addr, pin, &mailbox_key("producer", p)).await?);
        for _ in 0..window {
            let (client, next, ids) = (client.clone(), next.clone(), ids.clone());
            tasks.push(tokio::spawn(async move {
                let payload = vec![0xa5u8; size];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= messages {
                        return Ok::<_, sotto_relay::RelayError>(());
                    }
                    client.send(&ids[i % ids.len()], payload.clone()).await?;
                }
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    let enq = started.elapsed();
    println!(
        "W1 enqueue: {messages} x {size} B to {mailboxes} mailboxes, {producers} producers x {window} in flight: {:.2} s, {:.0} msgs/s (each confirmed after fsync)",
        enq.as_secs_f64(),
        messages as f64 / enq.as_secs_f64()
    );

    let started = Instant::now();
    let drained = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..consumers {
        let seed = seed.to_owned();
        let drained = drained.clone();
        tasks.push(tokio::spawn(async move {
            for i in (c..mailboxes).step_by(consumers) {
                let client = RelayClient::connect(addr, pin, &mailbox_key(&seed, i)).await?;
                loop {
                    let page = client.fetch(None, 1000).await?;
                    if page.envelopes.is_empty() {
                        break;
                    }
                    let ids: Vec<_> = page.envelopes.iter().map(|e| e.id).collect();
                    let n = client.ack(&ids).await?;
                    drained.fetch_add(u64::from(n), Ordering::Relaxed);
                }
                client.close().await;
            }
            Ok::<_, sotto_relay::RelayError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let d = started.elapsed();
    let n = drained.load(Ordering::Relaxed);
    println!(
        "W1 drain: {n} fetched + acked (durable deletes) by {consumers} consumers: {:.2} s, {:.0} msgs/s",
        d.as_secs_f64(),
        n as f64 / d.as_secs_f64()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments, clippy::print_stdout)]
async fn w2(
    addr: SocketAddr,
    pin: [u8; 32],
    seed: &str,
    mailboxes: usize,
    rate: u64,
    seconds: u64,
    size: usize,
    producers: usize,
) -> Result<(), BoxError> {
    let hist = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let received = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now() + Duration::from_secs(2) + Duration::from_millis(mailboxes as u64 * 2);
    let mut receivers = Vec::new();
    let mut ids = Vec::new();
    let eps = (0..4)
        .map(|_| sotto_relay::client::endpoint(pin, false))
        .collect::<Result<Vec<_>, _>>()?;
    for i in 0..mailboxes {
        let client = Arc::new(
            RelayClient::connect_on(&eps[i % eps.len()], addr, &mailbox_key(seed, i)).await?,
        );
        ids.push(client.mailbox());
        let mut sub = client.subscribe().await?;
        let (hist, received) = (hist.clone(), received.clone());
        // Subscription::next is not cancel-safe: read in its own task and
        // hand envelopes over a channel, so the ack timer can time out safely.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        receivers.push(tokio::spawn(async move {
            while let Ok(Some(p)) = sub.next().await {
                if let Pushed::Envelope(e) = p {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(e.payload.get(..8).unwrap_or(&[0; 8]));
                    let scheduled = t0 + Duration::from_micros(u64::from_be_bytes(b));
                    let lat = Instant::now().saturating_duration_since(scheduled);
                    if let Ok(mut h) = hist.lock() {
                        let _ = h.record(u64::try_from(lat.as_micros()).unwrap_or(u64::MAX).max(1));
                    }
                    received.fetch_add(1, Ordering::Relaxed);
                    if tx.send(e.id).is_err() {
                        return;
                    }
                }
            }
        }));
        receivers.push(tokio::spawn(async move {
            let mut pending = Vec::new();
            loop {
                match tokio::time::timeout(Duration::from_millis(20), rx.recv()).await {
                    Ok(Some(id)) => {
                        pending.push(id);
                        if pending.len() >= 32 {
                            let _ = client.ack(&std::mem::take(&mut pending)).await;
                        }
                    }
                    Ok(None) => return,
                    Err(_) => {
                        if !pending.is_empty() {
                            let _ = client.ack(&std::mem::take(&mut pending)).await;
                        }
                    }
                }
            }
        }));
    }
    let mut senders = Vec::new();
    for p in 0..producers {
        senders.push(Arc::new(
            RelayClient::connect(addr, pin, &mailbox_key("producer", p)).await?,
        ));
    }
    let total = rate * seconds;
    let ids = Arc::new(ids);
    let failures = Arc::new(AtomicU64::new(0));
    tokio::time::sleep_until(t0.into()).await;
    let mut inflight = Vec::with_capacity(total as usize);
    for i in 0..total {
        let offset_us = i * 1_000_000 / rate;
        tokio::time::sleep_until((t0 + Duration::from_micros(offset_us)).into()).await;
        let client = senders[(i as usize) % producers].clone();
        let to = ids[(i as usize) % ids.len()];
        let mut payload = vec![0x3cu8; size.max(8)];
        payload[..8].copy_from_slice(&offset_us.to_be_bytes());
        let failures = failures.clone();
        inflight.push(tokio::spawn(async move {
            if client.send(&to, payload).await.is_err() {
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
    let h = hist.lock().map_err(|_| "poisoned")?;
    println!(
        "W2 rate {rate}/s for {seconds} s to {mailboxes} subscribed mailboxes ({size} B): offered {total}, received {}, failed {}, sends finished at {:.2} s",
        received.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
        send_done.as_secs_f64()
    );
    println!(
        "W2 latency scheduled-send -> push: p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
    for r in receivers {
        r.abort();
    }
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
