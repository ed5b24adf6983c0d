//! The relay under attack, as real processes over loopback QUIC: what a
//! stranger with free keys can make it hold in memory, how many connections
//! it can open, and that the relay goes on serving everyone else meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{key, RelayProc};

/// 8 authenticated connections, each opening 63 request streams (all its
/// stream credit but the one the relay returns slowly after authentication) that send
/// only the 4-byte length prefix of a frame of 2 MiB - 1 and then stall:
/// 2 KiB on the wire in all. The relay must not hold memory for what it has
/// not received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_prefixes_alone_pin_no_memory() {
    let relay = RelayProc::start(&[]);
    let before = relay.rss();
    let mut held = Vec::new();
    for _ in 0..8 {
        let c = relay.client(&key()).await;
        for _ in 0..63 {
            let (mut send, recv) =
                tokio::time::timeout(Duration::from_secs(10), c.connection().open_bi())
                    .await
                    .expect("stream credit")
                    .unwrap();
            send.write_all(&((2u32 << 20) - 1).to_be_bytes())
                .await
                .unwrap();
            held.push((send, recv));
        }
        held.push_client(c);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = relay.rss();
    let grew = after.saturating_sub(before);
    eprintln!(
        "relay RSS {} MiB -> {} MiB under 504 stalled length prefixes",
        before >> 20,
        after >> 20
    );
    assert!(grew < 64 << 20, "RSS grew by {} MiB", grew >> 20);
    // Everyone else is served meanwhile.
    let a = relay.client(&key()).await;
    let b = key();
    let mailbox = sotto_relay::MailboxId(b.verifying_key().to_bytes());
    a.send(&mailbox, b"still served".to_vec()).await.unwrap();
    drop(held);
}

trait Hold {
    fn push_client(&mut self, c: sotto_relay::RelayClient);
}

impl Hold for Vec<(quinn::SendStream, quinn::RecvStream)> {
    fn push_client(&mut self, c: sotto_relay::RelayClient) {
        // The streams live as long as the connection: keep it.
        std::mem::forget(c);
    }
}

/// Keys are free, addresses are not: one source address gets at most its
/// share of connections, refused before any handshake work, and a place
/// comes back when a connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_source_address() {
    let relay = RelayProc::start(&["--max-connections-per-ip", "4"]);
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(relay.client(&key()).await);
    }
    let refused = tokio::time::timeout(
        Duration::from_secs(20),
        sotto_relay::RelayClient::connect(relay.addr, relay.pin, &key()),
    )
    .await
    .expect("a refusal, not a hang");
    assert!(refused.is_err());
    assert!(relay.metric("sotto_connections_refused_total").await >= 1);
    // One closes: a new one gets in.
    open.pop().unwrap().close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.client(&key()).await;
}

/// A frame trickled in one byte per 100 ms holds what it sent, no more, and
/// only until the request deadline: then it is refused and its budget given
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_frame_is_cut_off_at_the_deadline() {
    let relay = RelayProc::start(&["--request-timeout-secs", "2"]);
    let c = relay.client(&key()).await;
    let (mut send, mut recv) = c.connection().open_bi().await.unwrap();
    send.write_all(&1_000u32.to_be_bytes()).await.unwrap();
    let trickle = async {
        for _ in 0..100 {
            if send.write_all(&[0x08]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let answer = async {
        let bytes = sotto_relay::frame::read_frame(&mut recv, 1 << 20)
            .await
            .unwrap()
            .expect("an error frame");
        sotto_relay::frame::decode_server(&bytes).unwrap_err()
    };
    let started = std::time::Instant::now();
    let err = tokio::select! {
        e = answer => e,
        _ = trickle => panic!("no answer while trickling"),
    };
    assert!(err.to_string().contains("timeout"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(relay.metric("sotto_memory_budget_in_use_bytes").await, 0);
}

/// With a small relay budget, connections holding large partial frames use
/// it up: a newcomer's request is refused with OVERLOADED (a typed error),
/// and served again once they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_memory_budget_refuses_new_work_with_a_typed_error() {
    let relay = RelayProc::start(&[
        "--memory-budget-bytes",
        "12582912", // 12 MiB
        "--connection-budget-bytes",
        "4194304",
        "--address-budget-bytes",
        "12582912",
        "--request-timeout-secs",
        "300",
    ]);
    // Six connections, each with one frame of 2 MiB - 1 sent but for its
    // last 64 bytes: six times 2 MiB held.
    let mut attackers = Vec::new();
    for _ in 0..6 {
        let c = relay.client(&key()).await;
        let (mut send, recv) = c.connection().open_bi().await.unwrap();
        let writer = tokio::spawn(async move {
            send.write_all(&((2u32 << 20) - 1).to_be_bytes()).await?;
            send.write_all(&vec![0u8; (2 << 20) - 64]).await?;
            Ok::<_, quinn::WriteError>(send)
        });
        attackers.push((c, writer, recv));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while relay.metric("sotto_memory_budget_in_use_bytes").await < 12_000_000 {
        assert!(std::time::Instant::now() < deadline, "attack did not land");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A newcomer from another address (its own address budget is intact).
    let ep = sotto_relay::client::endpoint(relay.pin, false).unwrap();
    ep.rebind(std::net::UdpSocket::bind("127.0.0.2:0").unwrap())
        .unwrap();
    let newcomer = sotto_relay::RelayClient::connect_on(&ep, relay.addr, &key())
        .await
        .unwrap();
    let to = sotto_relay::MailboxId([7; 32]);
    let err = newcomer.send(&to, vec![1; 90_000]).await.unwrap_err();
    assert_eq!(
        err.remote_code(),
        Some(sotto_relay::wire::ErrorCode::Overloaded),
        "{err}"
    );
    assert!(relay.metric("sotto_overloaded_total").await >= 1);
    for (c, writer, _recv) in attackers {
        writer.abort();
        c.close().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    newcomer.send(&to, vec![1; 90_000]).await.unwrap();
}
