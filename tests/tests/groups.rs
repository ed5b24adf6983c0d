//! Group chats against real relay processes over loopback QUIC: members on
//! two relays, an invitation from a stranger, one ciphertext for every
//! member device, a member removed mid-conversation who reads nothing sent
//! after, and relay data directories that hold neither the group's name nor
//! a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use rand_core::{OsRng, RngCore};
use sotto_core::{SqliteStore, StorageKey};
use sotto_e2e::{relay_binary, RelayProcess};
use sotto_messenger::{
    DeliveryState, Event, EventKind, GroupChange, GroupEffect, GroupId, GroupStatus, Messenger,
    RelayAddress, UserAddress,
};

const WAIT: Duration = Duration::from_secs(30);

struct User {
    client: Messenger<SqliteStore>,
    addr: UserAddress,
    _dir: tempfile::TempDir,
}

impl User {
    async fn join(relay: &RelayProcess) -> User {
        let dir = tempfile::tempdir().unwrap();
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        let store = SqliteStore::open(dir.path().join("c.db"), &StorageKey::new(key)).unwrap();
        let client = Messenger::create(store, RelayAddress::new(relay.addr, relay.pin))
            .await
            .unwrap();
        let addr = client.address().clone();
        User {
            client,
            addr,
            _dir: dir,
        }
    }

    /// The next event `pick` keeps (others are acknowledged and skipped);
    /// a decrypt failure fails the test.
    async fn next<T>(&self, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        loop {
            let e = tokio::time::timeout(WAIT, self.client.next_event())
                .await
                .expect("event did not arrive")
                .unwrap();
            self.client.ack_event(e.seq).unwrap();
            if let EventKind::DecryptFailed { reason } = &e.kind {
                panic!("decrypt failed: {reason}");
            }
            if let Some(t) = pick(&e) {
                return t;
            }
        }
    }

    /// The next group message's (group, sender, text).
    async fn group_text(&self) -> (GroupId, UserAddress, String) {
        self.next(|e| match (&e.kind, e.group) {
            (EventKind::Message(m), Some(g)) => Some((g, e.peer.clone().unwrap(), m.text.clone())),
            _ => None,
        })
        .await
    }

    /// The next group change's (group, effect, changes).
    async fn group_change(&self) -> (GroupId, GroupEffect, Vec<GroupChange>) {
        self.next(|e| match (&e.kind, e.group) {
            (
                EventKind::GroupChanged {
                    effect, changes, ..
                },
                Some(g),
            ) => Some((g, *effect, changes.clone())),
            _ => None,
        })
        .await
    }

    /// Group messages arriving within `d` (none expected), and failures.
    async fn stray(&self, d: Duration) -> usize {
        let mut n = 0;
        while let Ok(e) = tokio::time::timeout(d, self.client.next_event()).await {
            let e = e.unwrap();
            self.client.ack_event(e.seq).unwrap();
            n += usize::from(matches!(e.kind, EventKind::Message(_)) && e.group.is_some());
        }
        n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_across_two_relays_and_a_removed_member_reads_nothing_after() {
    let home = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let other = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let alice = User::join(&home).await;
    let bob = User::join(&home).await;
    let carol = User::join(&other).await;
    let name = "the blue folder society 7f3a";

    let id = alice
        .client
        .create_group(name, &[bob.addr.clone(), carol.addr.clone()])
        .unwrap();
    // Alice is a stranger to both: the group is an invitation (a request).
    for u in [&bob, &carol] {
        let (g, effect, changes) = u.group_change().await;
        assert_eq!((g, effect), (id, GroupEffect::Invitation));
        assert!(changes.contains(&GroupChange::Renamed(name.into())));
        assert_eq!(
            u.client.group(id).unwrap().unwrap().status,
            GroupStatus::Invitation
        );
        u.client.accept_group(id).unwrap();
    }
    let members = alice.client.group(id).unwrap().unwrap().state.members;
    assert_eq!(members.len(), 3);
    assert_eq!(
        bob.client.group(id).unwrap().unwrap().state.members,
        members
    );
    assert_eq!(
        carol.client.group(id).unwrap().unwrap().state.members,
        members
    );

    let secret = "meet at the old mill, 9pm, bring the blue folder";
    let sent = alice.client.send_group_text(id, secret).unwrap();
    for u in [&bob, &carol] {
        assert_eq!(
            u.group_text().await,
            (id, alice.addr.clone(), secret.into())
        );
    }
    // Delivered to both members (their receipts travel pairwise), then read
    // by one of them: "read by 1 of 2".
    bob.client.mark_read(&alice.addr, &[sent]).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let by_user = alice.client.delivery_by_user(&sent).unwrap();
        let read = by_user
            .values()
            .filter(|s| **s == DeliveryState::Read)
            .count();
        let delivered = by_user
            .values()
            .filter(|s| **s >= DeliveryState::Delivered)
            .count();
        if read == 1 && delivered == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "receipts: {by_user:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Carol (on the other relay) answers: her sender key reaches Alice and
    // Bob first, then her one ciphertext.
    carol.client.send_group_text(id, "on my way").unwrap();
    for u in [&alice, &bob] {
        assert_eq!(
            u.group_text().await,
            (id, carol.addr.clone(), "on my way".into())
        );
    }

    // Alice removes Carol mid-conversation.
    alice.client.remove_group_member(id, &carol.addr).unwrap();
    let (_, effect, _) = bob.group_change().await;
    assert_eq!(effect, GroupEffect::Applied);
    let (_, effect, _) = carol.group_change().await;
    assert_eq!(effect, GroupEffect::RemovedYou);
    assert_eq!(
        carol.client.group(id).unwrap().unwrap().status,
        GroupStatus::Left
    );
    assert!(carol.client.send_group_text(id, "still here?").is_err());

    alice
        .client
        .send_group_text(id, "after carol left")
        .unwrap();
    bob.client.send_group_text(id, "bob after too").unwrap();
    assert_eq!(bob.group_text().await.2, "after carol left");
    assert_eq!(alice.group_text().await.2, "bob after too");
    assert_eq!(carol.stray(Duration::from_millis(500)).await, 0);

    // Neither relay's disk holds the group's name or a message.
    alice.client.flush(WAIT).await.unwrap();
    bob.client.flush(WAIT).await.unwrap();
    for relay in [&home, &other] {
        assert!(
            !relay.disk_contains(name.as_bytes()).unwrap(),
            "group name on a relay"
        );
        assert!(
            !relay.disk_contains(&secret.as_bytes()[..16]).unwrap(),
            "plaintext on a relay"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_linked_after_joining_gets_the_group_and_its_messages() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let alice = User::join(&relay).await;
    let bob = User::join(&relay).await;
    // Contacts first (so Bob's new device list reaches Alice at once).
    alice.client.send_text(&bob.addr, "hi").unwrap();
    bob.next(|e| match &e.kind {
        EventKind::MessageRequest(_) => Some(()),
        _ => None,
    })
    .await;
    bob.client.accept_request(&alice.addr).unwrap();
    let id = alice
        .client
        .create_group("the late laptop", std::slice::from_ref(&bob.addr))
        .unwrap();
    let (g, effect, _) = bob.group_change().await;
    assert_eq!((g, effect), (id, GroupEffect::Applied));

    // Bob links a laptop: both screens show the same digits.
    let dir = tempfile::tempdir().unwrap();
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    let store = SqliteStore::open(dir.path().join("c.db"), &StorageKey::new(key)).unwrap();
    let mut linking =
        sotto_messenger::Linking::start(store, RelayAddress::new(relay.addr, relay.pin))
            .await
            .unwrap();
    let code = linking.code();
    let mut pending = bob.client.link_device(&code).await.unwrap();
    let digits = linking.wait_offer(WAIT).await.unwrap();
    assert_eq!(digits, pending.wait_digits(WAIT).await.unwrap());
    bob.client.confirm_link(pending).await.unwrap();
    let laptop = User {
        client: linking.finish(WAIT).await.unwrap(),
        addr: bob.addr.clone(),
        _dir: dir,
    };
    // The laptop gets the group from Bob's phone...
    let (g, _, _) = laptop.group_change().await;
    assert_eq!(g, id);
    assert_eq!(
        laptop.client.group(id).unwrap().unwrap().state,
        bob.client.group(id).unwrap().unwrap().state
    );
    // ...and, once Alice has Bob's new list, her messages.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        alice.client.send_group_text(id, "hello laptop").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), laptop.group_text()).await;
        if let Ok((g, from, text)) = got {
            assert_eq!(
                (g, from, text.as_str()),
                (id, alice.addr.clone(), "hello laptop")
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the laptop never got a group message"
        );
    }
}

/// Alice removes Carol and her process dies at once (the client dropped
/// with nothing flushed, before the change or any message left): the
/// removal and the end of Alice's sending chain were one commit, so after a
/// restart the change still goes out, Alice's next message is under a chain
/// Carol never gets, and Carol's mailbox receives no group message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_a_removal_never_lets_the_removed_member_read_on() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    let open = |key: [u8; 32]| {
        SqliteStore::open(dir.path().join("alice.db"), &StorageKey::new(key)).unwrap()
    };
    let alice = Messenger::create(open(key), RelayAddress::new(relay.addr, relay.pin))
        .await
        .unwrap();
    let bob = User::join(&relay).await;
    let carol = User::join(&relay).await;
    let id = alice
        .create_group("the crash test", &[bob.addr.clone(), carol.addr.clone()])
        .unwrap();
    for u in [&bob, &carol] {
        u.group_change().await;
        u.client.accept_group(id).unwrap();
    }
    alice.send_group_text(id, "before").unwrap();
    for u in [&bob, &carol] {
        assert_eq!(u.group_text().await.2, "before");
    }

    alice.remove_group_member(id, &carol.addr).unwrap();
    drop(alice);
    let alice = Messenger::open(open(key)).await.unwrap();
    assert!(!alice
        .group(id)
        .unwrap()
        .unwrap()
        .state
        .members
        .contains_key(&carol.addr.user));
    let (_, effect, _) = bob.group_change().await;
    assert_eq!(effect, GroupEffect::Applied);
    let (_, effect, _) = carol.group_change().await;
    assert_eq!(effect, GroupEffect::RemovedYou);
    alice.send_group_text(id, "after the crash").unwrap();
    assert_eq!(bob.group_text().await.2, "after the crash");
    assert_eq!(carol.stray(Duration::from_millis(500)).await, 0);
}

/// Alice sets the group's avatar (an encrypted attachment on her relay);
/// Carol, a member who is nobody's contact, downloads it, and downloads the
/// file Bob (not her contact either) sends to the group; no relay's disk
/// holds either in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_avatar_and_files_reach_members_who_are_not_contacts() {
    let home = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let other = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let alice = User::join(&home).await;
    let bob = User::join(&other).await;
    let carol = User::join(&home).await;
    let id = alice
        .client
        .create_group("pictures", &[bob.addr.clone(), carol.addr.clone()])
        .unwrap();
    for u in [&bob, &carol] {
        u.group_change().await;
        u.client.accept_group(id).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut image = vec![0u8; 20_000];
    OsRng.fill_bytes(&mut image);
    image[..16].copy_from_slice(b"AVATAR-PLAINTEXT");
    let path = dir.path().join("avatar.png");
    std::fs::write(&path, &image).unwrap();
    alice
        .client
        .set_group_avatar(id, Some(&path))
        .await
        .unwrap();
    for u in [&bob, &carol] {
        let (_, _, changes) = u.group_change().await;
        assert_eq!(changes, vec![GroupChange::AvatarChanged]);
    }
    let got = dir.path().join("carol-avatar.png");
    let size = carol.client.download_group_avatar(id, &got).await.unwrap();
    assert_eq!(size, image.len() as u64);
    assert_eq!(std::fs::read(&got).unwrap(), image);
    assert_eq!(
        carol.client.group_avatar(id).unwrap().unwrap().file_name,
        "avatar.png"
    );

    let mut file = vec![0u8; 50_000];
    OsRng.fill_bytes(&mut file);
    file[..14].copy_from_slice(b"FILE-PLAINTEXT");
    let file_path = dir.path().join("notes.bin");
    std::fs::write(&file_path, &file).unwrap();
    bob.client
        .send_group_file(id, "the notes", &file_path)
        .await
        .unwrap();
    let att = carol
        .next(|e| match (&e.kind, e.group) {
            (EventKind::Message(m), Some(g)) if g == id => m.attachments.first().cloned(),
            _ => None,
        })
        .await;
    let dest = dir.path().join("carol-notes.bin");
    carol
        .client
        .download_attachment(&bob.addr, &att, &dest)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), file);
    for relay in [&home, &other] {
        assert!(!relay.disk_contains(b"AVATAR-PLAINTEXT").unwrap());
        assert!(!relay.disk_contains(b"FILE-PLAINTEXT").unwrap());
    }
}
