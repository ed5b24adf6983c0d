//! Two users talk through a real relay process over loopback QUIC, on the
//! messenger client: session setup from relay-served bundles, ordered
//! delivery to an offline recipient, nothing left on the relay once read,
//! and no plaintext in the relay's RocksDB directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use rand_core::{OsRng, RngCore};
use sotto_core::{SqliteStore, StorageKey};
use sotto_e2e::{relay_binary, RelayProcess};
use sotto_messenger::{EventKind, Messenger, RelayAddress, UserAddress};

const WAIT: Duration = Duration::from_secs(30);

/// A user with an encrypted store on disk that can go offline and come back.
struct User {
    client: Option<Messenger<SqliteStore>>,
    dir: tempfile::TempDir,
    key: [u8; 32],
    addr: UserAddress,
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
            client: Some(client),
            dir,
            key,
            addr,
        }
    }

    fn c(&self) -> &Messenger<SqliteStore> {
        self.client.as_ref().unwrap()
    }

    async fn go_offline(&mut self) {
        if let Some(c) = self.client.take() {
            c.close().await;
        }
    }

    async fn come_back(&mut self) {
        let store =
            SqliteStore::open(self.dir.path().join("c.db"), &StorageKey::new(self.key)).unwrap();
        self.client = Some(Messenger::open(store).await.unwrap());
    }

    /// The next `n` chat messages, as (sender, text).
    async fn receive(&self, n: usize) -> Vec<(UserAddress, String)> {
        let mut out = Vec::new();
        while out.len() < n {
            let e = tokio::time::timeout(WAIT, self.c().next_event())
                .await
                .expect("message did not arrive")
                .unwrap();
            self.c().ack_event(e.seq).unwrap();
            match e.kind {
                EventKind::Message(m) => out.push((e.peer.unwrap(), m.text)),
                EventKind::MessageRequest(m) => {
                    let peer = e.peer.unwrap();
                    self.c().accept_request(&peer).unwrap();
                    out.push((peer, m.text));
                }
                EventKind::DecryptFailed { reason } => panic!("decrypt failed: {reason}"),
                _ => {}
            }
        }
        out
    }

    /// Messages arriving within `d` (none expected).
    async fn stray_messages(&self, d: Duration) -> usize {
        let mut n = 0;
        while let Ok(e) = tokio::time::timeout(d, self.c().next_event()).await {
            let e = e.unwrap();
            self.c().ack_event(e.seq).unwrap();
            n += usize::from(matches!(e.kind, EventKind::Message(_)));
        }
        n
    }
}

/// Waits until the relay holds no envelope at all (every one acknowledged).
async fn relay_queue_empties(relay: &RelayProcess) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let depth = relay.metrics_snapshot().unwrap().get("sotto_queue_depth");
        if depth == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{depth} envelopes never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_through_relay_decrypts_in_order() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let alice = User::join(&relay).await;
    let mut bob = User::join(&relay).await;

    // Bob is offline: three messages wait in his mailbox, then arrive in order.
    bob.go_offline().await;
    for i in 0..3u8 {
        alice.c().send_text(&bob.addr, &format!("m{i}")).unwrap();
    }
    alice.c().flush(WAIT).await.unwrap();
    bob.come_back().await;
    let got = bob.receive(3).await;
    let texts: Vec<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, vec!["m0", "m1", "m2"]);
    assert!(got.iter().all(|(from, _)| *from == alice.addr));
    // One safety number per pair, the same on both sides.
    assert_eq!(
        alice.c().safety_number(&bob.addr),
        bob.c().safety_number(&alice.addr)
    );

    // Acked envelopes are gone: the relay holds nothing, nothing is re-read.
    bob.c().wait_synced(WAIT).await.unwrap();
    bob.c().flush(WAIT).await.unwrap();
    relay_queue_empties(&relay).await;
    assert_eq!(bob.stray_messages(Duration::from_millis(300)).await, 0);

    // Reply (a DH ratchet step) and answer again.
    bob.c().send_text(&alice.addr, "reply").unwrap();
    assert_eq!(alice.receive(1).await[0].1, "reply");
    alice.c().send_text(&bob.addr, "again").unwrap();
    assert_eq!(bob.receive(1).await[0].1, "again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_disk_holds_no_plaintext() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let alice = User::join(&relay).await;
    let mut bob = User::join(&relay).await;
    let secret = "the eagle lands at midnight, bring the blue folder";
    // Not received: the ciphertext stays in the relay's store.
    bob.go_offline().await;
    alice.c().send_text(&bob.addr, secret).unwrap();
    alice.c().send_text(&bob.addr, secret).unwrap();
    alice.c().flush(WAIT).await.unwrap();
    assert!(
        !relay.disk_contains(&secret.as_bytes()[..16]).unwrap(),
        "plaintext found in the relay data dir"
    );
    // And Bob still reads both.
    bob.come_back().await;
    let got = bob.receive(2).await;
    assert!(got.iter().all(|(_, t)| t == secret));
}
