//! Two users talk through a real relay process over loopback QUIC: session
//! setup from relay-served bundles, ordered delivery, offline recipients, and
//! no plaintext in the relay's RocksDB directory afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sotto_e2e::{relay_binary, RelayProcess, ScriptedUser};

async fn two_users(relay: &RelayProcess) -> (ScriptedUser, ScriptedUser) {
    let a = ScriptedUser::join("alice", relay.addr, relay.pin, 1)
        .await
        .unwrap();
    let b = ScriptedUser::join("bob", relay.addr, relay.pin, 1)
        .await
        .unwrap();
    (a, b)
}

#[tokio::test]
async fn conversation_through_relay_decrypts_in_order() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let (mut alice, mut bob) = two_users(&relay).await;
    let (ac, bc) = (alice.card(), bob.card());
    assert_eq!(alice.safety_number(&bc), bob.safety_number(&ac));

    // Bob is "offline": three messages wait in his mailbox, then arrive in order.
    for i in 0..3u8 {
        alice.send(&bc, &[b'm', i]).await.unwrap();
    }
    let got = bob.receive().await.unwrap();
    let texts: Vec<Vec<u8>> = got.iter().map(|r| r.text.clone()).collect();
    assert_eq!(
        texts,
        vec![b"m\0".to_vec(), b"m\x01".to_vec(), b"m\x02".to_vec()]
    );
    assert!(got.iter().all(|r| r.from == ac.identity));

    // Acked envelopes are gone: a second fetch is empty.
    assert!(bob.receive().await.unwrap().is_empty());

    // Reply (a DH ratchet step) and answer again.
    bob.send(&ac, b"reply").await.unwrap();
    assert_eq!(alice.receive().await.unwrap()[0].text, b"reply");
    alice.send(&bc, b"again").await.unwrap();
    assert_eq!(bob.receive().await.unwrap()[0].text, b"again");
}

#[tokio::test]
async fn relay_disk_holds_no_plaintext() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let (mut alice, mut bob) = two_users(&relay).await;
    let bc = bob.card();
    let secret = b"the eagle lands at midnight, bring the blue folder";
    // Not received: the ciphertext stays in the relay's store.
    alice.send(&bc, secret).await.unwrap();
    alice.send(&bc, secret).await.unwrap();
    assert!(
        !relay.disk_contains(&secret[..16]).unwrap(),
        "plaintext found in the relay data dir"
    );
    // And Bob still reads both.
    let got = bob.receive().await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|r| r.text == secret));
}
