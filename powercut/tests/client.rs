//! The messenger client's SQLite store losing power mid-conversation.
//!
//! Alice is the `powercut-client` process with her store on a LazyFs; Bob is
//! a client in this process on an ordinary disk, and the relay is a real
//! `sotto-relay` on an ordinary disk. Alice and Bob message each other while
//! Alice is SIGKILLed and her disk loses power at random moments (during
//! startup too), then reopens on what survived; twenty times over, then one
//! last run until everything arrived.
//!
//! What is checked, from Alice's stdout (see `src/bin/powercut-client.rs`),
//! Bob's events and Bob's mailbox at the relay:
//! - **no message lost**: every message Bob sent is shown by Alice, and every
//!   message whose `send_text` returned at Alice (`SENT`) reaches Bob;
//! - **shown exactly once**: Alice shows each of Bob's messages under one
//!   event `seq` only (a redelivered envelope never makes a second event),
//!   and never shows an event again once `ack_event` returned (`ACK`);
//!   Bob shows each of Alice's messages once;
//! - **no message key used twice**: Bob never acknowledges envelopes to the
//!   relay (`set_skip_acks`), so his mailbox keeps every envelope Alice ever
//!   got accepted; each carries the ratchet header in clear (PROTOCOL.md
//!   I.5: sender ratchet key and counter N). A sending chain rolled back by
//!   a cut would encrypt again under an already used (key, N): two
//!   different ciphertexts under one header. Also: no decrypt failure on
//!   either side.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fetch_all, relay_flags, Mount, RelayProc, Rng};
use ed25519_dalek::SigningKey;
use prost::Message as _;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use sotto_core::{Device, SqliteStore, StorageKey, Store, Table};
use sotto_messenger::{EventKind, Messenger, RelayAddress, UserAddress};
use sotto_proto::client as pb;

const CUTS: usize = 20;
/// Alice sends one message per this many milliseconds, Bob one per 1.5x.
const SEND_EVERY_MS: u64 = 40;
const WAIT: Duration = Duration::from_secs(90);
/// The last run ends when everything arrived or nothing moved for this long.
const STALL: Duration = Duration::from_secs(20);

/// One run of Alice's process: its stdout lines arrive on `lines`.
struct Alice {
    child: Child,
    lines: Receiver<String>,
}

impl Alice {
    fn spawn(store: &Path, key: &str, log: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_powercut-client"))
            .args(args)
            .env("POWERCUT_STORE", store)
            .env("POWERCUT_KEY", key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Alice { child, lines }
    }

    /// The next line, failing the test if the process ends or stalls.
    fn expect_line(&mut self, what: &str) -> String {
        match self.lines.recv_timeout(WAIT) {
            Ok(l) if l.starts_with("ERROR") => panic!("Alice failed: {l}"),
            Ok(l) => l,
            Err(e) => panic!("no {what} from Alice: {e:?}"),
        }
    }

    /// SIGKILL, reap, and collect every line it wrote.
    fn kill(&mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut rest = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(5)) {
                Ok(l) => rest.push(l),
                Err(RecvTimeoutError::Disconnected) => return rest,
                Err(RecvTimeoutError::Timeout) => panic!("Alice's stdout did not close"),
            }
        }
    }
}

impl Drop for Alice {
    fn drop(&mut self) {
        // A failing test must not leave a client running on the mount.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What Alice's runs printed, in order, run by run.
#[derive(Default)]
struct AliceLog {
    runs: Vec<Vec<String>>,
}

impl AliceLog {
    fn lines(&self) -> impl Iterator<Item = (usize, &str)> {
        self.runs
            .iter()
            .enumerate()
            .flat_map(|(r, ls)| ls.iter().map(move |l| (r, l.as_str())))
    }

    /// Texts whose `send_text` returned.
    fn sent(&self) -> HashSet<String> {
        self.lines()
            .filter_map(|(_, l)| l.strip_prefix("SENT "))
            .filter_map(|l| l.split_once(' ').map(|(_, t)| t.to_owned()))
            .collect()
    }

    /// Shown messages: text -> (message id, event seq) of each showing.
    fn shown(&self) -> HashMap<String, Vec<(String, u64, usize)>> {
        let mut out: HashMap<String, Vec<_>> = HashMap::new();
        for (run, l) in self.lines() {
            if let Some(rest) = l.strip_prefix("MSG ") {
                let mut it = rest.splitn(3, ' ');
                let (seq, id, text) = (it.next(), it.next(), it.next());
                let (Some(seq), Some(id), Some(text)) = (seq, id, text) else {
                    panic!("bad line {l}");
                };
                out.entry(text.to_owned()).or_default().push((
                    id.to_owned(),
                    seq.parse().unwrap(),
                    run,
                ));
            }
        }
        out
    }
}

/// Bob's side, filled by his event loop.
#[derive(Default)]
struct BobLog {
    sent: Vec<String>,
    got: BTreeMap<String, u32>,
    failures: Vec<String>,
}

/// Bob's mailbox key, from his store's config row.
fn mailbox_key(store: &SqliteStore) -> SigningKey {
    let cfg = store.get(Table::App, b"cfg").unwrap().unwrap();
    let cfg = pb::ClientConfig::decode(cfg.as_slice()).unwrap();
    SigningKey::from_bytes(&cfg.mailbox_secret.as_slice().try_into().unwrap())
}

/// Ratchet header (sender ratchet key || PN || N, PROTOCOL.md I.5) and
/// digest of each Part I message in `envelopes`; PreKey messages by their
/// inner ratchet message.
fn headers(bob: &Device<SqliteStore>, envelopes: &[Vec<u8>]) -> Vec<([u8; 40], [u8; 32])> {
    let mut out = Vec::new();
    for payload in envelopes {
        let env = pb::Envelope::decode(payload.as_slice()).unwrap();
        let Some(pb::envelope::Body::Sealed(sealed)) = env.body else {
            continue;
        };
        // Sealed to Bob's device (PROTOCOL.md I.14): the relay sees no header.
        let sealed = pb::Sealed::decode(bob.unseal(&sealed).unwrap().as_slice()).unwrap();
        let mut msg = sealed.message;
        if msg.first() == Some(&0x12) {
            msg = sotto_proto::session::PreKeyMessage::decode(&msg[1..])
                .unwrap()
                .message;
        }
        assert_eq!(msg.first(), Some(&0x11), "not a ratchet message");
        // N is the counter; PN is left out of the key (it is fixed per chain).
        let mut h = [0u8; 40];
        h[..32].copy_from_slice(&msg[1..33]);
        h[32..36].copy_from_slice(&msg[37..41]);
        out.push((h, Sha256::digest(&msg).into()));
    }
    out
}

#[test]
fn client_loses_no_message_and_reuses_no_key_across_twenty_power_cuts() {
    let started = Instant::now();
    let mut rng = Rng::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let disk = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(
        &disk.path().join("relay"),
        &disk.path().join("relay.log"),
        &relay_flags(),
    )
    .unwrap();
    let relay_addr = RelayAddress::new(relay.addr, relay.pin);
    let child_log = disk.path().join("alice.log");

    // Bob registers, stops, and comes back: his mailbox key is read from
    // his store while he is down.
    let (bob, bob_mailbox) = rt.block_on(async {
        let path = disk.path().join("bob.db");
        let key = StorageKey::new([7; 32]);
        let store = SqliteStore::open(&path, &key).unwrap();
        let bob = Messenger::create(store, relay_addr.clone()).await.unwrap();
        bob.close().await;
        let store = SqliteStore::open(&path, &key).unwrap();
        let mailbox = mailbox_key(&store);
        // Bob's identity, to open what the relay holds for him at the end.
        let unsealer = Device::open(SqliteStore::open(&path, &key).unwrap()).unwrap();
        (Messenger::open(store).await.unwrap(), (mailbox, unsealer))
    });
    let (bob_mailbox, bob_device) = bob_mailbox;
    bob.set_skip_acks(true);
    let bob = Arc::new(bob);
    let bob_addr = bob.address().to_string();
    let bob_log = Arc::new(Mutex::new(BobLog::default()));

    let mut m = Mount::new();
    let store = m.path().join("alice.db");
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    let key = hex::encode(key);

    // Registration, then at once the first cut: what `create` returned must be on disk.
    let mut alice = Alice::spawn(
        &store,
        &key,
        &child_log,
        &["create", &relay_addr.to_string()],
    );
    let line = alice.expect_line("address");
    let alice_addr: UserAddress = line.strip_prefix("ADDRESS ").unwrap().parse().unwrap();
    alice.kill();
    let mut reverted = m.cut();

    // Bob: events in, messages out, for the whole test.
    let (bob_events, bob_sends) = {
        let (b, log) = (bob.clone(), bob_log.clone());
        let events = rt.spawn(async move {
            loop {
                let e = b.next_event().await.unwrap();
                match &e.kind {
                    EventKind::Message(msg) | EventKind::MessageRequest(msg) => {
                        if matches!(e.kind, EventKind::MessageRequest(_)) {
                            b.accept_request(e.peer.as_ref().unwrap()).unwrap();
                        }
                        *log.lock().unwrap().got.entry(msg.text.clone()).or_default() += 1;
                    }
                    EventKind::DecryptFailed { reason } => {
                        log.lock().unwrap().failures.push(reason.clone())
                    }
                    _ => {}
                }
                b.ack_event(e.seq).unwrap();
            }
        });
        let (b, log, to) = (bob.clone(), bob_log.clone(), alice_addr.clone());
        let sends = rt.spawn(async move {
            for n in 0u64.. {
                let text = format!("b-{n}");
                b.send_text(&to, &text).unwrap();
                log.lock().unwrap().sent.push(text);
                tokio::time::sleep(Duration::from_millis(SEND_EVERY_MS * 3 / 2)).await;
            }
        });
        (events, sends)
    };

    let mut log = AliceLog::default();
    for run in 0..CUTS {
        let tag = format!("a{run}");
        let every = SEND_EVERY_MS.to_string();
        let mut alice = Alice::spawn(&store, &key, &child_log, &["run", &bob_addr, &tag, &every]);
        // One run in four is cut while starting up, the others mid-conversation.
        let early = rng.range(0, 4) == 0;
        let mut lines = Vec::new();
        if !early {
            lines.push(alice.expect_line("OPENED"));
        }
        let pause = if early {
            rng.range(0, 300)
        } else {
            rng.range(200, 2000)
        };
        std::thread::sleep(Duration::from_millis(pause));
        lines.extend(alice.kill());
        if let Some(e) = lines.iter().find(|l| l.starts_with("ERROR")) {
            panic!("Alice failed in run {run}: {e}");
        }
        log.runs.push(lines);
        reverted += m.cut();
    }

    // Bob stops sending; Alice runs once more, uncut, until both sides have
    // everything: all of Bob's messages shown, all of Alice's SENT at Bob.
    bob_sends.abort();
    let _ = rt.block_on(bob_sends);
    let bob_sent: HashSet<String> = bob_log.lock().unwrap().sent.iter().cloned().collect();
    let mut alice = Alice::spawn(&store, &key, &child_log, &["run", &bob_addr, "final", "0"]);
    log.runs.push(Vec::new());
    let mut missing = (usize::MAX, usize::MAX);
    let mut moved = Instant::now();
    while moved.elapsed() < STALL {
        while let Ok(l) = alice.lines.recv_timeout(Duration::from_millis(100)) {
            assert!(!l.starts_with("ERROR"), "Alice failed: {l}");
            log.runs.last_mut().unwrap().push(l);
        }
        let shown = log.shown();
        let got = bob_log.lock().unwrap().got.clone();
        let now = (
            bob_sent.iter().filter(|t| !shown.contains_key(*t)).count(),
            log.sent().iter().filter(|t| !got.contains_key(*t)).count(),
        );
        if now == (0, 0) {
            break;
        }
        if now != missing {
            (missing, moved) = (now, Instant::now());
        }
    }
    let tail = alice.kill();
    log.runs.last_mut().unwrap().extend(tail);
    bob_events.abort();

    // Shown exactly once, and never again after its ack.
    let shown = log.shown();
    let mut acked_before: HashMap<u64, usize> = HashMap::new();
    let mut reshown_after_ack = Vec::new();
    let mut shown_seqs: HashSet<(usize, u64)> = HashSet::new();
    let mut twice_in_a_run = Vec::new();
    for (run, l) in log.lines() {
        if let Some(seq) = l.strip_prefix("ACK ") {
            acked_before.entry(seq.parse().unwrap()).or_insert(run);
        }
        if let Some(rest) = l.strip_prefix("MSG ") {
            let seq: u64 = rest.split(' ').next().unwrap().parse().unwrap();
            if acked_before.contains_key(&seq) {
                reshown_after_ack.push(l.to_owned());
            }
            if !shown_seqs.insert((run, seq)) {
                twice_in_a_run.push(l.to_owned());
            }
        }
    }
    let mut two_events = Vec::new();
    let mut unknown = Vec::new();
    let mut replays = 0;
    for (text, showings) in &shown {
        let firsts: HashSet<(&str, u64)> = showings
            .iter()
            .map(|(id, seq, _)| (id.as_str(), *seq))
            .collect();
        if firsts.len() > 1 {
            two_events.push(format!("{text}: {firsts:?}"));
        }
        replays += showings.len() - 1;
        if !bob_sent.contains(text) {
            unknown.push(text.clone());
        }
    }
    let alice_failures: Vec<&str> = log
        .lines()
        .filter(|(_, l)| l.starts_with("FAIL "))
        .map(|(_, l)| l)
        .collect();

    // Bob: each of Alice's messages shown once; no decrypt failures.
    let b = bob_log.lock().unwrap();
    let twice_at_bob: Vec<_> = b.got.iter().filter(|(_, n)| **n > 1).collect();
    let sent = log.sent();

    // No (ratchet key, N) with two ciphertexts in Bob's mailbox.
    let envelopes: Vec<Vec<u8>> = rt
        .block_on(fetch_all(&relay, &bob_mailbox))
        .into_iter()
        .map(|(_, payload)| payload)
        .collect();
    let mut by_header: HashMap<[u8; 40], HashSet<[u8; 32]>> = HashMap::new();
    for (h, digest) in headers(&bob_device, &envelopes) {
        by_header.entry(h).or_default().insert(digest);
    }
    let reused_keys = by_header.values().filter(|d| d.len() > 1).count();

    let lost_at_alice = bob_sent.iter().filter(|t| !shown.contains_key(*t)).count();
    let lost_at_bob = sent.iter().filter(|t| !b.got.contains_key(*t)).count();
    let stats = m.fs.stats();
    writeln!(
        std::io::stderr(),
        "client power cuts: cuts={} alice_runs={} alice_sent_confirmed={} bob_received={} \
         bob_sent={} alice_shown={} replayed_unacked_events={} shown_under_two_events={} \
         reshown_after_ack={} lost_at_alice={} lost_at_bob={} envelopes_at_relay={} \
         message_keys={} keys_reused={} decrypt_failures={} inodes_reverted={} fsyncs={} \
         dir_fsyncs={} seconds={:.1}",
        stats.cuts,
        log.runs.len(),
        sent.len(),
        b.got.len(),
        bob_sent.len(),
        shown.len(),
        replays,
        two_events.len(),
        reshown_after_ack.len(),
        lost_at_alice,
        lost_at_bob,
        envelopes.len(),
        by_header.len(),
        reused_keys,
        alice_failures.len() + b.failures.len(),
        reverted,
        stats.fsyncs,
        stats.dir_fsyncs,
        started.elapsed().as_secs_f64()
    )
    .unwrap();
    assert!(stats.cuts > CUTS as u64);
    assert!(
        sent.len() > 100 && bob_sent.len() > 100,
        "the conversation did not run: {} sent by Alice, {} by Bob",
        sent.len(),
        bob_sent.len()
    );
    assert!(reverted > 0, "no cut threw anything away");
    assert_eq!(lost_at_alice, 0, "Bob's messages never shown by Alice");
    assert_eq!(lost_at_bob, 0, "Alice's sent messages never shown by Bob");
    assert!(two_events.is_empty(), "shown as two events: {two_events:?}");
    assert!(
        twice_in_a_run.is_empty(),
        "one event shown twice: {twice_in_a_run:?}"
    );
    assert!(
        unknown.is_empty(),
        "Alice showed what Bob never sent: {unknown:?}"
    );
    assert!(
        reshown_after_ack.is_empty(),
        "shown after its ack: {reshown_after_ack:?}"
    );
    assert!(
        twice_at_bob.is_empty(),
        "Bob showed twice: {twice_at_bob:?}"
    );
    assert_eq!(reused_keys, 0, "message keys used for two ciphertexts");
    assert!(
        alice_failures.is_empty(),
        "Alice's decrypt failures: {alice_failures:?}"
    );
    assert!(
        b.failures.is_empty(),
        "Bob's decrypt failures: {:?}",
        b.failures
    );
}
