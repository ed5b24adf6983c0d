//! End-to-end tests against a real `sotto-relay` process over loopback QUIC:
//! store and forward, push, limits, auth, prekeys, device lists, blobs,
//! webhook push, operability, malformed input and a kill -9 crash test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::{key, RelayProc};
use sotto_relay::client::connect_raw;
use sotto_relay::wire::{client_frame::Body as Req, ErrorCode, SignedDeviceList};
use sotto_relay::{frame, EnvelopeId, MailboxId, Pushed, RelayClient, RelayError};
use tokio::io::AsyncWriteExt;

const T: Duration = Duration::from_secs(10);

fn code(e: &RelayError) -> ErrorCode {
    e.remote_code()
        .unwrap_or_else(|| panic!("expected a relay refusal, got {e:?}"))
}

async fn next_push(sub: &mut sotto_relay::Subscription) -> Pushed {
    tokio::time::timeout(T, sub.next())
        .await
        .expect("push timed out")
        .unwrap()
        .expect("stream closed")
}

#[tokio::test]
async fn offline_delivery_is_fifo_ack_deletes_and_unacked_redelivers() {
    let relay = RelayProc::start(&[]);
    let (ka, kb) = (key(), key());
    let a = relay.client(&ka).await;
    let b_id = MailboxId(kb.verifying_key().to_bytes());
    let mut sent = Vec::new();
    for i in 0..5u8 {
        sent.push(a.send(&b_id, vec![i; 100 + usize::from(i)]).await.unwrap());
    }
    assert!(
        sent.windows(2).all(|w| w[0] < w[1]),
        "ids are time-sortable and increasing"
    );

    let b = relay.client(&kb).await;
    let page = b.fetch(None, 3).await.unwrap();
    assert!(page.more);
    let got: Vec<_> = page.envelopes.iter().map(|e| e.id).collect();
    assert_eq!(got, sent[..3]);
    assert_eq!(page.envelopes[1].payload, vec![1u8; 101]);
    let rest = b.fetch(Some(got[2]), 10).await.unwrap();
    assert!(!rest.more);
    assert_eq!(
        rest.envelopes.iter().map(|e| e.id).collect::<Vec<_>>(),
        sent[3..]
    );

    assert_eq!(b.ack(&sent[..3]).await.unwrap(), 3);
    assert_eq!(
        b.ack(&sent[..3]).await.unwrap(),
        0,
        "second ack finds nothing"
    );
    b.close().await;

    // Reconnect: the unacked two come back, the acked three never do.
    let b = relay.client(&kb).await;
    let page = b.fetch(None, 10).await.unwrap();
    assert_eq!(
        page.envelopes.iter().map(|e| e.id).collect::<Vec<_>>(),
        sent[3..]
    );
    assert_eq!(b.ack(&sent[3..]).await.unwrap(), 2);
    assert!(b.fetch(None, 10).await.unwrap().envelopes.is_empty());
}

/// What a new connection's subscription delivers before `QueueEmpty`.
async fn backlog_on_a_new_subscription(
    relay: &RelayProc,
    k: &ed25519_dalek::SigningKey,
) -> Vec<EnvelopeId> {
    let c = relay.client(k).await;
    let mut sub = c.subscribe().await.unwrap();
    let mut ids = Vec::new();
    loop {
        match next_push(&mut sub).await {
            Pushed::Envelope(e) => ids.push(e.id),
            Pushed::QueueEmpty => return ids,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn live_push_in_order_and_redelivery_on_resubscribe() {
    let relay = RelayProc::start(&[]);
    let (ka, kb) = (key(), key());
    let a = relay.client(&ka).await;
    let b = relay.client(&kb).await;
    let mut sub = b.subscribe().await.unwrap();
    assert!(matches!(next_push(&mut sub).await, Pushed::QueueEmpty));
    let mut sent = Vec::new();
    for i in 0..20u8 {
        sent.push(a.send(&b.mailbox(), vec![i; 10]).await.unwrap());
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        match next_push(&mut sub).await {
            Pushed::Envelope(e) => {
                assert_eq!(e.payload, vec![u8::try_from(got.len()).unwrap(); 10]);
                got.push(e.id);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, sent);
    b.ack(&got[..10]).await.unwrap();
    b.close().await;

    let again = backlog_on_a_new_subscription(&relay, &kb).await;
    assert_eq!(again, sent[10..], "only unacked envelopes are redelivered");
}

/// Waits until a relay metric reaches `want`.
async fn metric_reaches(relay: &RelayProc, name: &str, want: u64) {
    let deadline = tokio::time::Instant::now() + T;
    while relay.metric(name).await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never reached {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn acks_on_the_push_stream_delete_and_bad_ones_stop_only_the_acks() {
    let relay = RelayProc::start(&[]);
    let (ka, kb) = (key(), key());
    let a = relay.client(&ka).await;
    let b = relay.client(&kb).await;
    let mut sub = b.subscribe().await.unwrap();
    let mut acks = sub.acks().unwrap();
    assert!(sub.acks().is_none(), "one ack half per subscription");
    assert!(matches!(next_push(&mut sub).await, Pushed::QueueEmpty));
    let mut sent = Vec::new();
    for i in 0..3u8 {
        sent.push(a.send(&b.mailbox(), vec![i; 8]).await.unwrap());
    }
    for want in &sent {
        let Pushed::Envelope(e) = next_push(&mut sub).await else {
            panic!("expected an envelope")
        };
        assert_eq!(&e.id, want);
    }
    // Two acked on the stream (no reply): gone from the queue.
    acks.ack(&sent[..2]).await.unwrap();
    metric_reaches(&relay, "sotto_queue_depth", 1).await;
    metric_reaches(&relay, "sotto_envelopes_acked_total", 2).await;

    // An over-long ack (1,001 ids) on the ack half: the relay stops reading
    // it and acks nothing of it; the pushes go on.
    let before = relay.metric("sotto_malformed_frames_total").await;
    acks.ack(&vec![sent[2]; 1001]).await.unwrap();
    metric_reaches(&relay, "sotto_malformed_frames_total", before + 1).await;
    let late = a.send(&b.mailbox(), b"late".to_vec()).await.unwrap();
    let Pushed::Envelope(e) = next_push(&mut sub).await else {
        panic!("expected an envelope")
    };
    assert_eq!(e.id, late);
    drop(sub);

    // A new subscription redelivers only what was not acked.
    let again = backlog_on_a_new_subscription(&relay, &kb).await;
    assert_eq!(again, vec![sent[2], late]);
}

#[tokio::test]
async fn a_new_subscription_replaces_the_previous_one() {
    let relay = RelayProc::start(&[]);
    let (ka, kb) = (key(), key());
    let a = relay.client(&ka).await;
    // The device reconnects before its old connection timed out.
    let old = relay.client(&kb).await;
    let mut first = old.subscribe().await.unwrap();
    assert!(matches!(next_push(&mut first).await, Pushed::QueueEmpty));
    let new = relay.client(&kb).await;
    let mut second = new.subscribe().await.unwrap();
    assert!(matches!(next_push(&mut second).await, Pushed::QueueEmpty));
    let ended = tokio::time::timeout(T, first.next())
        .await
        .expect("the replaced subscription was not closed");
    assert!(
        matches!(ended, Ok(None)),
        "replaced stream must end cleanly, got {ended:?}"
    );

    let id = a
        .send(&new.mailbox(), b"after reconnect".to_vec())
        .await
        .unwrap();
    match next_push(&mut second).await {
        Pushed::Envelope(e) => assert_eq!(e.id, id),
        other => panic!("unexpected {other:?}"),
    }

    // Subscribing again on the same connection replaces it too, and the
    // unacked envelope is redelivered to the newest subscription only.
    let mut third = new.subscribe().await.unwrap();
    match next_push(&mut third).await {
        Pushed::Envelope(e) => assert_eq!(e.id, id),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(next_push(&mut third).await, Pushed::QueueEmpty));
    let ended = tokio::time::timeout(T, second.next())
        .await
        .expect("the replaced subscription was not closed");
    assert!(matches!(ended, Ok(None)), "got {ended:?}");
    let id2 = a.send(&new.mailbox(), b"again".to_vec()).await.unwrap();
    match next_push(&mut third).await {
        Pushed::Envelope(e) => assert_eq!(e.id, id2),
        other => panic!("unexpected {other:?}"),
    }
    // The old connection still works for requests; only its push stream ended.
    assert_eq!(old.fetch(None, 10).await.unwrap().envelopes.len(), 2);
}

#[tokio::test]
async fn batch_send_fans_out_with_per_item_refusals() {
    let relay = RelayProc::start(&["--mailbox-max-envelopes", "1"]);
    let a = relay.client(&key()).await;
    let (k1, k2) = (key(), key());
    let (m1, m2) = (
        MailboxId(k1.verifying_key().to_bytes()),
        MailboxId(k2.verifying_key().to_bytes()),
    );
    let r = a
        .send_batch(vec![
            (m1, b"one".to_vec()),
            (m2, b"two".to_vec()),
            (m1, b"over".to_vec()),
        ])
        .await
        .unwrap();
    assert!(r[0].is_ok() && r[1].is_ok());
    assert_eq!(code(r[2].as_ref().unwrap_err()), ErrorCode::QuotaExceeded);
    let c2 = relay.client(&k2).await;
    assert_eq!(
        c2.fetch(None, 10).await.unwrap().envelopes[0].payload,
        b"two"
    );
}

#[tokio::test]
async fn every_limit_is_a_typed_refusal() {
    let relay = RelayProc::start(&[
        "--max-envelope-bytes",
        "1000",
        "--mailbox-max-envelopes",
        "3",
        "--send-burst",
        "8",
        "--send-rate-per-sec",
        "0.01",
    ]);
    let a = relay.client(&key()).await;
    let b = MailboxId(key().verifying_key().to_bytes());
    let e = a.send(&b, vec![0; 1001]).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::EnvelopeTooLarge);
    for _ in 0..3 {
        a.send(&b, vec![0; 1000]).await.unwrap();
    }
    assert_eq!(
        code(&a.send(&b, vec![1]).await.unwrap_err()),
        ErrorCode::QuotaExceeded
    );
    // 4 sends used so far (the oversize one was refused before the rate check); 4 left.
    for _ in 0..4 {
        a.send(&MailboxId(key().verifying_key().to_bytes()), vec![2])
            .await
            .unwrap();
    }
    let e = a
        .send(&MailboxId(key().verifying_key().to_bytes()), vec![3])
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::RateLimited);
    // Other keys are unaffected by this one's rate limit.
    let c = relay.client(&key()).await;
    c.send(&MailboxId(key().verifying_key().to_bytes()), vec![4])
        .await
        .unwrap();
}

#[tokio::test]
async fn expiry_of_envelopes_and_blobs() {
    let relay = RelayProc::start(&[
        "--envelope-ttl-secs",
        "1",
        "--blob-ttl-secs",
        "1",
        "--sweep-interval-secs",
        "1",
    ]);
    let (ka, kb) = (key(), key());
    let a = relay.client(&ka).await;
    let b = relay.client(&kb).await;
    a.send(&b.mailbox(), b"soon gone".to_vec()).await.unwrap();
    let blob = a.upload_blob(5, &b"hello"[..]).await.unwrap();
    assert_eq!(b.fetch(None, 10).await.unwrap().envelopes.len(), 1);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(b.fetch(None, 10).await.unwrap().envelopes.is_empty());
    assert_eq!(relay.metric("sotto_envelopes_expired_total").await, 1);
    let e = b.download_blob(&blob, 0, Vec::new()).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::NotFound);
}

/// Runs the auth exchange by hand so the test controls every field.
async fn begin(conn: &quinn::Connection) -> (quinn::SendStream, quinn::RecvStream, [u8; 32]) {
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    frame::write_frame(
        &mut s,
        &frame::client_frame(1, Req::AuthBegin(Default::default())),
    )
    .await
    .unwrap();
    let bytes = frame::read_frame(&mut r, 1 << 20).await.unwrap().unwrap();
    let Ok((_, sotto_relay::wire::server_frame::Body::AuthChallenge(c))) =
        frame::decode_server(&bytes)
    else {
        panic!("no challenge")
    };
    (s, r, c.nonce.try_into().unwrap())
}

async fn prove(
    s: &mut quinn::SendStream,
    r: &mut quinn::RecvStream,
    pk: [u8; 32],
    sig: [u8; 64],
) -> Result<(), RelayError> {
    let p = sotto_relay::wire::AuthProve {
        device_key: pk.to_vec(),
        signature: sig.to_vec(),
    };
    frame::write_frame(s, &frame::client_frame(2, Req::AuthProve(p))).await?;
    let bytes = frame::read_frame(r, 1 << 20)
        .await?
        .ok_or(RelayError::Truncated)?;
    frame::decode_server(&bytes).map(|_| ())
}

#[tokio::test]
async fn auth_failures_wrong_key_replay_and_foreign_mailbox() {
    let relay = RelayProc::start(&[]);
    let (k, other) = (key(), key());

    // Wrong key: signature by `other` claiming `k`'s mailbox.
    let (_ep, conn) = connect_raw(relay.addr, relay.pin).await.unwrap();
    let (mut s, mut r, nonce) = begin(&conn).await;
    let binding = sotto_relay::auth::channel_binding(&conn, &nonce).unwrap();
    let sig = sotto_relay::auth::sign(&other, &binding, &nonce);
    let e = prove(&mut s, &mut r, k.verifying_key().to_bytes(), sig)
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::AuthFailed);
    assert!(
        tokio::time::timeout(T, conn.closed()).await.is_ok(),
        "connection closed after failure"
    );

    // Replay: a valid proof from connection 1 presented on connection 2.
    let (_ep1, c1) = connect_raw(relay.addr, relay.pin).await.unwrap();
    let (mut s1, mut r1, n1) = begin(&c1).await;
    let sig1 = sotto_relay::auth::sign(
        &k,
        &sotto_relay::auth::channel_binding(&c1, &n1).unwrap(),
        &n1,
    );
    let (_ep2, c2) = connect_raw(relay.addr, relay.pin).await.unwrap();
    let (mut s2, mut r2, _n2) = begin(&c2).await;
    let e = prove(&mut s2, &mut r2, k.verifying_key().to_bytes(), sig1)
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::AuthFailed);
    // The genuine connection still succeeds with it, once.
    prove(&mut s1, &mut r1, k.verifying_key().to_bytes(), sig1)
        .await
        .unwrap();
    let client = RelayClient::authenticate(_ep1.clone(), c1.clone(), &k).await;
    assert_eq!(code(&client.unwrap_err()), ErrorCode::AlreadyAuthenticated);

    // Someone else's mailbox: C cannot see or ack B's envelopes.
    let (ka, kb, kc) = (key(), key(), key());
    let a = relay.client(&ka).await;
    let b = relay.client(&kb).await;
    let c = relay.client(&kc).await;
    let id = a.send(&b.mailbox(), b"for b only".to_vec()).await.unwrap();
    assert!(c.fetch(None, 10).await.unwrap().envelopes.is_empty());
    assert_eq!(c.ack(&[id]).await.unwrap(), 0);
    assert_eq!(b.fetch(None, 10).await.unwrap().envelopes[0].id, id);
}

#[tokio::test]
async fn malformed_frames_get_errors_and_others_carry_on() {
    let relay = RelayProc::start(&[]);
    let kb = key();
    let healthy = relay.client(&kb).await;
    let sender = relay.client(&key()).await;

    // Pre-auth: garbage, oversize prefix, unknown version, request before auth, truncated.
    let mut cases: Vec<Vec<u8>> = vec![
        b"\x00\x00\x00\x05garbage-that-is-not-protobuf".to_vec(),
        vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        {
            let mut f = frame::client_frame(1, Req::AuthBegin(Default::default()));
            f.version = 99;
            frame::encode(&f)
        },
        frame::encode(&frame::client_frame(
            1,
            Req::Send(sotto_relay::wire::Send {
                recipient: vec![0; 32],
                payload: vec![1],
                ..Default::default()
            }),
        )),
        vec![0, 0],
    ];
    cases.push(vec![0, 0, 0, 50, 1, 2, 3]);
    for bytes in cases {
        let (_ep, conn) = connect_raw(relay.addr, relay.pin).await.unwrap();
        let (mut s, mut r) = conn.open_bi().await.unwrap();
        s.write_all(&bytes).await.unwrap();
        s.finish().unwrap();
        // Either a typed error frame or a clean close; never a hang.
        let res = tokio::time::timeout(T, frame::read_frame(&mut r, 1 << 20))
            .await
            .expect("relay hung");
        if let Ok(Some(b)) = res {
            let e = frame::decode_server(&b).unwrap_err();
            assert!(e.remote_code().is_some(), "{e:?}");
        }
        assert!(tokio::time::timeout(T, conn.closed()).await.is_ok());
    }

    // Post-auth: a bad frame on one stream is answered; the connection lives on.
    for bytes in [
        vec![0xff, 0xff, 0xff, 0xff],
        b"\x00\x00\x00\x03abc".to_vec(),
        vec![0, 0, 0, 9, 1],
    ] {
        let (mut s, mut r) = healthy.connection().open_bi().await.unwrap();
        s.write_all(&bytes).await.unwrap();
        s.finish().unwrap();
        let b = frame::read_frame(&mut r, 1 << 20).await.unwrap().unwrap();
        assert!(frame::decode_server(&b)
            .unwrap_err()
            .remote_code()
            .is_some());
    }
    let id = sender
        .send(&healthy.mailbox(), b"still fine".to_vec())
        .await
        .unwrap();
    assert_eq!(healthy.fetch(None, 1).await.unwrap().envelopes[0].id, id);
    assert!(relay.metric("sotto_malformed_frames_total").await >= 5);
}

#[tokio::test]
async fn one_time_prekeys_are_handed_out_once_under_concurrency() {
    let relay = RelayProc::start(&[
        "--bundle-requester-burst",
        "1000",
        "--bundle-target-burst",
        "1000",
    ]);
    let owner_key = key();
    let owner = relay.client(&owner_key).await;
    let ec: Vec<_> = (0..40u32).map(|i| (i, vec![1, i as u8])).collect();
    let kem: Vec<_> = (100..130u32).map(|i| (i, vec![2, i as u8])).collect();
    let counts = owner
        .publish_prekeys(Some(b"signed-bundle".to_vec()), ec, kem)
        .await
        .unwrap();
    assert_eq!((counts.one_time_ec, counts.one_time_kem), (40, 30));
    let mut sub = owner.subscribe().await.unwrap();
    assert!(matches!(next_push(&mut sub).await, Pushed::QueueEmpty));

    let target = owner.mailbox();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let c = Arc::new(relay.client(&key()).await);
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..10 {
                got.push(c.fetch_bundle(&target).await.unwrap());
            }
            got
        }));
    }
    let mut ec_ids = Vec::new();
    let mut kem_ids = Vec::new();
    for t in tasks {
        for b in t.await.unwrap() {
            assert_eq!(b.signed_bundle, b"signed-bundle");
            ec_ids.extend(b.one_time_ec.map(|x| x.0));
            kem_ids.extend(b.one_time_kem.map(|x| x.0));
        }
    }
    let ec_set: HashSet<_> = ec_ids.iter().collect();
    let kem_set: HashSet<_> = kem_ids.iter().collect();
    assert_eq!(
        (ec_ids.len(), ec_set.len()),
        (40, 40),
        "each EC key exactly once"
    );
    assert_eq!(
        (kem_ids.len(), kem_set.len()),
        (30, 30),
        "each KEM key exactly once"
    );
    let c = owner.prekey_counts().await.unwrap();
    assert_eq!((c.one_time_ec, c.one_time_kem), (0, 0));
    // The owner was told it is running low.
    assert!(matches!(next_push(&mut sub).await, Pushed::PrekeysLow(_)));

    // Per-(requester) rate limit on another relay with a tiny burst.
    let relay2 = RelayProc::start(&["--bundle-requester-burst", "2"]);
    let o2 = relay2.client(&owner_key).await;
    o2.publish_prekeys(Some(b"b".to_vec()), vec![], vec![])
        .await
        .unwrap();
    let f = relay2.client(&key()).await;
    f.fetch_bundle(&o2.mailbox()).await.unwrap();
    f.fetch_bundle(&o2.mailbox()).await.unwrap();
    assert_eq!(
        code(&f.fetch_bundle(&o2.mailbox()).await.unwrap_err()),
        ErrorCode::RateLimited
    );
    let unknown = MailboxId([7; 32]);
    assert_eq!(
        code(&f.fetch_bundle(&unknown).await.unwrap_err()),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn device_lists_are_signed_and_versioned() {
    let relay = RelayProc::start(&[]);
    let c = relay.client(&key()).await;
    let identity = key();
    let uk = identity.verifying_key().to_bytes();
    let list = |v: u64, body: &[u8]| SignedDeviceList {
        user_key: uk.to_vec(),
        version: v,
        body: body.to_vec(),
        signature: sotto_relay::auth::sign_device_list(&identity, v, body).to_vec(),
    };
    assert!(c.fetch_device_list(&uk).await.unwrap().is_none());
    c.publish_device_list(list(1, b"devices v1")).await.unwrap();
    let got = c.fetch_device_list(&uk).await.unwrap().unwrap();
    assert_eq!((got.version, got.body.as_slice()), (1, &b"devices v1"[..]));
    assert_eq!(
        code(&c.publish_device_list(list(1, b"again")).await.unwrap_err()),
        ErrorCode::StaleVersion
    );
    let mut forged = list(2, b"evil");
    forged.body = b"evil!".to_vec();
    assert_eq!(
        code(&c.publish_device_list(forged).await.unwrap_err()),
        ErrorCode::BadSignature
    );
    // Another device of the same user (another connection) publishes v2.
    let d = relay.client(&key()).await;
    d.publish_device_list(list(2, b"devices v2")).await.unwrap();
    assert_eq!(c.fetch_device_list(&uk).await.unwrap().unwrap().version, 2);
    // Freezing the list at u64::MAX (or any jump past the step) is refused.
    for v in [u64::MAX, 2 + 1_001] {
        assert_eq!(
            code(&d.publish_device_list(list(v, b"frozen")).await.unwrap_err()),
            ErrorCode::InvalidArgument
        );
    }
    d.publish_device_list(list(2 + 1_000, b"v1002"))
        .await
        .unwrap();
}

#[tokio::test]
async fn blobs_stream_up_and_down_with_resume() {
    let relay = RelayProc::start(&["--max-blob-bytes", "1000000"]);
    let a = relay.client(&key()).await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let id = a.upload_blob(data.len() as u64, &data[..]).await.unwrap();
    let b = relay.client(&key()).await;
    let mut out = Vec::new();
    assert_eq!(b.download_blob(&id, 0, &mut out).await.unwrap(), 300_000);
    assert_eq!(out, data);
    let mut tail = Vec::new();
    b.download_blob(&id, 200_001, &mut tail).await.unwrap();
    assert_eq!(tail, data[200_001..]);
    let e = a
        .upload_blob(1_000_001, &vec![0u8; 1_000_001][..])
        .await
        .unwrap_err();
    assert!(
        e.remote_code() == Some(ErrorCode::BlobTooLarge)
            || matches!(e, RelayError::Io(_) | RelayError::Write(_))
    );
    let e = b
        .download_blob(&sotto_relay::BlobId([9; 32]), 0, Vec::new())
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::NotFound);
}

#[tokio::test]
async fn webhook_push_carries_only_the_token_and_coalesces() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    let n = s.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..p]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .unwrap()
                            .trim()
                            .parse()
                            .unwrap();
                        if buf.len() >= p + 4 + len {
                            tx.send(buf[p + 4..p + 4 + len].to_vec()).unwrap();
                            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                                .await
                                .unwrap();
                            return;
                        }
                    }
                    if n == 0 {
                        return;
                    }
                }
            });
        }
    });
    let relay = RelayProc::start(&["--webhook-url", &url, "--push-coalesce-ms", "300"]);
    let kb = key();
    let b = relay.client(&kb).await;
    b.register_push_token(b"opaque-token-123".to_vec())
        .await
        .unwrap();
    let b_id = b.mailbox();
    b.close().await;
    let a = relay.client(&key()).await;
    for i in 0..5u8 {
        a.send(&b_id, vec![i; 500]).await.unwrap();
    }
    let body = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert_eq!(body, b"opaque-token-123", "only the token, nothing else");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(rx.try_recv().is_err(), "a burst is coalesced into one call");

    // Online (subscribed) devices get no webhook.
    let b = relay.client(&kb).await;
    let _sub = b.subscribe().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.send(&b_id, b"live".to_vec()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn metrics_and_health_answer() {
    let relay = RelayProc::start(&[]);
    let (code_, body) = relay.http_get("/health").await;
    assert_eq!((code_, body.as_str()), (200, "ok\n"));
    let a = relay.client(&key()).await;
    a.send(&MailboxId([3; 32]), b"x".to_vec()).await.unwrap();
    assert_eq!(relay.metric("sotto_envelopes_accepted_total").await, 1);
    assert_eq!(relay.metric("sotto_queue_depth").await, 1);
    assert!(relay.metric("sotto_connections").await >= 1);
    let (_, body) = relay.http_get("/metrics").await;
    assert!(body.contains("sotto_send_seconds_bucket"));
    assert_eq!(relay.metric("sotto_udp_receive_drops_total").await, 0);
    assert!(
        !body.contains(&hex::encode([3u8; 32])),
        "no mailbox ids in metrics"
    );
    assert_eq!(relay.http_get("/nope").await.0, 404);
}

/// Envelopes the relay accepted: id -> (recipient index, payload).
type Accepted = Arc<std::sync::Mutex<HashMap<EnvelopeId, (usize, Vec<u8>)>>>;

/// Runs four senders for 1.5 s, kills the relay with SIGKILL, stops them and
/// the other `tasks`, and returns what the relay had accepted.
async fn load_then_kill9(
    relay: &mut RelayProc,
    rids: &[MailboxId],
    mut tasks: Vec<tokio::task::JoinHandle<()>>,
) -> HashMap<EnvelopeId, (usize, Vec<u8>)> {
    let accepted = Accepted::default();
    for s in 0..4usize {
        let c = relay.client(&key()).await;
        tasks.push(spawn_sender(c, s, rids.to_vec(), accepted.clone()));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    relay.kill9();
    // In-flight sends to the dead relay only end at the QUIC idle timeout;
    // no further reply can arrive, so stop waiting for them.
    for t in tasks {
        t.abort();
    }
    let accepted = accepted.lock().unwrap().clone();
    accepted
}

/// Every envelope stored for `recipients`: id -> (recipient index, payload).
async fn fetch_all(
    relay: &RelayProc,
    recipients: &[ed25519_dalek::SigningKey],
) -> HashMap<EnvelopeId, (usize, Vec<u8>)> {
    let mut all = HashMap::new();
    for (i, k) in recipients.iter().enumerate() {
        let c = relay.client(k).await;
        let mut cursor = None;
        loop {
            let page = c.fetch(cursor, 1000).await.unwrap();
            for e in &page.envelopes {
                all.insert(e.id, (i, e.payload.clone()));
            }
            cursor = page.envelopes.last().map(|e| e.id).or(cursor);
            if !page.more {
                break;
            }
        }
    }
    all
}

/// A sender keeping 16 sends in flight, round robin over `rids`, recording
/// each accepted envelope, until a send fails (the relay died).
fn spawn_sender(
    c: RelayClient,
    s: usize,
    rids: Vec<MailboxId>,
    acc: Accepted,
) -> tokio::task::JoinHandle<()> {
    let c = Arc::new(c);
    tokio::spawn(async move {
        for i in 0usize.. {
            let mut inflight = Vec::new();
            for j in 0..16 {
                let to = (s + i + j) % rids.len();
                let payload = format!("s{s}-{i}-{j}").into_bytes();
                let (c, r) = (c.clone(), rids[to]);
                inflight.push(tokio::spawn(async move {
                    (to, payload.clone(), c.send(&r, payload).await)
                }));
            }
            for f in inflight {
                match f.await.unwrap() {
                    (to, p, Ok(id)) => {
                        acc.lock().unwrap().insert(id, (to, p));
                    }
                    (_, _, Err(_)) => return,
                }
            }
        }
    })
}

#[tokio::test]
async fn crash_during_load_loses_nothing_accepted_and_resurrects_nothing_acked() {
    let mut relay = RelayProc::start(&[]);
    let recipients: Vec<_> = (0..8).map(|_| key()).collect();
    let rids: Vec<_> = recipients
        .iter()
        .map(|k| MailboxId(k.verifying_key().to_bytes()))
        .collect();

    // Phase 1: some envelopes delivered and acked before the crash.
    let sender = relay.client(&key()).await;
    let acked = sender.send(&rids[0], b"acked".to_vec()).await.unwrap();
    let r0 = relay.client(&recipients[0]).await;
    assert_eq!(r0.ack(&[acked]).await.unwrap(), 1);

    // Phase 2: concurrent senders; kill -9 mid-load.
    let accepted = load_then_kill9(&mut relay, &rids, Vec::new()).await;
    assert!(
        accepted.len() > 100,
        "load actually ran ({})",
        accepted.len()
    );

    relay.restart();
    let seen = fetch_all(&relay, &recipients).await;
    assert!(!seen.contains_key(&acked), "acked envelope came back");
    for (id, (to, payload)) in &accepted {
        assert_eq!(
            seen.get(id),
            Some(&(*to, payload.clone())),
            "accepted envelope {id} lost"
        );
    }
}

/// Pushes go out before the fsync (only the sender's "accepted" waits for
/// it), so a crash may lose an envelope its recipient already saw. That is
/// allowed (its sender never got "accepted" and retransmits); what is not:
/// losing an accepted envelope, resurrecting an acked one, or giving a later
/// envelope an id some recipient already saw (clients de-duplicate by id).
/// A kill -9 loses only what was not yet handed to the kernel, so such a loss
/// is rare here; the lease rule itself is tested with tiny leases in
/// `server::mailbox`.
#[tokio::test]
async fn crash_with_live_pushes_reuses_no_id_and_resurrects_nothing_acked() {
    let mut relay = RelayProc::start(&[]);
    let recipients: Vec<_> = (0..4).map(|_| key()).collect();
    let rids: Vec<_> = recipients
        .iter()
        .map(|k| MailboxId(k.verifying_key().to_bytes()))
        .collect();
    let pushed = Arc::new(std::sync::Mutex::new(HashMap::<EnvelopeId, Vec<u8>>::new()));
    // Acks sent (the relay may have applied them without the reply arriving)
    // and acks confirmed.
    let tried = Arc::new(std::sync::Mutex::new(HashSet::<EnvelopeId>::new()));
    let acked = Arc::new(std::sync::Mutex::new(HashSet::<EnvelopeId>::new()));
    let mut tasks = Vec::new();
    for k in &recipients {
        let c = Arc::new(relay.client(k).await);
        let mut sub = c.subscribe().await.unwrap();
        let (pushed, tried, acked) = (pushed.clone(), tried.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(p)) = sub.next().await {
                if let Pushed::Envelope(e) = p {
                    pushed.lock().unwrap().insert(e.id, e.payload);
                    // Every other one acked (without holding up the pushes),
                    // so both kinds meet the crash.
                    if e.id.0[15] % 2 == 0 {
                        tried.lock().unwrap().insert(e.id);
                        let (c, acked) = (c.clone(), acked.clone());
                        tokio::spawn(async move {
                            if let Ok(1) = c.ack(&[e.id]).await {
                                acked.lock().unwrap().insert(e.id);
                            }
                        });
                    }
                }
            }
        }));
    }
    let accepted = load_then_kill9(&mut relay, &rids, tasks).await;
    let pushed = pushed.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    let tried = tried.lock().unwrap().clone();
    assert!(pushed.len() > 100 && !acked.is_empty(), "load actually ran");

    relay.restart();
    let after = fetch_all(&relay, &recipients).await;
    for id in after.keys() {
        assert!(!acked.contains(id), "acked envelope {id} came back");
    }
    for (id, v) in &accepted {
        assert!(
            tried.contains(id) || after.get(id) == Some(v),
            "accepted envelope {id} lost"
        );
    }
    // New envelopes continue above every id handed out before the crash.
    let highest = pushed
        .keys()
        .chain(accepted.keys())
        .map(|id| id.seq())
        .max();
    let sender = relay.client(&key()).await;
    let fresh = sender.send(&rids[0], b"after".to_vec()).await.unwrap();
    assert!(Some(fresh.seq()) > highest, "sequence reused after restart");
}

#[tokio::test]
async fn disk_returns_near_empty_after_everything_is_acked() {
    let mut relay = RelayProc::start(&[
        "--mailbox-max-envelopes",
        "100000",
        "--send-burst",
        "100000",
    ]);
    let kb = key();
    let a = Arc::new(relay.client(&key()).await);
    let b = relay.client(&kb).await;
    let payload = vec![0x5a; 1024];
    let n = 20_000usize;
    for chunk in 0..(n / 64) {
        let items = (0..64).map(|_| (b.mailbox(), payload.clone())).collect();
        for r in a.send_batch(items).await.unwrap() {
            r.unwrap();
        }
        let _ = chunk;
    }
    let mut total = 0;
    loop {
        let page = b.fetch(None, 1000).await.unwrap();
        if page.envelopes.is_empty() {
            break;
        }
        let ids: Vec<_> = page.envelopes.iter().map(|e| e.id).collect();
        total += b.ack(&ids).await.unwrap() as usize;
    }
    assert_eq!(total, n / 64 * 64);
    assert_eq!(relay.metric("sotto_queue_depth").await, 0);
    relay.terminate();
    relay.restart();
    let size = common::dir_size(&relay.dir.join("db"));
    assert!(
        size < 4 << 20,
        "db is {size} bytes after acking {total} x 1 KiB"
    );
    assert_eq!(relay.metric("sotto_queue_depth").await, 0);
}

#[tokio::test]
async fn ephemeral_envelopes_go_to_a_live_subscription_now_or_never() {
    let relay = RelayProc::start(&[]);
    let (ka, kb) = (key(), key());
    let a = relay.client(&ka).await;
    let b = relay.client(&kb).await;
    let token = [7u8; 32];
    b.set_delivery_token(Some(&token)).await.unwrap();
    let to = b.mailbox();

    // Offline: accepted (the sender learns nothing), dropped, never stored.
    let r = a
        .send_ephemeral(vec![(to, b"while offline".to_vec(), token)])
        .await
        .unwrap();
    assert!(r[0].is_ok());
    metric_reaches(&relay, "sotto_ephemeral_dropped_total", 1).await;

    // Live: pushed at once, beside (not inside) the durable queue.
    let mut sub = b.subscribe().await.unwrap();
    assert!(matches!(next_push(&mut sub).await, Pushed::QueueEmpty));
    a.send_ephemeral(vec![(to, b"typing".to_vec(), token)])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    match next_push(&mut sub).await {
        Pushed::Ephemeral(p) => assert_eq!(p, b"typing"),
        other => panic!("expected the live envelope, got {other:?}"),
    }
    metric_reaches(&relay, "sotto_ephemeral_delivered_total", 1).await;

    // Refused: no token, a wrong token, too large; a stranger's mailbox
    // without a verifier takes none either.
    let refused = a
        .send_ephemeral(vec![
            (to, b"x".to_vec(), [0u8; 32]),
            (to, vec![0u8; 4097], token),
            (a.mailbox(), b"x".to_vec(), token),
        ])
        .await
        .unwrap();
    let codes: Vec<ErrorCode> = refused
        .iter()
        .map(|r| code(r.as_ref().unwrap_err()))
        .collect();
    assert_eq!(
        codes,
        [
            ErrorCode::BadDeliveryToken,
            ErrorCode::EnvelopeTooLarge,
            ErrorCode::BadDeliveryToken
        ]
    );

    // Nothing ephemeral was ever stored: a new subscription and a fetch
    // find an empty mailbox, and the durable counters never moved.
    drop(sub);
    b.close().await;
    let b = relay.client(&kb).await;
    let mut sub = b.subscribe().await.unwrap();
    assert!(matches!(next_push(&mut sub).await, Pushed::QueueEmpty));
    assert!(b.fetch(None, 100).await.unwrap().envelopes.is_empty());
    assert_eq!(relay.metric("sotto_envelopes_accepted_total").await, 0);
    assert_eq!(relay.metric("sotto_queue_depth").await, 0);
}

/// One source address may send one mailbox only a few live signals a
/// second (burst 20, then 5/s): the rest are refused one by one, and other
/// mailboxes are not affected.
#[tokio::test]
async fn live_signals_from_one_address_to_one_mailbox_are_rate_limited() {
    let relay = RelayProc::start(&[]);
    let (ka, kb, kc) = (key(), key(), key());
    let a = relay.client(&ka).await;
    let b = relay.client(&kb).await;
    let c = relay.client(&kc).await;
    let token = [7u8; 32];
    b.set_delivery_token(Some(&token)).await.unwrap();
    c.set_delivery_token(Some(&token)).await.unwrap();
    let to_b: Vec<_> = (0..25).map(|_| (b.mailbox(), vec![1; 8], token)).collect();
    let r = a.send_ephemeral(to_b).await.unwrap();
    let refused: Vec<usize> = (0..25).filter(|&i| r[i].is_err()).collect();
    assert_eq!(refused, (20..25).collect::<Vec<_>>());
    assert_eq!(code(r[24].as_ref().unwrap_err()), ErrorCode::RateLimited);
    // Another mailbox still takes them.
    let r = a
        .send_ephemeral(vec![(c.mailbox(), vec![1; 8], token)])
        .await
        .unwrap();
    assert!(r[0].is_ok());
}

/// A wrong pin is named as such, with both fingerprints: a wrong or
/// outdated address is the likeliest cause, and the operator can compare.
#[tokio::test]
async fn a_wrong_pin_is_a_fingerprint_mismatch_naming_both() {
    let relay = RelayProc::start(&[]);
    let wrong = [0x11u8; 32];
    let e = RelayClient::connect(relay.addr, wrong, &key())
        .await
        .unwrap_err();
    match &e {
        RelayError::FingerprintMismatch { pinned, presented } => {
            assert_eq!(pinned, &hex::encode(wrong));
            assert!(presented.contains(&hex::encode(relay.pin)), "{presented}");
        }
        other => panic!("expected a fingerprint mismatch, got {other:?}"),
    }
    assert!(
        e.to_string()
            .starts_with("certificate fingerprint mismatch"),
        "{e}"
    );
}
