//! `rabbitmq-load`: the relay's W1 and W2 workloads (see `sotto-loadgen`)
//! run against a local RabbitMQ, so that "ahead of RabbitMQ" is measured on
//! this machine in the same hour, not read from a table.
//!
//! The mapping, kept as close as AMQP allows:
//! - mailbox = durable classic queue, envelope = persistent message (1 KiB);
//! - send confirmed only by a publisher confirm (RabbitMQ confirms a
//!   persistent message once it is fsynced, as the relay's `SendOk`);
//! - device = one connection with one consumer (manual acks, prefetch 256),
//!   acking with `multiple` after 32 deliveries or 20 ms, as the W2 devices do
//!   on their push streams;
//! - producers = 8 connections with one confirm-mode channel each.
//!
//! Not production code: a benchmark driver outside the workspace.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amqprs::callbacks::{ChannelCallback, DefaultConnectionCallback};
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, Channel,
    ConfirmSelectArguments, QueueDeclareArguments, QueuePurgeArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use clap::{Parser, Subcommand};
use tokio::sync::oneshot;

/// The load generator's own measurement code, so both systems are measured
/// the same way.
#[path = "../../../../loadgen/src/measure.rs"]
mod measure;
use measure::{latency_histogram, micros, ms, CpuMark};

/// The same allocator as `sotto-loadgen`: both drivers share the cores with
/// the server they measure.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How CPU reports name the broker and this process.
const CPU_NAMES: (&str, &str) = ("broker", "driver");

#[derive(Debug, Parser)]
#[command(
    name = "rabbitmq-load",
    about = "W1/W2 against RabbitMQ on 127.0.0.1:5672"
)]
struct Args {
    /// The broker's process id (beam.smp): report its CPU time per phase.
    #[arg(long)]
    cpu_pid: Option<u32>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// W1: durable enqueue with N producers x W unconfirmed publishes, then drain.
    W1(W1),
    /// W2: every queue consumed, open-loop publishes at a fixed rate.
    W2(W2),
}

#[derive(Debug, clap::Args)]
struct W1 {
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
}

#[derive(Debug, clap::Args)]
struct W2 {
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
    #[arg(long, default_value_t = 20)]
    ack_window_ms: u64,
    /// Consumer connections: by default one per queue (a device per
    /// connection, as on the relay); fewer multiplexes the consumers as
    /// channels over them, RabbitMQ's cheaper layout.
    #[arg(long)]
    device_connections: Option<usize>,
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    // W2 measures latency: one thread, as sotto-loadgen's W2, so neither
    // driver pays for cross-thread wake-ups the other does not.
    let mut rt = match args.mode {
        Mode::W2(_) => tokio::runtime::Builder::new_current_thread(),
        Mode::W1(_) => tokio::runtime::Builder::new_multi_thread(),
    };
    rt.enable_all().build()?.block_on(async {
        match args.mode {
            Mode::W1(w) => w1(w, args.cpu_pid).await,
            Mode::W2(w) => w2(w, args.cpu_pid).await,
        }
    })
}

async fn connect() -> Result<Connection, BoxError> {
    let c = Connection::open(&OpenConnectionArguments::new(
        "127.0.0.1",
        5672,
        "guest",
        "guest",
    ))
    .await?;
    c.register_callback(DefaultConnectionCallback).await?;
    Ok(c)
}

fn queue(i: usize) -> String {
    format!("sotto-compare-{i}")
}

/// Declares queue `i`; returns how many messages it already holds.
async fn declare(ch: &Channel, i: usize) -> Result<u32, BoxError> {
    let declared = ch
        .queue_declare(QueueDeclareArguments::durable_client_named(&queue(i)))
        .await?;
    Ok(declared.map_or(0, |(_, messages, _)| messages))
}

/// Publisher confirms of one channel: delivery tag -> waiting publisher.
#[derive(Default)]
struct Confirms(Mutex<BTreeMap<u64, oneshot::Sender<bool>>>);

impl Confirms {
    fn settle(&self, tag: u64, multiple: bool, ok: bool) {
        let Ok(mut m) = self.0.lock() else { return };
        if multiple {
            let rest = m.split_off(&(tag + 1));
            for (_, tx) in std::mem::replace(&mut *m, rest) {
                let _ = tx.send(ok);
            }
        } else if let Some(tx) = m.remove(&tag) {
            let _ = tx.send(ok);
        }
    }
}

struct ConfirmCallback(Arc<Confirms>);

#[async_trait::async_trait]
impl ChannelCallback for ConfirmCallback {
    async fn close(&mut self, _: &Channel, _: CloseChannel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        self.0.settle(ack.delivery_tag(), ack.mutiple(), true);
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        self.0.settle(nack.delivery_tag(), nack.multiple(), false);
    }
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

/// A confirm-mode channel: `publish` resolves once the broker confirmed.
struct Publisher {
    _conn: Connection,
    ch: Channel,
    next_tag: tokio::sync::Mutex<u64>,
    confirms: Arc<Confirms>,
}

impl Publisher {
    async fn open() -> Result<Self, BoxError> {
        let conn = connect().await?;
        let ch = conn.open_channel(None).await?;
        let confirms = Arc::new(Confirms::default());
        ch.register_callback(ConfirmCallback(confirms.clone()))
            .await?;
        ch.confirm_select(ConfirmSelectArguments::default()).await?;
        Ok(Self {
            _conn: conn,
            ch,
            next_tag: tokio::sync::Mutex::new(0),
            confirms,
        })
    }

    async fn publish(&self, to: &str, payload: Vec<u8>) -> bool {
        let rx = {
            // Tags are assigned in publish order on the channel: hold the
            // lock until the frame is queued.
            let mut tag = self.next_tag.lock().await;
            *tag += 1;
            let (tx, rx) = oneshot::channel();
            if let Ok(mut m) = self.confirms.0.lock() {
                m.insert(*tag, tx);
            }
            let props = BasicProperties::default().with_persistence(true).finish();
            if self
                .ch
                .basic_publish(props, payload, BasicPublishArguments::new("", to))
                .await
                .is_err()
            {
                return false;
            }
            rx
        };
        rx.await.unwrap_or(false)
    }
}

async fn w1(params: W1, cpu_pid: Option<u32>) -> Result<(), BoxError> {
    let W1 {
        mailboxes,
        messages,
        size,
        producers,
        window,
        consumers,
    } = params;
    let setup = connect().await?;
    let ch = setup.open_channel(None).await?;
    for i in 0..mailboxes {
        declare(&ch, i).await?;
    }
    let mut pubs = Vec::new();
    for _ in 0..producers {
        pubs.push(Arc::new(Publisher::open().await?));
    }
    let next = Arc::new(AtomicU64::new(0));
    let mark = CpuMark::now(cpu_pid, CPU_NAMES);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in &pubs {
        for _ in 0..window {
            let (p, next) = (p.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= messages {
                        return true;
                    }
                    if !p.publish(&queue(i % mailboxes), vec![0xa5; size]).await {
                        return false;
                    }
                }
            }));
        }
    }
    for t in tasks {
        if !t.await? {
            return Err("a publish was refused".into());
        }
    }
    let took = started.elapsed();
    println!(
        "W1 enqueue: {messages} x {size} B to {mailboxes} queues, {producers} producers x {window} in flight: {:.2} s, {:.0} msgs/s (each publisher-confirmed){}",
        took.as_secs_f64(),
        messages as f64 / took.as_secs_f64(),
        mark.since(cpu_pid, messages as u64)
    );
    // Drain: each consumer connection takes its share of the queues on one
    // channel (prefetch 64 per queue) and acks with `multiple`, after 32
    // deliveries or 20 ms, as the W2 devices do. The clock runs from the
    // first consume (connections are opened before it, as the relay's
    // devices are) until every message is consumed and each channel's last
    // ack has been followed by a synchronous request, so the broker has
    // processed the acks (basic.ack has no reply of its own).
    let mut chans = Vec::new();
    for _ in 0..consumers {
        let conn = connect().await?;
        let ch = conn.open_channel(None).await?;
        ch.basic_qos(BasicQosArguments::new(0, 64, false)).await?;
        chans.push((conn, ch));
    }
    let received = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let mark = CpuMark::now(cpu_pid, CPU_NAMES);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, (conn, ch)) in chans.into_iter().enumerate() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in (c..mailboxes).step_by(consumers) {
            let (_, mut q) = ch
                .basic_consume_rx(
                    BasicConsumeArguments::new(&queue(i), &format!("c{i}"))
                        .manual_ack(true)
                        .finish(),
                )
                .await?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(m) = q.recv().await {
                    if let Some(d) = m.deliver {
                        if tx.send(d.delivery_tag()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
        let (received, mut done) = (received.clone(), done_rx.clone());
        tasks.push(tokio::spawn(async move {
            let _conn = conn;
            // Tags reach this task out of order (one forwarding task per
            // queue): ack the highest seen, never one at or below the last
            // acked (the broker refuses a tag it no longer knows).
            let (mut highest, mut acked, mut since) = (0u64, 0u64, 0u32);
            let mut due = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    biased;
                    _ = done.changed() => break,
                    tag = rx.recv() => {
                        let Some(tag) = tag else { break };
                        received.fetch_add(1, Ordering::Relaxed);
                        highest = highest.max(tag);
                        if since == 0 {
                            due = tokio::time::Instant::now() + Duration::from_millis(20);
                        }
                        since += 1;
                        if since >= 32 && highest > acked {
                            ch.basic_ack(BasicAckArguments::new(highest, true)).await?;
                            (acked, since) = (highest, 0);
                        }
                    }
                    _ = tokio::time::sleep_until(due), if since > 0 => {
                        if highest > acked {
                            ch.basic_ack(BasicAckArguments::new(highest, true)).await?;
                            acked = highest;
                        }
                        since = 0;
                    }
                }
            }
            if highest > acked {
                ch.basic_ack(BasicAckArguments::new(highest, true)).await?;
            }
            // Frames on a channel are handled in order: the qos-ok says
            // every ack before it was processed.
            ch.basic_qos(BasicQosArguments::new(0, 64, false)).await?;
            Ok::<_, amqprs::error::Error>(())
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while received.load(Ordering::Relaxed) < messages as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = done_tx.send(true);
    for t in tasks {
        t.await??;
    }
    let took = started.elapsed();
    let n = received.load(Ordering::Relaxed);
    println!(
        "W1 drain: {n} consumed + acked (acks not fsynced by RabbitMQ), {consumers} consumers over {mailboxes} queues: {:.2} s, {:.0} msgs/s{}",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        mark.since(cpu_pid, n)
    );
    if n != messages as u64 {
        return Err(format!("drained {n}, expected {messages}").into());
    }
    Ok(())
}

async fn w2(params: W2, cpu_pid: Option<u32>) -> Result<(), BoxError> {
    let W2 {
        mailboxes,
        rate,
        seconds,
        size,
        producers,
        ack_window_ms,
        device_connections,
    } = params;
    let device_connections = device_connections.unwrap_or(mailboxes).clamp(1, mailboxes);
    let ack_window = Duration::from_millis(ack_window_ms);
    let hist = Arc::new(Mutex::new((latency_histogram()?, latency_histogram()?)));
    let received = Arc::new(AtomicU64::new(0));
    let start = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut devices = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..device_connections {
        conns.push(Arc::new(connect().await?));
    }
    for i in 0..mailboxes {
        let conn = conns[i % device_connections].clone();
        let ch = conn.open_channel(None).await?;
        // The queues outlive a run: drop what an earlier (overloaded) run
        // left, so every message counted here was sent by this run. Only
        // where there is something (a purge sets the queue to work).
        if declare(&ch, i).await? > 0 {
            ch.queue_purge(QueuePurgeArguments::new(&queue(i))).await?;
        }
        ch.basic_qos(BasicQosArguments::new(0, 256, false)).await?;
        let (_, mut q) = ch
            .basic_consume_rx(
                BasicConsumeArguments::new(&queue(i), "device")
                    .manual_ack(true)
                    .finish(),
            )
            .await?;
        let (hist, received, start) = (hist.clone(), received.clone(), start.clone());
        devices.push(tokio::spawn(async move {
            let _conn = conn;
            let mut pending: Option<u64> = None;
            let mut count = 0;
            let mut due = tokio::time::Instant::now();
            loop {
                let next = if pending.is_none() {
                    Ok(q.recv().await)
                } else {
                    tokio::time::timeout_at(due, q.recv()).await
                };
                match next {
                    Ok(Some(m)) => {
                        let (Some(d), Some(body)) = (m.deliver, m.content) else {
                            continue;
                        };
                        let now = Instant::now();
                        if let Some(t0) = start.get() {
                            let since = |r: std::ops::Range<usize>| {
                                let mut b = [0u8; 8];
                                b.copy_from_slice(body.get(r).unwrap_or(&[0; 8]));
                                let at = *t0 + Duration::from_micros(u64::from_be_bytes(b));
                                micros(now.saturating_duration_since(at))
                            };
                            if let Ok(mut h) = hist.lock() {
                                let _ = h.0.record(since(0..8));
                                let _ = h.1.record(since(8..16));
                            }
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                        if pending.is_none() {
                            due = tokio::time::Instant::now() + ack_window;
                        }
                        pending = Some(d.delivery_tag());
                        count += 1;
                        if count >= 32 {
                            let _ = ch
                                .basic_ack(BasicAckArguments::new(d.delivery_tag(), true))
                                .await;
                            (pending, count) = (None, 0);
                        }
                    }
                    Ok(None) => return,
                    Err(_) => {
                        if let Some(tag) = pending.take() {
                            let _ = ch.basic_ack(BasicAckArguments::new(tag, true)).await;
                            count = 0;
                        }
                    }
                }
            }
        }));
    }
    let mut pubs = Vec::new();
    for _ in 0..producers {
        pubs.push(Arc::new(Publisher::open().await?));
    }
    let total = rate * seconds;
    let failures = Arc::new(AtomicU64::new(0));
    let t0 = *start.get_or_init(|| Instant::now() + Duration::from_millis(500));
    tokio::time::sleep_until(t0.into()).await;
    let mark = CpuMark::now(cpu_pid, CPU_NAMES);
    let lag = Arc::new(Mutex::new(latency_histogram()?));
    let mut inflight = Vec::with_capacity(total as usize);
    for i in 0..total {
        let offset_us = i * 1_000_000 / rate;
        let scheduled = t0 + Duration::from_micros(offset_us);
        tokio::time::sleep_until(scheduled.into()).await;
        let p = pubs[(i as usize) % producers].clone();
        let to = queue((i as usize) % mailboxes);
        let (failures, lag) = (failures.clone(), lag.clone());
        inflight.push(tokio::spawn(async move {
            let started = Instant::now();
            if let Ok(mut h) = lag.lock() {
                let _ = h.record(micros(started.saturating_duration_since(scheduled)));
            }
            let started_us = micros(started.saturating_duration_since(t0));
            let mut payload = vec![0x3cu8; size.max(16)];
            payload[..8].copy_from_slice(&offset_us.to_be_bytes());
            payload[8..16].copy_from_slice(&started_us.to_be_bytes());
            if !p.publish(&to, payload).await {
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
    let h = hist.lock().map_err(|_| "poisoned")?;
    let lag = lag.lock().map_err(|_| "poisoned")?;
    println!(
        "W2 rate {rate}/s for {seconds} s to {mailboxes} consumed queues over {device_connections} connections ({size} B): offered {total}, received {}, failed {}, publishes finished at {:.2} s{cpu}",
        received.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
        send_done.as_secs_f64()
    );
    println!(
        "W2 latency scheduled-send -> push: p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms",
        ms(&h.0, 0.5),
        ms(&h.0, 0.99),
        ms(&h.0, 0.999),
        h.0.max() as f64 / 1000.0
    );
    println!(
        "W2 of which the driver's own lag (scheduled -> send started): p50 {:.2} ms, p99 {:.2} ms",
        ms(&lag, 0.5),
        ms(&lag, 0.99)
    );
    println!(
        "W2 latency send started -> push: p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms",
        ms(&h.1, 0.5),
        ms(&h.1, 0.99),
        ms(&h.1, 0.999)
    );
    for d in devices {
        d.abort();
    }
    Ok(())
}
