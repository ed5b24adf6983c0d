//! The messenger client end to end: real `sotto-relay` processes over
//! loopback QUIC with RocksDB in temp dirs, clients on encrypted SQLite
//! stores. Each test is one of the situations the client promises to survive:
//! two relays, offline recipients, crashes between receive and ack, a relay
//! killed with SIGKILL, devices linked and unlinked mid-conversation, a
//! corrupted session, a 50 MiB attachment, and a relay disk without plaintext.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use sotto_core::{SqliteStore, StorageKey, Store, Table, Txn};
use sotto_e2e::{relay_binary, RelayProcess};
use sotto_messenger::Linking;
use sotto_messenger::{
    DeliveryState, Event, EventKind, LiveEvent, MessageId, Messenger, Presence, ReceivedMessage,
    RelayAddress, UserAddress,
};

/// Generous: a relay killed with SIGKILL is noticed by QUIC keep-alives or
/// by the outbox's per-item timeout (20 s), then reconnection backs off.
const WAIT: Duration = Duration::from_secs(60);

/// A user's device with its encrypted store on disk, which can "crash"
/// (drop the client without any cleanup) and come back.
struct Dev {
    client: Option<Messenger<SqliteStore>>,
    dir: tempfile::TempDir,
    key: [u8; 32],
    address: UserAddress,
}

impl Dev {
    fn store(dir: &tempfile::TempDir, key: [u8; 32]) -> SqliteStore {
        SqliteStore::open(dir.path().join("client.db"), &StorageKey::new(key)).unwrap()
    }

    fn fresh() -> (tempfile::TempDir, [u8; 32], SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        let store = Self::store(&dir, key);
        (dir, key, store)
    }

    async fn create(relay: &RelayProcess) -> Dev {
        let (dir, key, store) = Self::fresh();
        let client = Messenger::create(store, relay_address(relay))
            .await
            .unwrap();
        Dev {
            address: client.address().clone(),
            client: Some(client),
            dir,
            key,
        }
    }

    fn c(&self) -> &Messenger<SqliteStore> {
        self.client.as_ref().unwrap()
    }

    fn addr(&self) -> UserAddress {
        self.c().address().clone()
    }

    /// The address, also while the client is down.
    fn addr_of_closed(&self) -> UserAddress {
        self.address.clone()
    }

    /// Drops the client abruptly (no flush, no close): a crash.
    fn crash(&mut self) {
        self.client = None;
    }

    async fn reopen(&mut self) {
        self.client = None;
        let store = Self::store(&self.dir, self.key);
        self.client = Some(Messenger::open(store).await.unwrap());
    }
}

fn relay_address(r: &RelayProcess) -> RelayAddress {
    RelayAddress::new(r.addr, r.pin)
}

/// The next event (acknowledged), failing the test after `WAIT`.
async fn next(c: &Messenger<SqliteStore>) -> Event {
    let e = tokio::time::timeout(WAIT, c.next_event())
        .await
        .expect("no event in time")
        .unwrap();
    c.ack_event(e.seq).unwrap();
    e
}

/// The next chat message, skipping (but checking) other events. A message
/// request (a first message from a stranger) is accepted, as a user would.
async fn next_message(c: &Messenger<SqliteStore>) -> (UserAddress, ReceivedMessage) {
    loop {
        let e = next(c).await;
        match e.kind {
            EventKind::Message(m) => return (e.peer.unwrap(), m),
            EventKind::MessageRequest(m) => {
                let peer = e.peer.unwrap();
                c.accept_request(&peer).unwrap();
                return (peer, m);
            }
            EventKind::DecryptFailed { reason } => panic!("decrypt failed: {reason}"),
            _ => {}
        }
    }
}

/// Every event that arrives within `d` (acknowledged).
async fn drain_for(c: &Messenger<SqliteStore>, d: Duration) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(e) = tokio::time::timeout(d, c.next_event()).await {
        let e = e.unwrap();
        c.ack_event(e.seq).unwrap();
        out.push(e);
    }
    out
}

async fn wait_state(c: &Messenger<SqliteStore>, id: &MessageId, want: DeliveryState) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let states = c.delivery(id).unwrap();
        if !states.is_empty() && states.iter().all(|(_, s)| *s >= want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{want:?} not reached: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn say(from: &Dev, to: &Dev, text: &str) {
    from.c().send_text(&to.addr(), text).unwrap();
    let (peer, m) = next_message(to.c()).await;
    assert_eq!(peer, from.addr());
    assert_eq!(m.text, text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_on_one_relay_with_receipts() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let alice = Dev::create(&relay).await;
    let bob = Dev::create(&relay).await;

    let id = alice.c().send_text(&bob.addr(), "hello Bob").unwrap();
    let (peer, m) = next_message(bob.c()).await;
    assert_eq!(
        (peer, m.text.as_str(), m.id),
        (alice.addr(), "hello Bob", id)
    );
    wait_state(alice.c(), &id, DeliveryState::Delivered).await;
    bob.c().mark_read(&alice.addr(), &[id]).unwrap();
    wait_state(alice.c(), &id, DeliveryState::Read).await;

    say(&bob, &alice, "hi Alice").await;
    say(&alice, &bob, "how are you?").await;
    // One safety number per pair of users, the same on both sides.
    assert_eq!(
        alice.c().safety_number(&bob.addr()).digits(),
        bob.c().safety_number(&alice.addr()).digits()
    );
    alice.c().mark_verified(&bob.addr()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_on_two_relays() {
    let r1 = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let r2 = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let alice = Dev::create(&r1).await;
    let bob = Dev::create(&r2).await;
    assert_ne!(alice.addr().relay, bob.addr().relay);
    say(&alice, &bob, "across relays").await;
    say(&bob, &alice, "and back").await;
    say(&alice, &bob, "again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_recipient_gets_everything_in_order() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let alice = Dev::create(&relay).await;
    let mut bob = Dev::create(&relay).await;
    let bob_addr = bob.addr();
    bob.crash();
    for i in 0..5 {
        alice.c().send_text(&bob_addr, &format!("m{i}")).unwrap();
    }
    alice.c().flush(WAIT).await.unwrap();
    bob.reopen().await;
    for i in 0..5 {
        assert_eq!(next_message(bob.c()).await.1.text, format!("m{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_receive_and_ack_loses_nothing_and_shows_nothing_twice() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let alice = Dev::create(&relay).await;
    let mut bob = Dev::create(&relay).await;
    say(&alice, &bob, "warm up").await;

    // Bob commits the message but "crashes" before acking it to the relay,
    // and before the app acknowledged the event.
    bob.c().set_skip_acks(true);
    let id = alice.c().send_text(&bob.addr(), "exactly once").unwrap();
    let first = tokio::time::timeout(WAIT, bob.c().next_event())
        .await
        .unwrap()
        .unwrap();
    let EventKind::Message(m) = &first.kind else {
        panic!("expected the message, got {first:?}")
    };
    assert_eq!(m.id, id);
    bob.crash();

    // After the restart the relay redelivers the envelope: it is recognised
    // and acknowledged quietly; the app sees the same event (same seq) once.
    bob.reopen().await;
    bob.c().wait_synced(WAIT).await.unwrap();
    let again = next(bob.c()).await;
    assert_eq!(again.seq, first.seq);
    assert_eq!(again.kind, first.kind);
    let rest = drain_for(bob.c(), Duration::from_secs(2)).await;
    assert!(
        rest.iter().all(|e| !matches!(
            e.kind,
            EventKind::Message(_) | EventKind::DecryptFailed { .. }
        )),
        "{rest:?}"
    );
    // And the conversation goes on.
    say(&alice, &bob, "still fine").await;
    say(&bob, &alice, "yes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_mid_conversation() {
    let mut relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let alice = Dev::create(&relay).await;
    let bob = Dev::create(&relay).await;
    say(&alice, &bob, "before").await;
    relay.restart(&relay_binary()).unwrap();
    // Sent while the relay restarts: queued, retried, delivered in order.
    for i in 0..5 {
        alice
            .c()
            .send_text(&bob.addr(), &format!("after {i}"))
            .unwrap();
    }
    for i in 0..5 {
        assert_eq!(next_message(bob.c()).await.1.text, format!("after {i}"));
    }
    say(&bob, &alice, "reply after restart").await;
}

async fn link(existing: &Dev, relay: &RelayProcess) -> Dev {
    let (dir, key, store) = Dev::fresh();
    let mut linking = Linking::start(store, relay_address(relay)).await.unwrap();
    let code = linking.code();
    let mut pending = existing.c().link_device(&code).await.unwrap();
    let digits = linking.wait_offer(WAIT).await.unwrap();
    assert_eq!(
        digits,
        pending.wait_digits(WAIT).await.unwrap(),
        "both screens show the same digits"
    );
    let id = existing.c().confirm_link(pending).await.unwrap();
    let client = linking.finish(WAIT).await.unwrap();
    assert_eq!(client.device_id(), id);
    assert_eq!(client.address(), existing.c().address());
    Dev {
        address: client.address().clone(),
        client: Some(client),
        dir,
        key,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_device_joins_and_unlinked_device_stops_reading() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let alice = Dev::create(&relay).await;
    let bob1 = Dev::create(&relay).await;
    say(&alice, &bob1, "one device").await;

    let bob2 = link(&bob1, &relay).await;
    assert_eq!(bob1.c().devices().await.unwrap().devices.len(), 2);
    // Alice's next message reaches both of Bob's devices.
    alice.c().send_text(&bob1.addr(), "two devices").unwrap();
    assert_eq!(next_message(bob1.c()).await.1.text, "two devices");
    assert_eq!(next_message(bob2.c()).await.1.text, "two devices");
    let events = drain_for(alice.c(), Duration::from_millis(500)).await;
    let new_device_seen = events
        .iter()
        .any(|e| e.kind == EventKind::NewDevice && e.peer_device == 2);
    // Bob writes from device 1; device 2 sees the copy.
    bob1.c().send_text(&alice.addr(), "from bob1").unwrap();
    assert_eq!(next_message(alice.c()).await.1.text, "from bob1");
    loop {
        if let EventKind::SentFromOtherDevice { to, message } = next(bob2.c()).await.kind {
            assert_eq!((to, message.text.as_str()), (alice.addr(), "from bob1"));
            break;
        }
    }
    // Alice was told about the new device; one safety number per user.
    assert!(new_device_seen, "no NewDevice event");
    assert_eq!(
        bob2.c().safety_number(&alice.addr()).digits(),
        alice.c().safety_number(&bob1.addr()).digits()
    );

    // Unlinked, device 2 no longer receives what Alice sends.
    bob1.c().unlink_device(2).await.unwrap();
    alice.c().send_text(&bob1.addr(), "after unlink").unwrap();
    assert_eq!(next_message(bob1.c()).await.1.text, "after unlink");
    let leaked = drain_for(bob2.c(), Duration::from_secs(2)).await;
    assert!(
        leaked
            .iter()
            .all(|e| !matches!(e.kind, EventKind::Message(_))),
        "unlinked device read: {leaked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_session_heals_and_the_message_arrives() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let alice = Dev::create(&relay).await;
    let mut bob = Dev::create(&relay).await;
    say(&alice, &bob, "before").await;
    say(&bob, &alice, "ack").await;

    // Bob loses every session (a damaged store), while he is down.
    bob.crash();
    Dev::store(&bob.dir, bob.key)
        .transaction(|tx| {
            for t in [Table::Session, Table::SessionIndex] {
                for k in tx.keys_with_prefix(t, b"")? {
                    tx.delete(t, &k)?;
                }
            }
            Ok::<_, sotto_core::Error>(())
        })
        .unwrap();
    bob.reopen().await;

    let id = alice.c().send_text(&bob.addr(), "after damage").unwrap();
    // Bob is told, asks for a retry over a fresh session, and gets it.
    let mut saw_failure = false;
    let text = loop {
        let e = next(bob.c()).await;
        match e.kind {
            EventKind::DecryptFailed { .. } => saw_failure = true,
            EventKind::Message(m) => {
                assert_eq!(m.id, id);
                break m.text;
            }
            _ => {}
        }
    };
    assert!(saw_failure);
    assert_eq!(text, "after damage");
    let events = drain_for(alice.c(), Duration::from_millis(500)).await;
    assert!(
        events.iter().any(|e| e.kind == EventKind::SessionReset),
        "{events:?}"
    );
    say(&bob, &alice, "healed").await;
    say(&alice, &bob, "indeed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_attachment() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let alice = Dev::create(&relay).await;
    let bob = Dev::create(&relay).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..50 {
            OsRng.fill_bytes(&mut chunk);
            f.write_all(&chunk).unwrap();
        }
    }
    alice
        .c()
        .send_file(&bob.addr(), "the file", &src)
        .await
        .unwrap();
    let (from, m) = next_message(bob.c()).await;
    assert_eq!(m.attachments.len(), 1);
    assert_eq!(m.attachments[0].size, 50 << 20);
    assert_eq!(m.attachments[0].file_name, "big.bin");
    let dest = dir.path().join("received.bin");
    // The app may keep the reference (it holds the key) and download later.
    let kept = sotto_messenger::AttachmentRef::from_bytes(&m.attachments[0].to_bytes()).unwrap();
    assert_eq!(kept, m.attachments[0]);
    let n = bob
        .c()
        .download_attachment(&from, &kept, &dest)
        .await
        .unwrap();
    assert_eq!(n, 50 << 20);
    let (mut a, mut b) = (
        std::fs::File::open(&src).unwrap(),
        std::fs::File::open(&dest).unwrap(),
    );
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for _ in 0..50 {
        a.read_exact(&mut x).unwrap();
        b.read_exact(&mut y).unwrap();
        assert!(x == y, "attachment differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_disk_holds_none_of_the_conversation() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let alice = Dev::create(&relay).await;
    let mut bob = Dev::create(&relay).await;
    let secret = "meet me by the old lighthouse at nine";
    say(&alice, &bob, secret).await;
    // Some waiting in the mailbox too.
    let bob_addr = bob.addr();
    bob.crash();
    alice.c().send_text(&bob_addr, secret).unwrap();
    alice.c().flush(WAIT).await.unwrap();
    for needle in [&secret.as_bytes()[..12], &secret.as_bytes()[12..24]] {
        assert!(
            !relay.disk_contains(needle).unwrap(),
            "plaintext on the relay's disk"
        );
    }
    bob.reopen().await;
    assert_eq!(next_message(bob.c()).await.1.text, secret);
}

/// Sealed sender (PROTOCOL.md I.14): Alice (home relay A) writes to Bob
/// (home relay B), who is offline, so her envelopes wait on B's disk. B has
/// never held anything of Alice's but those envelopes: its disk, its
/// debug-level log and its metrics hold neither her account key nor her
/// mailbox's id, raw or in hex (before sealing, every envelope carried the
/// first in the clear, and her first message her certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recipients_relay_stores_no_sender_identity() {
    let home_a = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let home_b = RelayProcess::start_logging(&relay_binary(), &[], "debug").unwrap();
    let alice = Dev::create(&home_a).await;
    let mut bob = Dev::create(&home_b).await;
    let bob_addr = bob.addr();
    bob.crash();
    for i in 0..3 {
        alice
            .c()
            .send_text(&bob_addr, &format!("sealed {i}"))
            .unwrap();
    }
    alice.c().flush(WAIT).await.unwrap();
    let account = alice.addr().user;
    let (mailbox, _) = alice
        .c()
        .connection_identities(&relay_address(&home_a))
        .await
        .unwrap();
    let metrics = home_b.metrics_text().unwrap();
    for (what, id) in [("account key", account), ("mailbox id", mailbox.0)] {
        let hex = hex::encode(id);
        assert!(
            !home_b.disk_contains(&id).unwrap() && !home_b.disk_contains(hex.as_bytes()).unwrap(),
            "the sender's {what} is on the recipient relay's disk or log"
        );
        assert!(
            !metrics.contains(&hex),
            "the sender's {what} is in the metrics"
        );
    }
    // Bob reads them all, from whoever the seal says inside.
    bob.reopen().await;
    for i in 0..3 {
        let (from, m) = next_message(bob.c()).await;
        assert_eq!((from, m.text), (alice.addr(), format!("sealed {i}")));
    }
}

/// What a device sends leaves on a connection the relay cannot tie to it
/// (PROTOCOL.md III.8): authenticated with a key that is not the device's
/// mailbox key, and a new one after every reconnect; the conversation goes
/// on across reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_leave_on_connections_not_tied_to_the_sender() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let alice = Dev::create(&relay).await;
    let bob = Dev::create(&relay).await;
    say(&alice, &bob, "first").await;
    let home = relay_address(&relay);
    let (own, sending) = alice.c().connection_identities(&home).await.unwrap();
    assert_ne!(own, sending, "sent on the mailbox's own connection");
    alice.c().drop_connections(&home).await;
    say(&alice, &bob, "after a reconnect").await;
    let (own_again, sending_again) = alice.c().connection_identities(&home).await.unwrap();
    assert_eq!(own, own_again);
    assert_ne!(sending, sending_again, "a sending key used twice");
    assert_ne!(own, sending_again);
}

/// Asserts that events are only the delivery notices and receipts of
/// messages sent: nothing a live signal could have left.
fn only_bookkeeping(events: Vec<Event>) {
    for e in events {
        assert!(
            matches!(
                e.kind,
                EventKind::Delivery { .. } | EventKind::Receipt { .. }
            ),
            "{e:?}"
        );
    }
}

/// The next live event, failing the test after `within`.
async fn next_live(events: &mut sotto_messenger::LiveEvents, within: Duration) -> LiveEvent {
    tokio::time::timeout(within, events.next())
        .await
        .expect("no live event in time")
        .expect("messenger closed")
}

/// Presence and typing between two users on two relays (PROTOCOL.md
/// III.14): asked for, answered, kept by heartbeats, typing shown and
/// stopped, and "offline" at once when the contact closes its client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_typing_reach_a_watching_contact_and_nobody_else() {
    let (relay_a, relay_b) = (
        RelayProcess::start(&relay_binary(), &[]).unwrap(),
        RelayProcess::start(&relay_binary(), &[]).unwrap(),
    );
    let alice = Dev::create(&relay_a).await;
    let mut bob = Dev::create(&relay_b).await;
    say(&alice, &bob, "hi").await;
    bob.c().accept_request(&alice.addr()).unwrap();
    say(&bob, &alice, "hello").await; // sessions established both ways
    alice.c().wait_synced(WAIT).await.unwrap();
    bob.c().wait_synced(WAIT).await.unwrap();

    // Bob hides his presence from Alice: her ask goes unanswered, and
    // nothing tells her she is hidden from.
    let mut alice_live = alice.c().live_events();
    bob.c().share_presence_with(&alice.addr(), false).unwrap();
    alice.c().watch_presence(&bob.addr()).unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), alice_live.next())
            .await
            .is_err(),
        "an answer from a contact hiding its presence"
    );
    assert_eq!(alice.c().presence(&bob.addr()), Presence::Unknown);
    bob.c().share_presence_with(&alice.addr(), true).unwrap();
    alice.c().unwatch_presence(&bob.addr());

    // Alice opens Bob's conversation: Bob answers, she sees him online.
    alice.c().watch_presence(&bob.addr()).unwrap();
    assert_eq!(
        next_live(&mut alice_live, WAIT).await,
        LiveEvent::Presence {
            user: bob.addr(),
            presence: Presence::Online
        }
    );
    // Bob types: Alice watches him, so she sees it (and the stop).
    bob.c().set_typing(&alice.addr(), true).unwrap();
    assert_eq!(
        next_live(&mut alice_live, WAIT).await,
        LiveEvent::Typing {
            user: bob.addr(),
            typing: true
        }
    );
    assert!(alice.c().is_typing(&bob.addr()));
    bob.c().set_typing(&alice.addr(), false).unwrap();
    assert_eq!(
        next_live(&mut alice_live, WAIT).await,
        LiveEvent::Typing {
            user: bob.addr(),
            typing: false
        }
    );
    // Bob does not watch Alice: her typing goes nowhere.
    let mut bob_live = bob.c().live_events();
    alice.c().set_typing(&bob.addr(), true).unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), bob_live.next())
            .await
            .is_err(),
        "typing reached a contact that does not watch"
    );

    // Bob closes his client: she sees "offline" at once.
    let closed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    bob.client.take().unwrap().close().await;
    match next_live(&mut alice_live, Duration::from_secs(10)).await {
        LiveEvent::Presence {
            user,
            presence: Presence::Offline { last_seen_ms },
        } => {
            assert_eq!(user, bob.addr_of_closed());
            assert!(
                last_seen_ms + 5_000 >= closed_at,
                "last seen {last_seen_ms}"
            );
        }
        other => panic!("expected offline, got {other:?}"),
    }
    // No durable trace of any of it: no event for the app either side.
    assert!(drain_for(alice.c(), Duration::from_millis(500))
        .await
        .is_empty());
    bob.reopen().await;
    only_bookkeeping(drain_for(bob.c(), Duration::from_secs(2)).await);
    assert_eq!(alice.c().live_refused(), 0);
    assert_eq!(bob.c().live_refused(), 0);
}

/// An ephemeral envelope for a device that is offline is gone: the relay
/// drops it, stores nothing, and the device never gets it later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_signal_to_an_offline_device_is_never_delivered_later() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let alice = Dev::create(&relay).await;
    let mut bob = Dev::create(&relay).await;
    say(&alice, &bob, "hi").await;
    bob.c().accept_request(&alice.addr()).unwrap();
    say(&bob, &alice, "hello").await;
    bob.c().wait_synced(WAIT).await.unwrap();
    // Bob watches Alice (so her typing goes to him), then crashes.
    bob.c().watch_presence(&alice.addr()).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while bob.c().presence(&alice.addr()) != Presence::Online {
        assert!(tokio::time::Instant::now() < deadline, "never online");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = relay.metrics_snapshot().unwrap();
    bob.crash();
    tokio::time::sleep(Duration::from_millis(500)).await;
    alice.c().set_typing(&bob.addr_of_closed(), true).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = relay.metrics_snapshot().unwrap();
        // Dropped, or handed to the dead client's subscription (the relay
        // notices a killed client only at the QUIC idle timeout): gone.
        let taken = now.delta(&before, "sotto_ephemeral_dropped_total")
            + now.delta(&before, "sotto_ephemeral_delivered_total");
        if taken >= 1 {
            assert_eq!(now.delta(&before, "sotto_envelopes_accepted_total"), 0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bob.reopen().await;
    bob.c().wait_synced(WAIT).await.unwrap();
    let mut bob_live = bob.c().live_events();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), bob_live.next())
            .await
            .is_err(),
        "a live signal came back after the device was offline"
    );
    assert!(!bob.c().is_typing(&alice.addr()));
    only_bookkeeping(drain_for(bob.c(), Duration::from_secs(1)).await);
}

/// Called from another executor than Tokio, the client says so (a typed
/// error, `Fault::Caller`) instead of panicking inside quinn.
#[test]
fn outside_a_tokio_runtime_the_client_returns_an_error_not_a_panic() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let dir = tempfile::tempdir().unwrap();
    let store = Dev::store(&dir, [3; 32]);
    let relay = RelayAddress::new("127.0.0.1:9".parse().unwrap(), [0; 32]);
    let mut create = std::pin::pin!(Messenger::create(store, relay));
    let mut cx = Context::from_waker(Waker::noop());
    match create.as_mut().poll(&mut cx) {
        Poll::Ready(Err(e)) => {
            assert_eq!(e.fault(), sotto_messenger::Fault::Caller);
            assert!(e.to_string().contains("no Tokio runtime"), "{e}");
        }
        Poll::Ready(Ok(_)) => panic!("created without a runtime"),
        Poll::Pending => panic!("waited instead of refusing"),
    }
}
