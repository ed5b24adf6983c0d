//! Abuse limits that a stranger cannot reset or route around, as real relay
//! processes over loopback QUIC: send rates held per key and per source
//! address across reconnects, and the mailbox share of senders without the
//! owner's delivery token, which survives a kill -9.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{key, RelayProc};
use sotto_relay::wire::ErrorCode;
use sotto_relay::{MailboxId, RelayError};

fn code(e: &RelayError) -> ErrorCode {
    e.remote_code()
        .unwrap_or_else(|| panic!("expected a relay refusal, got {e:?}"))
}

fn mailbox() -> MailboxId {
    MailboxId(key().verifying_key().to_bytes())
}

/// Sends `n` one-byte envelopes to fresh mailboxes; returns how many were
/// accepted, asserting every refusal is `RATE_LIMITED`.
async fn accepted(c: &sotto_relay::RelayClient, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        match c.send(&mailbox(), vec![1]).await {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(code(&e), ErrorCode::RateLimited),
        }
    }
    ok
}

/// The attack: 3 connections x burst 20 sent all 60. The bucket is
/// the key's, so reconnecting starts where the last connection left off.
#[tokio::test]
async fn reconnecting_does_not_reset_a_keys_send_rate() {
    let relay = RelayProc::start(&["--send-burst", "20", "--send-rate-per-sec", "0.01"]);
    let k = key();
    let mut total = 0;
    for _ in 0..3 {
        let c = relay.client(&k).await;
        total += accepted(&c, 20).await;
        c.close().await;
    }
    assert_eq!(total, 20, "one key's burst across three connections");
    // Another key has its own bucket.
    assert_eq!(accepted(&relay.client(&key()).await, 5).await, 5);
}

/// Keys are free: a source address cycling them shares one bucket.
#[tokio::test]
async fn fresh_keys_from_one_address_share_its_send_rate() {
    let relay = RelayProc::start(&[
        "--source-send-burst",
        "30",
        "--source-send-rate-per-sec",
        "0.01",
    ]);
    let mut total = 0;
    for _ in 0..4 {
        total += accepted(&relay.client(&key()).await, 20).await;
    }
    assert_eq!(total, 30, "four fresh keys from one address");
}

/// A mailbox whose owner registered a delivery token keeps most of its
/// quota for the contacts who hold it: senders without it (any number of
/// fresh keys) share a small slice, a wrong token is refused as such, the
/// slice is still counted after a kill -9, and acking frees it.
#[tokio::test]
async fn strangers_cannot_fill_a_mailbox_its_contacts_still_reach() {
    let mut relay = RelayProc::start(&[
        "--mailbox-max-envelopes",
        "40",
        "--stranger-max-envelopes",
        "5",
    ]);
    let owner_key = key();
    let owner = relay.client(&owner_key).await;
    let token = [7u8; 32];
    owner.set_delivery_token(Some(&token)).await.unwrap();
    let inbox = owner.mailbox();
    drop(owner);

    // 20 strangers, one envelope each: 5 get in.
    let mut stored = 0;
    for _ in 0..20 {
        match relay.client(&key()).await.send(&inbox, vec![0xaa]).await {
            Ok(_) => stored += 1,
            Err(e) => assert_eq!(code(&e), ErrorCode::QuotaExceeded),
        }
    }
    assert_eq!(stored, 5);
    // A contact still has the rest of the quota.
    let contact = relay.client(&key()).await;
    for _ in 0..35 {
        contact
            .send_with_token(&inbox, vec![0xcc], Some(&token))
            .await
            .unwrap();
    }
    let e = contact
        .send_with_token(&inbox, vec![0xcc], Some(&token))
        .await
        .unwrap_err();
    assert_eq!(
        code(&e),
        ErrorCode::QuotaExceeded,
        "the whole quota is used"
    );
    // A guessed token is refused, not counted as a stranger's.
    let e = contact
        .send_with_token(&inbox, vec![0xdd], Some(&[8u8; 32]))
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::BadDeliveryToken);
    drop(contact);

    // After a kill -9 the strangers' slice is still full ...
    relay.kill9();
    relay.restart();
    let owner = relay.client(&owner_key).await;
    let page = owner.fetch(None, 100).await.unwrap();
    assert_eq!(page.envelopes.len(), 40);
    // ... until the owner acks a contact's envelope (which frees no
    // stranger's room) and then a stranger's.
    let contact_env = page.envelopes.iter().find(|e| e.payload == [0xcc]).unwrap();
    owner.ack(&[contact_env.id]).await.unwrap();
    let stranger = relay.client(&key()).await;
    let e = stranger.send(&inbox, vec![0xaa]).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::QuotaExceeded);
    let stranger_env = page.envelopes.iter().find(|e| e.payload == [0xaa]).unwrap();
    owner.ack(&[stranger_env.id]).await.unwrap();
    stranger.send(&inbox, vec![0xaa]).await.unwrap();

    // Clearing the token turns the split off: everyone is a contact again.
    owner.set_delivery_token(None).await.unwrap();
    stranger.send(&inbox, vec![0xab]).await.unwrap();
}

/// A mailbox that never registered a token has no strangers' slice (the
/// owner has not opted in), and a token sent to it is ignored.
#[tokio::test]
async fn without_a_verifier_every_sender_has_the_whole_quota() {
    let relay = RelayProc::start(&[
        "--mailbox-max-envelopes",
        "10",
        "--stranger-max-envelopes",
        "2",
    ]);
    let inbox = mailbox();
    for i in 0..10u8 {
        let c = relay.client(&key()).await;
        if i % 2 == 0 {
            c.send(&inbox, vec![i]).await.unwrap();
        } else {
            c.send_with_token(&inbox, vec![i], Some(&[i; 32]))
                .await
                .unwrap();
        }
    }
    let e = relay
        .client(&key())
        .await
        .send(&inbox, vec![0])
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::QuotaExceeded);
}
