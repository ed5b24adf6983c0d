//! Attacks, carried out against real clients through real relay processes
//! (loopback QUIC, RocksDB), each the way the security review performed it
//! on the code before the fix: a stranger posing as a known user with its
//! own X25519 key, a forged device of one's own user, a malformed receipt,
//! a flood of forged senders, a relay replaying an old device list, a
//! removed device trying to come back, a stranger's first message that
//! would make the client connect to the stranger's relay, an attachment
//! blob longer than its pointer, junk thrown at a device being linked, a
//! stranger filling a contact's mailbox so real messages are refused (and
//! a new contact's whole outbox stalls behind the refusal).
//! Every test fails on that code and passes on this one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::UdpSocket;
use std::time::Duration;

use prost::Message as _;
use rand_core::{OsRng, RngCore};
use sotto_core::{IdentityKeyPair, Padding, PrekeyBundle, Session, SqliteStore, StorageKey};
use sotto_e2e::attacker::{sealed, Attacker};
use sotto_e2e::{relay_binary, RelayProcess};
use sotto_messenger::Linking;
use sotto_messenger::{
    AccountKeyPair, DeviceCertificate, DeviceList, Event, EventKind, Messenger, RelayAddress,
    UserAddress,
};
use sotto_proto::client as pb;

const WAIT: Duration = Duration::from_secs(60);

struct Dev {
    client: Messenger<SqliteStore>,
    _dir: tempfile::TempDir,
}

fn store(dir: &tempfile::TempDir) -> SqliteStore {
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    SqliteStore::open(dir.path().join("client.db"), &StorageKey::new(key)).unwrap()
}

impl Dev {
    async fn create(relay: &RelayProcess) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let client = Messenger::create(store(&dir), addr(relay)).await.unwrap();
        Dev { client, _dir: dir }
    }

    fn c(&self) -> &Messenger<SqliteStore> {
        &self.client
    }

    fn addr(&self) -> UserAddress {
        self.client.address().clone()
    }

    /// This device's certificate, as any recipient of its first message sees it.
    fn certificate(&self) -> DeviceCertificate {
        *self.client.certificate()
    }
}

fn addr(r: &RelayProcess) -> RelayAddress {
    RelayAddress::new(r.addr, r.pin)
}

async fn next(c: &Messenger<SqliteStore>) -> Event {
    let e = tokio::time::timeout(WAIT, c.next_event())
        .await
        .expect("no event in time")
        .unwrap();
    c.ack_event(e.seq).unwrap();
    e
}

/// The next message (a request is accepted, as a user would).
async fn message(c: &Messenger<SqliteStore>) -> (UserAddress, String) {
    loop {
        let e = next(c).await;
        match e.kind {
            EventKind::Message(m) => return (e.peer.unwrap(), m.text),
            EventKind::MessageRequest(m) => {
                let peer = e.peer.unwrap();
                c.accept_request(&peer).unwrap();
                return (peer, m.text);
            }
            _ => {}
        }
    }
}

async fn drain_for(c: &Messenger<SqliteStore>, d: Duration) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(e) = tokio::time::timeout(d, c.next_event()).await {
        let e = e.unwrap();
        c.ack_event(e.seq).unwrap();
        out.push(e);
    }
    out
}

async fn say(from: &Dev, to: &Dev, text: &str) {
    from.c().send_text(&to.addr(), text).unwrap();
    let (peer, got) = message(to.c()).await;
    assert_eq!((peer, got.as_str()), (from.addr(), text));
}

fn is_message(e: &Event) -> bool {
    matches!(
        e.kind,
        EventKind::Message(_)
            | EventKind::MessageRequest(_)
            | EventKind::SentFromOtherDevice { .. }
    )
}

/// A UDP socket standing for a stranger's relay: it counts what reaches it.
struct Trap {
    sock: UdpSocket,
    relay: RelayAddress,
}

impl Trap {
    fn new() -> Trap {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let relay = RelayAddress::new(sock.local_addr().unwrap(), [0x55; 32]);
        Trap { sock, relay }
    }

    /// Datagrams received within `d`.
    fn datagrams(&self, d: Duration) -> usize {
        let deadline = std::time::Instant::now() + d;
        let mut n = 0;
        let mut buf = [0u8; 2048];
        while std::time::Instant::now() < deadline {
            if self.sock.recv_from(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    }
}

/// A PreKey message to `to`'s device 1 claiming `victim`'s device
/// `device`, made with the victim's genuine Ed25519 half and the
/// attacker's own X25519 half.
async fn impersonation(
    mallory: &Attacker,
    to: &UserAddress,
    victim_ed: &[u8; 32],
    victim: &[u8; 32],
    device: u32,
    cert: Option<&DeviceCertificate>,
    content: &pb::Content,
) -> (sotto_relay::MailboxId, Vec<u8>) {
    let forged = IdentityKeyPair::forged(victim_ed, &mut OsRng);
    let (bundle, mailbox): (PrekeyBundle, _) = mallory.bundle_of(to, 1).await.unwrap();
    let mut session = Session::initiate(&forged, &bundle, 0, &mut OsRng).unwrap();
    let m = session
        .encrypt(&content.encode_to_vec(), Padding::None, &mut OsRng)
        .unwrap();
    let to = *bundle.identity();
    (mailbox, sealed(&to, victim, device, cert, m.bytes, vec![]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_pose_as_a_known_user_with_its_own_x25519_key() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let alice = Dev::create(&relay).await;
    let bob = Dev::create(&relay).await;
    say(&alice, &bob, "hi Bob").await;
    say(&bob, &alice, "hi Alice").await;
    let mallory = Attacker::register(&relay).await.unwrap();
    let trap = Trap::new();
    let cert = alice.certificate();
    let alice_ed: [u8; 32] = cert.identity.as_bytes()[..32].try_into().unwrap();
    // Without a certificate, and with Alice's genuine (public) one.
    for cert in [None, Some(&cert)] {
        let content = mallory.text(&trap.relay, 1, "this is Alice, send money here");
        let (mailbox, payload) = impersonation(
            &mallory,
            &bob.addr(),
            &alice_ed,
            &alice.addr().user,
            1,
            cert,
            &content,
        )
        .await;
        mallory.send_raw(&mailbox, payload).await.unwrap();
    }
    let events = drain_for(bob.c(), Duration::from_secs(3)).await;
    assert!(!events.iter().any(is_message), "{events:?}");
    let failed = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::DecryptFailed { .. }))
        .count();
    assert_eq!(failed, 2, "{events:?}");
    // Bob answered nobody: nothing reached the relay Mallory named.
    assert_eq!(trap.datagrams(Duration::from_secs(2)), 0);
    // The real Alice is untouched.
    say(&alice, &bob, "still me").await;
    say(&bob, &alice, "still you").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_device_of_ones_own_user_cannot_inject_sent_copies() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let alice = Dev::create(&relay).await;
    let bob = Dev::create(&relay).await;
    say(&alice, &bob, "hi").await;
    let mallory = Attacker::register(&relay).await.unwrap();
    let bob_ed: [u8; 32] = bob.certificate().identity.as_bytes()[..32]
        .try_into()
        .unwrap();
    let sync = pb::Content {
        sender_relay: addr(&relay).to_string(),
        delivery_token: Vec::new(),
        body: Some(pb::content::Body::SentSync(pb::SentSync {
            recipient: alice.addr().to_string(),
            message: Some(pb::Message {
                id: vec![9; 16],
                sent_at_ms: 0,
                text: "I never wrote this".into(),
                attachments: vec![],
            }),
        })),
    };
    // Claiming Bob's own device 2, which does not exist.
    let (mailbox, payload) = impersonation(
        &mallory,
        &bob.addr(),
        &bob_ed,
        &bob.addr().user,
        2,
        None,
        &sync,
    )
    .await;
    mallory.send_raw(&mailbox, payload).await.unwrap();
    let events = drain_for(bob.c(), Duration::from_secs(3)).await;
    assert!(!events.iter().any(is_message), "{events:?}");
    assert!(events
        .iter()
        .any(|e| matches!(e.kind, EventKind::DecryptFailed { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_receipt_from_a_contact_never_jams_the_event_queue() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let bob = Dev::create(&relay).await;
    let mut mallory = Attacker::register(&relay).await.unwrap();
    // Bob writes first: Mallory is his contact.
    bob.c().send_text(&mallory.address(), "hello").unwrap();
    bob.c().flush(WAIT).await.unwrap();
    let receipt = pb::Content {
        sender_relay: mallory.relay.to_string(),
        delivery_token: Vec::new(),
        body: Some(pb::content::Body::Receipt(pb::Receipt {
            kind: 0,
            message_ids: vec![vec![1, 2, 3]],
        })),
    };
    mallory.send(&bob.addr(), 1, &receipt).await.unwrap();
    let after = mallory.text(&mallory.relay.clone(), 2, "after the bad receipt");
    mallory.send(&bob.addr(), 1, &after).await.unwrap();
    // The bad receipt is reported and acknowledged; the queue moves on.
    let mut saw_failure = false;
    loop {
        let e = next(bob.c()).await;
        match e.kind {
            EventKind::DecryptFailed { .. } => saw_failure = true,
            EventKind::Message(m) => {
                assert_eq!(m.text, "after the bad receipt");
                break;
            }
            _ => {}
        }
    }
    assert!(saw_failure);
    assert!(bob.c().try_next_event().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_failures_never_reset_a_session_or_block_the_outbox() {
    // A strangers' share above the 300 forgeries: this attack is about what
    // the client does with them, not about the relay refusing them.
    let relay =
        RelayProcess::start(&relay_binary(), &["--stranger-max-envelopes", "1000"]).unwrap();
    let alice = Dev::create(&relay).await;
    let bob = Dev::create(&relay).await;
    say(&alice, &bob, "hi").await;
    say(&bob, &alice, "hi").await;
    drain_for(alice.c(), Duration::from_millis(300)).await;
    let mallory = Attacker::register(&relay).await.unwrap();
    let list = mallory.devices_of(&bob.addr()).await.unwrap();
    let bob_mailbox = list.get(1).unwrap().mailbox;
    let bob_identity = list.get(1).unwrap().identity;
    // 300 envelopes that look like Alice's ratchet messages.
    for i in 0..300u32 {
        let mut junk = vec![0x11u8];
        let mut rest = [0u8; 72];
        OsRng.fill_bytes(&mut rest);
        junk.extend_from_slice(&rest[..32]);
        junk.extend_from_slice(&0u32.to_be_bytes());
        junk.extend_from_slice(&i.to_be_bytes());
        junk.extend_from_slice(&rest[32..]);
        let payload = sealed(
            &bob_identity,
            &alice.addr().user,
            1,
            None,
            junk,
            vec![0; 16],
        );
        mallory.send_raw(&bob_mailbox, payload).await.unwrap();
    }
    // Bob's conversation with Alice goes on at once, over the same session.
    say(&bob, &alice, "unaffected").await;
    let alice_events = drain_for(alice.c(), Duration::from_secs(3)).await;
    assert!(
        !alice_events
            .iter()
            .any(|e| e.kind == EventKind::SessionReset),
        "{alice_events:?}"
    );
    // Bob heard of the forgeries, in bounded number.
    let bob_events = drain_for(bob.c(), Duration::from_secs(3)).await;
    let failed = bob_events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::DecryptFailed { .. }))
        .count();
    assert!((1..=100).contains(&failed), "{failed} failure events");
    assert_eq!(bob.c().pending_outgoing().unwrap(), 0);
}

/// Copies a directory tree.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Waits until `dev` talks to its (restarted) relay again: a request on the
/// dead connection fails once and drops it, the next one reconnects.
async fn reconnected(dev: &Dev) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(3), dev.c().devices()).await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no reconnection");
    }
}

/// Links a second device to `primary`'s user.
async fn link(primary: &Dev, relay: &RelayProcess) -> Dev {
    let dir = tempfile::tempdir().unwrap();
    let mut linking = Linking::start(store(&dir), addr(relay)).await.unwrap();
    let mut pending = primary.c().link_device(&linking.code()).await.unwrap();
    let digits = linking.wait_offer(WAIT).await.unwrap();
    assert_eq!(digits, pending.wait_digits(WAIT).await.unwrap());
    primary.c().confirm_link(pending).await.unwrap();
    let client = linking.finish(WAIT).await.unwrap();
    Dev { client, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_replaying_an_old_device_list_cannot_bring_back_a_removed_device() {
    let bin = relay_binary();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("relay");
    std::fs::create_dir_all(&dir).unwrap();
    let mut relay = RelayProcess::spawn(&bin, &dir, &[]).unwrap();
    let alice = Dev::create(&relay).await;
    let bob = Dev::create(&relay).await;
    let laptop = link(&bob, &relay).await;
    say(&alice, &bob, "to both").await;
    let (_, text) = message(laptop.c()).await;
    assert_eq!(text, "to both");

    // The relay operator keeps a copy of today's state.
    let snapshot = data.path().join("snapshot");
    relay.kill().unwrap();
    copy_dir(&dir, &snapshot);
    relay.restart(&bin).unwrap();
    reconnected(&bob).await;

    // The laptop is stolen: Bob removes it. Alice learns the new list.
    bob.c().unlink_device(laptop.c().device_id()).await.unwrap();
    say(&alice, &bob, "after the theft").await;

    // The laptop, without the account key, cannot put itself back.
    assert!(matches!(
        laptop.c().link_device("link:00").await,
        Err(sotto_messenger::Error::NotPrimary)
    ));
    let mut list: DeviceList = laptop.c().devices().await.unwrap();
    assert!(list.get(laptop.c().device_id()).is_none());
    list.version += 1;
    // It can only sign with keys it has; the relay checks the account's.
    let mut forged = list.sign(&AccountKeyPair::generate(&mut OsRng));
    forged.user_key = bob.addr().user.to_vec();
    let conn = sotto_relay::RelayClient::connect(
        relay.addr,
        relay.pin,
        &ed25519_dalek::SigningKey::generate(&mut OsRng),
    )
    .await
    .unwrap();
    assert!(conn.publish_device_list(forged).await.is_err());

    // The relay is rolled back to the copy: it serves the old list again.
    let at = relay.addr;
    relay.kill().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    copy_dir(&snapshot, &dir);
    let _relay = RelayProcess::spawn_at(&bin, &dir, at, &[]).unwrap();
    alice
        .c()
        .send_text(&bob.addr(), "after the rollback")
        .unwrap();
    // Alice refuses the rolled-back list: the message fails, and the
    // removed laptop gets nothing.
    loop {
        let e = next(alice.c()).await;
        if let EventKind::SendFailed { reason, .. } = &e.kind {
            assert!(reason.contains("device list"), "{reason}");
            break;
        }
    }
    let leaked = drain_for(laptop.c(), Duration::from_secs(3)).await;
    assert!(!leaked.iter().any(is_message), "{leaked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_first_message_contacts_nothing_until_accepted() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let bob = Dev::create(&relay).await;
    let mut mallory = Attacker::register(&relay).await.unwrap();
    let trap = Trap::new();
    let mut hello = mallory.text(&trap.relay, 1, "hi, click this");
    // With an attachment, whose blob would sit on the stranger's relay.
    let pointer =
        sotto_core::attachment::encrypt(&b"bait"[..], std::io::sink(), &mut OsRng).unwrap();
    if let Some(pb::content::Body::Message(m)) = hello.body.as_mut() {
        m.attachments.push(pb::AttachmentRef {
            blob_id: vec![3; 32],
            pointer: pointer.to_bytes().to_vec(),
            file_name: "bait.jpg".into(),
        });
    }
    mallory.send(&bob.addr(), 1, &hello).await.unwrap();
    let e = next(bob.c()).await;
    let EventKind::MessageRequest(m) = &e.kind else {
        panic!("expected a message request, got {e:?}");
    };
    assert_eq!(m.text, "hi, click this");
    let dest = tempfile::tempdir().unwrap();
    assert!(matches!(
        bob.c()
            .download_attachment(
                e.peer.as_ref().unwrap(),
                &m.attachments[0],
                &dest.path().join("x")
            )
            .await,
        Err(sotto_messenger::Error::NotAccepted)
    ));
    // No receipt, no connection: not one datagram towards the stranger's relay.
    assert_eq!(trap.datagrams(Duration::from_secs(3)), 0);
    // Accepting is what lets the receipt go out (here, to the trap).
    bob.c().accept_request(e.peer.as_ref().unwrap()).unwrap();
    assert!(trap.datagrams(Duration::from_secs(5)) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attachment_blob_longer_than_its_pointer_is_refused_unread() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let bob = Dev::create(&relay).await;
    let mut mallory = Attacker::register(&relay).await.unwrap();
    bob.c().send_text(&mallory.address(), "hello").unwrap();
    bob.c().flush(WAIT).await.unwrap();
    // A genuine pointer for 10 bytes, and a blob of 4 MiB behind its id.
    let mut blob = Vec::new();
    let pointer =
        sotto_core::attachment::encrypt(&b"ten bytes!"[..], &mut blob, &mut OsRng).unwrap();
    blob.resize(4 << 20, 0xAA);
    let blob_id = mallory
        .conn
        .upload_blob(blob.len() as u64, blob.as_slice())
        .await
        .unwrap();
    let content = pb::Content {
        sender_relay: mallory.relay.to_string(),
        delivery_token: Vec::new(),
        body: Some(pb::content::Body::Message(pb::Message {
            id: vec![5; 16],
            sent_at_ms: 0,
            text: "a file".into(),
            attachments: vec![pb::AttachmentRef {
                blob_id: blob_id.0.to_vec(),
                pointer: pointer.to_bytes().to_vec(),
                file_name: "../../.bashrc".into(),
            }],
        })),
    };
    mallory.send(&bob.addr(), 1, &content).await.unwrap();
    let att = loop {
        let e = next(bob.c()).await;
        if let EventKind::Message(m) = e.kind {
            break m.attachments[0].clone();
        }
    };
    // The name is only a name.
    assert_eq!(att.file_name, "bashrc");
    let dest = tempfile::tempdir().unwrap();
    let path = dest.path().join("out");
    let err = bob
        .c()
        .download_attachment(&mallory.address(), &att, &path)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("length"), "{err}");
    assert!(!path.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linking_survives_junk_offers_and_grants() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let bob = Dev::create(&relay).await;
    let mallory = Attacker::register(&relay).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut linking = Linking::start(store(&dir), addr(&relay)).await.unwrap();
    let code = linking.code();
    // The code (and so the new device's mailbox) is on the screen: anyone
    // who sees it can write there. Offers that do not parse, a reveal and a
    // grant that opens with no key: all skipped.
    let mut mailbox = [0u8; 32];
    for (i, b) in mailbox.iter_mut().enumerate() {
        *b = u8::from_str_radix(&code[5 + 2 * i..7 + 2 * i], 16).unwrap();
    }
    let mailbox = sotto_relay::MailboxId(mailbox);
    for body in [
        pb::envelope::Body::LinkOffer(pb::LinkOffer {
            ephemeral: vec![1, 2, 3],
            device_id: 2,
            reply_to: vec![4; 32],
        }),
        pb::envelope::Body::LinkOffer(pb::LinkOffer {
            ephemeral: vec![0; 32],
            device_id: 2,
            reply_to: vec![4; 32],
        }),
        pb::envelope::Body::LinkReveal(pb::LinkReveal { nonce: vec![7; 32] }),
        pb::envelope::Body::LinkGrant(pb::LinkGrant {
            nonce: vec![0; 12],
            ciphertext: vec![7; 200],
        }),
    ] {
        let junk = pb::Envelope {
            version: 1,
            body: Some(body),
        };
        mallory
            .send_raw(&mailbox, junk.encode_to_vec())
            .await
            .unwrap();
    }
    let mut pending = bob.c().link_device(&code).await.unwrap();
    let digits = linking.wait_offer(WAIT).await.unwrap();
    assert_eq!(digits, pending.wait_digits(WAIT).await.unwrap());
    let id = bob.c().confirm_link(pending).await.unwrap();
    let laptop = linking.finish(WAIT).await.unwrap();
    assert_eq!(laptop.device_id(), id);
    assert_eq!(laptop.address(), bob.c().address());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_relay_of_one_contact_never_stalls_the_others() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let alice = Dev::create(&relay).await;
    let bob = Dev::create(&relay).await;
    say(&alice, &bob, "hi").await;
    say(&bob, &alice, "hi").await;
    // A contact whose relay never answers (or one that names such a relay).
    let trap = Trap::new();
    let mallory = UserAddress {
        user: AccountKeyPair::generate(&mut OsRng).public(),
        relay: trap.relay.clone(),
    };
    bob.c().send_text(&mallory, "into the void").unwrap();
    bob.c().send_text(&mallory, "and again").unwrap();
    // Bob's conversation with Alice goes on, in both directions.
    say(&bob, &alice, "after the stall").await;
    say(&alice, &bob, "still receiving").await;
    assert!(
        trap.datagrams(Duration::from_millis(200)) > 0 || bob.c().pending_outgoing().unwrap() >= 2
    );
}

/// The relay issue's mailbox attack, end to end: with Bob offline, a
/// stranger (any number of free keys) fills Bob's mailbox. Bob's contact
/// Alice still gets her message in, because she holds the delivery token
/// Bob's client handed her inside their conversation; the stranger gets
/// only the small share the relay keeps for senders without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_flooding_a_mailbox_cannot_keep_a_contacts_message_out() {
    let relay = RelayProcess::start(
        &relay_binary(),
        &[
            "--mailbox-max-envelopes",
            "40",
            "--stranger-max-envelopes",
            "10",
        ],
    )
    .unwrap();
    let alice = Dev::create(&relay).await;
    let bob_dir = tempfile::tempdir().unwrap();
    let bob_store =
        || SqliteStore::open(bob_dir.path().join("client.db"), &StorageKey::new([9; 32])).unwrap();
    let bob = Messenger::create(bob_store(), addr(&relay)).await.unwrap();
    let bob_addr = bob.address().clone();
    alice.c().send_text(&bob_addr, "hi").unwrap();
    assert_eq!(message(&bob).await.1, "hi");
    bob.send_text(&alice.addr(), "hi back").unwrap();
    assert_eq!(message(alice.c()).await.1, "hi back");
    bob.flush(WAIT).await.unwrap();
    bob.close().await;

    let mallory = Attacker::register(&relay).await.unwrap();
    let inbox = mallory.devices_of(&bob_addr).await.unwrap().devices[0].mailbox;
    let mut stored = 0;
    for i in 0..30u8 {
        // Fresh keys change nothing: the share is the mailbox's.
        let fresh;
        let sender = if i % 2 == 0 {
            &mallory
        } else {
            fresh = Attacker::register(&relay).await.unwrap();
            &fresh
        };
        if sender.send_raw(&inbox, vec![i; 64]).await.is_ok() {
            stored += 1;
        }
    }
    assert_eq!(stored, 10, "strangers hold only their share");

    // Carol, new to Bob, has no token: her first message waits for room,
    // but holds back nothing else she sends to that relay.
    let carol = Dev::create(&relay).await;
    carol.c().send_text(&bob_addr, "hello Bob").unwrap();
    carol.c().send_text(&alice.addr(), "hello Alice").unwrap();
    assert_eq!(
        message(alice.c()).await,
        (carol.addr(), "hello Alice".to_owned())
    );
    // Only the message to Bob is left (her token announcement to her own
    // devices, none yet, may take a moment to leave the outbox).
    let deadline = tokio::time::Instant::now() + WAIT;
    while carol.c().pending_outgoing().unwrap() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox never settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(carol.c().pending_outgoing().unwrap(), 1);

    alice.c().send_text(&bob_addr, "through the flood").unwrap();
    alice.c().flush(WAIT).await.unwrap();
    let bob = Messenger::open(bob_store()).await.unwrap();
    assert_eq!(
        message(&bob).await,
        (alice.addr(), "through the flood".to_owned())
    );
    // Bob drains the flood; Carol's message gets in after all.
    assert_eq!(message(&bob).await, (carol.addr(), "hello Bob".to_owned()));
    bob.close().await;
}

/// Blocking a contact revokes the delivery token it held (PROTOCOL.md
/// Part II §4, III.6): the relay refuses that token from then on, on any
/// connection (here one authenticated with a fresh key, as the messenger
/// sends), while the contacts still accepted get the new one and it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_contacts_delivery_token_is_refused_and_the_others_get_a_new_one() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let (alice, bob, carol) = (
        Dev::create(&relay).await,
        Dev::create(&relay).await,
        Dev::create(&relay).await,
    );
    for other in [&alice, &carol] {
        say(other, &bob, "hi bob").await;
        say(&bob, other, "hi").await;
    }
    let old = alice
        .c()
        .held_delivery_token(&bob.addr(), 1)
        .expect("Alice holds Bob's token");
    assert_eq!(carol.c().held_delivery_token(&bob.addr(), 1), Some(old));

    bob.c().block(&alice.addr()).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let new = loop {
        // Carol reads Bob's announcement of the new token.
        let _ = drain_for(carol.c(), Duration::from_millis(100)).await;
        match carol.c().held_delivery_token(&bob.addr(), 1) {
            Some(t) if t != old => break t,
            _ => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "no new token");
    };

    let inbox = Attacker::register(&relay)
        .await
        .unwrap()
        .devices_of(&bob.addr())
        .await
        .unwrap()
        .devices[0]
        .mailbox;
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let anonymous = sotto_relay::RelayClient::connect(
        relay.addr,
        relay.pin,
        &ed25519_dalek::SigningKey::from_bytes(&seed),
    )
    .await
    .unwrap();
    let refused = anonymous
        .send_with_token(&inbox, vec![1; 64], Some(&old))
        .await
        .unwrap_err();
    assert_eq!(
        refused.remote_code(),
        Some(sotto_relay::wire::ErrorCode::BadDeliveryToken)
    );
    anonymous
        .send_with_token(&inbox, vec![2; 64], Some(&new))
        .await
        .unwrap();
    // Live signals too: the old token reaches no live subscription.
    let r = anonymous
        .send_ephemeral(vec![(inbox, vec![3; 64], old)])
        .await
        .unwrap();
    assert_eq!(
        r[0].as_ref().unwrap_err().remote_code(),
        Some(sotto_relay::wire::ErrorCode::BadDeliveryToken)
    );
}
