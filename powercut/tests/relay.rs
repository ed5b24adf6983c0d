//! The real `sotto-relay` binary on a LazyFs, under load, losing power:
//! SIGKILL at a random moment, a power cut (everything RocksDB did not
//! fsync is gone), a restart on what survived, twenty times over; every
//! fourth time power fails once more while the relay is recovering.
//!
//! Promises checked after every restart, over everything since the start:
//! - the relay starts and serves (RocksDB opens what the cut left), with
//!   the same certificate (clients pin it);
//! - every envelope whose send was confirmed (`SendOk` received) is still
//!   there with its payload, unless its recipient had tried to ack it
//!   (recipients keep one in four unacked, so the checked backlog grows);
//! - no envelope whose ack was confirmed (`AckOk` received) comes back;
//! - no envelope id is ever seen with two different payloads (sends,
//!   pushes ahead of the fsync, fetches).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fetch_all, launch_relay, relay_flags, Mount, RelayProc, Rng};
use ed25519_dalek::SigningKey;
use rand_core::OsRng;
use sotto_relay::{EnvelopeId, MailboxId, Pushed, RelayClient};

const CUTS: usize = 20;
const SENDERS: usize = 3;
/// Sends each sender keeps in flight.
const IN_FLIGHT: usize = 8;

/// Everything the clients learned, across all runs of the relay.
#[derive(Default)]
struct Ledger {
    /// Sends the relay confirmed: id -> (recipient, payload).
    confirmed: HashMap<EnvelopeId, (usize, Vec<u8>)>,
    /// Every (id, payload) seen anywhere; a second payload for an id is a reuse.
    known: HashMap<EnvelopeId, Vec<u8>>,
    /// Ids a recipient sent an ack for (the relay may have applied it).
    ack_tried: HashSet<EnvelopeId>,
    /// Ids whose ack the relay confirmed: never to be seen again.
    acked: HashSet<EnvelopeId>,
    /// Envelopes received by pushes or fetches while the load ran.
    received: u64,
    /// Acked ids delivered again (while running, or after a restart).
    reappeared: Vec<EnvelopeId>,
    reused: Vec<String>,
}

impl Ledger {
    fn saw(&mut self, id: EnvelopeId, payload: &[u8], how: &str) {
        if how != "confirmed" && self.acked.contains(&id) {
            self.reappeared.push(id);
        }
        match self.known.get(&id) {
            Some(p) if p != payload => self.reused.push(format!(
                "{id} {how} with {} bytes, earlier {} bytes",
                payload.len(),
                p.len()
            )),
            Some(_) => {}
            None => {
                self.known.insert(id, payload.to_vec());
            }
        }
    }
}

type Shared = Arc<Mutex<Ledger>>;

fn key() -> SigningKey {
    SigningKey::generate(&mut OsRng)
}

fn mailbox(k: &SigningKey) -> MailboxId {
    MailboxId(k.verifying_key().to_bytes())
}

/// A sender: `IN_FLIGHT` sends at a time round robin over `to`, payloads
/// unique and of varied size, until the relay goes away.
async fn sender(relay: Arc<RelayClient>, s: usize, run: usize, to: Vec<MailboxId>, ledger: Shared) {
    for i in 0usize.. {
        let mut batch = Vec::new();
        for j in 0..IN_FLIGHT {
            let r = (i + j + s) % to.len();
            let mut payload = format!("run{run}-s{s}-{i}-{j}:").into_bytes();
            payload.resize(payload.len() + (i * 37 + j * 101) % 1500, b'x');
            let (relay, mb) = (relay.clone(), to[r]);
            batch.push(tokio::spawn(async move {
                let res = relay.send(&mb, payload.clone()).await;
                (r, payload, res)
            }));
        }
        for b in batch {
            let Ok((r, payload, res)) = b.await else {
                return;
            };
            let Ok(id) = res else { return };
            let mut l = ledger.lock().unwrap();
            l.saw(id, &payload, "confirmed");
            l.confirmed.insert(id, (r, payload));
        }
    }
}

/// Acks `ids` with a confirmed ack, recording the try and the confirmation.
async fn ack(relay: &RelayClient, ids: Vec<EnvelopeId>, ledger: &Shared) -> bool {
    ledger.lock().unwrap().ack_tried.extend(ids.iter().copied());
    match relay.ack(&ids).await {
        Ok(_) => {
            ledger.lock().unwrap().acked.extend(ids);
            true
        }
        Err(_) => false,
    }
}

/// Recipients ack three envelopes in four; the fourth (by sequence number)
/// stays, so every audit checks a backlog that grows over all the runs.
fn kept(id: &EnvelopeId) -> bool {
    id.seq() % 4 == 0
}

/// A recipient that fetches pages in order and acks what it does not keep.
async fn fetcher(relay: RelayClient, ledger: Shared) {
    let mut cursor = None;
    loop {
        let Ok(page) = relay.fetch(cursor, 200).await else {
            return;
        };
        if page.envelopes.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        cursor = page.envelopes.last().map(|e| e.id);
        let mut ids = Vec::new();
        {
            let mut l = ledger.lock().unwrap();
            for e in &page.envelopes {
                l.saw(e.id, &e.payload, "fetched");
                l.received += 1;
                if !kept(&e.id) {
                    ids.push(e.id);
                }
            }
        }
        if !ids.is_empty() && !ack(&relay, ids, &ledger).await {
            return;
        }
    }
}

/// A recipient on the push stream (which delivers ahead of the fsync),
/// acking what it does not keep, each with a confirmed ack.
async fn subscriber(relay: RelayClient, ledger: Shared) {
    let relay = Arc::new(relay);
    let Ok(mut sub) = relay.subscribe().await else {
        return;
    };
    let mut acks = Vec::new();
    while let Ok(Some(p)) = sub.next().await {
        if let Pushed::Envelope(e) = p {
            {
                let mut l = ledger.lock().unwrap();
                l.saw(e.id, &e.payload, "pushed");
                l.received += 1;
            }
            if kept(&e.id) {
                continue;
            }
            let (relay, ledger) = (relay.clone(), ledger.clone());
            acks.push(tokio::spawn(async move {
                ack(&relay, vec![e.id], &ledger).await;
            }));
            acks.retain(|t| !t.is_finished());
        }
    }
}

/// What a restarted relay holds, checked against the ledger.
#[derive(Default)]
struct Audit {
    /// Confirmed envelopes never acked, each found intact or lost.
    checked: usize,
    lost: Vec<EnvelopeId>,
    back_after_ack: Vec<EnvelopeId>,
}

async fn audit(relay: &RelayProc, recipients: &[SigningKey], ledger: &Shared) -> Audit {
    let mut present = HashMap::new();
    for (r, k) in recipients.iter().enumerate() {
        for (id, payload) in fetch_all(relay, k).await {
            present.insert(id, (r, payload));
        }
    }
    let mut l = ledger.lock().unwrap();
    let mut a = Audit::default();
    for (id, (r, payload)) in &present {
        l.saw(*id, payload, "after restart");
        if l.acked.contains(id) {
            a.back_after_ack.push(*id);
        }
        if let Some((want_r, _)) = l.confirmed.get(id) {
            assert_eq!(want_r, r, "envelope {id} in the wrong mailbox");
        }
    }
    for (id, (_, payload)) in &l.confirmed {
        if l.ack_tried.contains(id) {
            continue;
        }
        a.checked += 1;
        match present.get(id) {
            Some((_, p)) if p == payload => {}
            _ => a.lost.push(*id),
        }
    }
    a
}

/// The data dir as an operator prepares it: created, and its name durable.
fn prepare_data_dir(m: &Mount) -> std::path::PathBuf {
    let dir = m.path().join("relay");
    std::fs::create_dir(&dir).unwrap();
    std::fs::File::open(m.path()).unwrap().sync_all().unwrap();
    dir
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn confirmed_envelopes_survive_twenty_power_cuts() {
    let started = Instant::now();
    let rt = runtime();
    let mut rng = Rng::from_env();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("relay.log");
    let flags = relay_flags();
    let mut m = Mount::new();
    let data = prepare_data_dir(&m);

    // First start: the relay creates its certificate, keys and database
    // and makes their directory entries durable itself (no `sync` here; see
    // `relay_first_start_survives_a_power_cut`).
    let mut relay = RelayProc::start(&data, &log, &flags).unwrap();
    let pin = relay.pin;
    relay.terminate();

    let recipients = [key(), key()];
    let mailboxes: Vec<MailboxId> = recipients.iter().map(mailbox).collect();
    let ledger = Shared::default();
    let (mut lost, mut back) = (HashSet::new(), HashSet::new());
    let mut reverted = 0;
    let mut recovery_cuts = 0;
    // Restarts the relay after a cut and checks what it holds.
    let restart_and_audit = |after: &str, lost: &mut HashSet<_>, back: &mut HashSet<_>| {
        let relay = RelayProc::start(&data, &log, &flags)
            .unwrap_or_else(|e| panic!("relay failed to start after {after}: {e}"));
        assert_eq!(
            relay.pin, pin,
            "the relay's certificate changed after {after}"
        );
        let a = rt.block_on(audit(&relay, &recipients, &ledger));
        lost.extend(a.lost);
        back.extend(a.back_after_ack);
        (relay, a.checked)
    };
    let mut checked = 0;
    (relay, _) = restart_and_audit("the first start", &mut lost, &mut back);
    for run in 0..CUTS {
        let tasks = rt.block_on(async {
            let mut tasks = Vec::new();
            for s in 0..SENDERS {
                let c = RelayClient::connect(relay.addr, relay.pin, &key())
                    .await
                    .unwrap();
                tasks.push(tokio::spawn(sender(
                    Arc::new(c),
                    s,
                    run,
                    mailboxes.clone(),
                    ledger.clone(),
                )));
            }
            let c0 = RelayClient::connect(relay.addr, relay.pin, &recipients[0])
                .await
                .unwrap();
            tasks.push(tokio::spawn(subscriber(c0, ledger.clone())));
            let c1 = RelayClient::connect(relay.addr, relay.pin, &recipients[1])
                .await
                .unwrap();
            tasks.push(tokio::spawn(fetcher(c1, ledger.clone())));
            tasks
        });
        std::thread::sleep(Duration::from_millis(rng.range(200, 1500)));
        relay.kill9();
        rt.block_on(async {
            for t in tasks {
                t.abort();
                let _ = t.await;
            }
        });
        reverted += m.cut();

        // Every fourth time, power fails again while the relay recovers
        // (RocksDB replays its WAL, writes a table and a new MANIFEST).
        if run % 4 == 3 {
            let mut child = launch_relay(&data, &log, &flags);
            std::thread::sleep(Duration::from_millis(rng.range(0, 400)));
            let _ = child.kill();
            let _ = child.wait();
            reverted += m.cut();
            recovery_cuts += 1;
        }
        (relay, checked) = restart_and_audit(&format!("cut {}", run + 1), &mut lost, &mut back);
    }
    relay.kill9();

    // Drain: everything still there is acked, and the mailboxes end empty.
    relay = RelayProc::start(&data, &log, &flags).unwrap();
    rt.block_on(async {
        for k in &recipients {
            let rest: Vec<EnvelopeId> = fetch_all(&relay, k).await.iter().map(|e| e.0).collect();
            let c = RelayClient::connect(relay.addr, relay.pin, k)
                .await
                .unwrap();
            for chunk in rest.chunks(1000) {
                assert!(ack(&c, chunk.to_vec(), &ledger).await);
            }
            assert!(fetch_all(&relay, k).await.is_empty());
        }
    });
    relay.kill9();

    let l = ledger.lock().unwrap();
    back.extend(l.reappeared.iter().copied());
    let stats = m.fs.stats();
    writeln!(
        std::io::stderr(),
        "relay power cuts: cuts={} (during recovery {}) confirmed={} received={} acked={} \
         unacked_checked_at_last_audit={} lost={} \
         redelivered_after_ack={} id_reused={} inodes_reverted={} fsyncs={} dir_fsyncs={} \
         seconds={:.1}",
        stats.cuts,
        recovery_cuts,
        l.confirmed.len(),
        l.received,
        l.acked.len(),
        checked,
        lost.len(),
        back.len(),
        l.reused.len(),
        reverted,
        stats.fsyncs,
        stats.dir_fsyncs,
        started.elapsed().as_secs_f64()
    )
    .unwrap();
    assert!(stats.cuts >= CUTS as u64);
    assert!(
        l.confirmed.len() > 1000 && l.acked.len() > 500,
        "the load did not run: {} confirmed, {} acked",
        l.confirmed.len(),
        l.acked.len()
    );
    assert!(
        checked > 200,
        "too few unacked envelopes checked: {checked}"
    );
    assert!(reverted > 0, "no cut threw anything away");
    assert!(lost.is_empty(), "confirmed envelopes lost: {lost:?}");
    assert!(back.is_empty(), "acked envelopes came back: {back:?}");
    assert!(l.reused.is_empty(), "envelope ids reused: {:?}", l.reused);
}

/// One confirmed envelope, then a power cut right after the relay's very
/// first start: the relay must come back with the same certificate (clients
/// pin it) and the envelope.
///
/// Failed before the fix: the relay created `cert.der`, `key.der`,
/// `reset.key` and the `db` directory in its data dir and never fsynced
/// that directory (nor `cert.der` itself), so a power cut could leave none
/// of them: the relay then started with a new certificate and an empty
/// database.
#[test]
fn relay_first_start_survives_a_power_cut() {
    let rt = runtime();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("relay.log");
    let mut m = Mount::new();
    let data = prepare_data_dir(&m);
    let mut relay = RelayProc::start(&data, &log, &[]).unwrap();
    let pin = relay.pin;
    let to = key();
    let id = rt.block_on(async {
        let c = RelayClient::connect(relay.addr, relay.pin, &key())
            .await
            .unwrap();
        c.send(&mailbox(&to), b"confirmed".to_vec()).await.unwrap()
    });
    relay.kill9();
    m.cut();
    let survivors = list(&data);
    let relay = RelayProc::start(&data, &log, &[]).unwrap();
    let after = rt.block_on(fetch_all(&relay, &to));
    let same_certificate = relay.pin == pin;
    let envelope_kept = after == vec![(id, b"confirmed".to_vec())];
    assert!(
        same_certificate && envelope_kept,
        "after the cut: same certificate {same_certificate}, confirmed envelope kept \
         {envelope_kept}; the data dir held {survivors:?}"
    );
}

fn list(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
