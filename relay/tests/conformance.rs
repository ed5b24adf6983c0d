//! The relay does what PROTOCOL.md Part II says where a second
//! implementation would otherwise have to guess: error replies echo the
//! request id, the authentication stream's shape, deadline and close reason,
//! requests before `AuthOk` refused (never held and served later), empty
//! streams and unknown bodies answered, and stream acks still arriving at a
//! graceful shutdown applied. Against a real `sotto-relay` process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{key, RelayProc};
use prost::Message;
use sotto_relay::client::connect_raw;
use sotto_relay::wire::{
    client_frame::Body as Req, server_frame::Body as Resp, ClientFrame, ErrorCode, ServerFrame,
};
use sotto_relay::{frame, EnvelopeId, Pushed, RelayClient};

const T: Duration = Duration::from_secs(15);

/// Reads one raw server frame (an `Error` body stays a body, not an `Err`).
async fn read_raw(r: &mut quinn::RecvStream) -> ServerFrame {
    let bytes = tokio::time::timeout(T, frame::read_frame(r, 1 << 20))
        .await
        .expect("relay hung")
        .unwrap()
        .expect("stream ended without a frame");
    ServerFrame::decode(bytes.as_slice()).unwrap()
}

fn error_of(f: &ServerFrame) -> ErrorCode {
    match &f.body {
        Some(Resp::Error(e)) => ErrorCode::try_from(e.code).unwrap(),
        other => panic!("expected an error frame, got {other:?}"),
    }
}

/// Waits for the connection to close and returns (application code, reason).
async fn close_of(conn: &quinn::Connection) -> (u64, String) {
    match tokio::time::timeout(T, conn.closed())
        .await
        .expect("connection not closed")
    {
        quinn::ConnectionError::ApplicationClosed(c) => (
            c.error_code.into_inner(),
            String::from_utf8(c.reason.to_vec()).unwrap(),
        ),
        other => panic!("expected an application close, got {other:?}"),
    }
}

#[tokio::test]
async fn auth_errors_echo_the_request_id_and_close_with_the_code_name() {
    let relay = RelayProc::start(&[]);

    // A request other than AuthBegin first: NOT_AUTHENTICATED, id echoed.
    let (_ep, conn) = connect_raw(relay.addr, relay.pin).await.unwrap();
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    let req = Req::FetchDeviceList(sotto_relay::wire::FetchDeviceList {
        user_key: vec![0; 32],
    });
    frame::write_frame(&mut s, &frame::client_frame(41, req))
        .await
        .unwrap();
    let f = read_raw(&mut r).await;
    assert_eq!(
        (f.request_id, error_of(&f)),
        (41, ErrorCode::NotAuthenticated)
    );
    assert_eq!(
        close_of(&conn).await,
        (1, "ERROR_CODE_NOT_AUTHENTICATED".to_owned())
    );

    // A bad proof: AUTH_FAILED echoing the proof's id, not the begin's.
    let (_ep, conn) = connect_raw(relay.addr, relay.pin).await.unwrap();
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    let begin = frame::client_frame(7, Req::AuthBegin(Default::default()));
    frame::write_frame(&mut s, &begin).await.unwrap();
    let ch = read_raw(&mut r).await;
    assert_eq!(ch.request_id, 7);
    let prove = sotto_relay::wire::AuthProve {
        device_key: key().verifying_key().to_bytes().to_vec(),
        signature: vec![0; 64],
    };
    frame::write_frame(&mut s, &frame::client_frame(9, Req::AuthProve(prove)))
        .await
        .unwrap();
    let f = read_raw(&mut r).await;
    assert_eq!((f.request_id, error_of(&f)), (9, ErrorCode::AuthFailed));
    assert_eq!(
        close_of(&conn).await,
        (1, "ERROR_CODE_AUTH_FAILED".to_owned())
    );

    // A client that finishes its half after AuthBegin cannot prove anything:
    // MALFORMED (truncated) answering the last request read, then the close.
    let (_ep, conn) = connect_raw(relay.addr, relay.pin).await.unwrap();
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    frame::write_frame(&mut s, &begin).await.unwrap();
    s.finish().unwrap();
    let _challenge = read_raw(&mut r).await;
    let f = read_raw(&mut r).await;
    assert_eq!((f.request_id, error_of(&f)), (7, ErrorCode::Malformed));
    assert_eq!(
        close_of(&conn).await,
        (1, "ERROR_CODE_MALFORMED".to_owned())
    );

    // Bytes that are not a ClientFrame at all: MALFORMED with id 0.
    let (_ep, conn) = connect_raw(relay.addr, relay.pin).await.unwrap();
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    s.write_all(b"\x00\x00\x00\x03\xff\xff\xff").await.unwrap();
    let f = read_raw(&mut r).await;
    assert_eq!((f.request_id, error_of(&f)), (0, ErrorCode::Malformed));
    assert_eq!(
        close_of(&conn).await,
        (1, "ERROR_CODE_MALFORMED".to_owned())
    );
}

#[tokio::test]
async fn a_request_before_auth_ok_is_refused_and_closes_the_connection() {
    let relay = RelayProc::start(&[]);
    let victim = key();
    let (_ep, conn) = connect_raw(relay.addr, relay.pin).await.unwrap();
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    frame::write_frame(
        &mut s,
        &frame::client_frame(3, Req::AuthBegin(Default::default())),
    )
    .await
    .unwrap();
    let _challenge = read_raw(&mut r).await;
    // A second stream before proving anything: a send to the victim.
    let (mut s2, _r2) = conn.open_bi().await.unwrap();
    let send = Req::Send(sotto_relay::wire::Send {
        recipient: victim.verifying_key().to_bytes().to_vec(),
        payload: b"held for later?".to_vec(),
        ..Default::default()
    });
    frame::write_frame(&mut s2, &frame::client_frame(4, send))
        .await
        .unwrap();
    s2.finish().unwrap();
    let f = read_raw(&mut r).await;
    assert_eq!(error_of(&f), ErrorCode::NotAuthenticated);
    assert_eq!(f.request_id, 3, "the last request read on the auth stream");
    assert_eq!(
        close_of(&conn).await,
        (1, "ERROR_CODE_NOT_AUTHENTICATED".to_owned())
    );
    // Nothing was queued for the victim.
    let owner = relay.client(&victim).await;
    assert!(owner.fetch(None, 10).await.unwrap().envelopes.is_empty());
}

#[tokio::test]
async fn authentication_must_finish_within_ten_seconds_of_the_handshake() {
    let relay = RelayProc::start(&[]);
    let started = std::time::Instant::now();
    // One connection never opens a stream; one begins and then stalls.
    let (_ep, idle) = connect_raw(relay.addr, relay.pin).await.unwrap();
    let (_ep2, stalled) = connect_raw(relay.addr, relay.pin).await.unwrap();
    let (mut s, mut r) = stalled.open_bi().await.unwrap();
    frame::write_frame(
        &mut s,
        &frame::client_frame(5, Req::AuthBegin(Default::default())),
    )
    .await
    .unwrap();
    let _challenge = read_raw(&mut r).await;
    let f = read_raw(&mut r).await;
    assert_eq!(
        (f.request_id, error_of(&f)),
        (5, ErrorCode::NotAuthenticated)
    );
    for conn in [&idle, &stalled] {
        assert_eq!(
            close_of(conn).await,
            (1, "ERROR_CODE_NOT_AUTHENTICATED".to_owned())
        );
    }
    assert!(started.elapsed() >= Duration::from_secs(9));
}

#[tokio::test]
async fn empty_streams_unknown_bodies_and_wrong_versions_are_answered() {
    let relay = RelayProc::start(&[]);
    let client = relay.client(&key()).await;
    let conn = client.connection();

    // An empty request stream: MALFORMED, not a bare FIN.
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    s.write_all(&[]).await.unwrap();
    s.finish().unwrap();
    let f = read_raw(&mut r).await;
    assert_eq!((f.request_id, error_of(&f)), (0, ErrorCode::Malformed));

    // A body from a later protocol version (an unknown oneof field, 99):
    // MALFORMED, echoing the request id.
    let mut bytes = ClientFrame {
        version: 1,
        request_id: 77,
        body: None,
    }
    .encode_to_vec();
    bytes.extend([0x9a, 0x06, 0x00]); // field 99, length-delimited, empty
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    s.write_all(&(bytes.len() as u32).to_be_bytes())
        .await
        .unwrap();
    s.write_all(&bytes).await.unwrap();
    s.finish().unwrap();
    let f = read_raw(&mut r).await;
    assert_eq!((f.request_id, error_of(&f)), (77, ErrorCode::Malformed));

    // Another version: UNSUPPORTED_VERSION, echoing the request id.
    let mut frame = frame::client_frame(78, Req::QueryPrekeyCounts(Default::default()));
    frame.version = 2;
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    frame::write_frame(&mut s, &frame).await.unwrap();
    s.finish().unwrap();
    let f = read_raw(&mut r).await;
    assert_eq!(
        (f.request_id, error_of(&f)),
        (78, ErrorCode::UnsupportedVersion)
    );

    // The connection goes on.
    client.fetch(None, 1).await.unwrap();
}

/// Counts the envelopes a mailbox holds.
async fn count(client: &RelayClient) -> usize {
    let (mut n, mut after) = (0, None);
    loop {
        let page = client.fetch(after, 1000).await.unwrap();
        n += page.envelopes.len();
        after = page.envelopes.last().map(|e| e.id);
        if !page.more {
            return n;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_acks_still_arriving_at_a_graceful_shutdown_are_applied() {
    const N: usize = 30_000;
    let mut relay = RelayProc::start(&[
        "--mailbox-max-envelopes",
        "100000",
        "--send-burst",
        "100000",
        "--send-rate-per-sec",
        "100000",
    ]);
    let owner = key();
    let device = relay.client(&owner).await;
    let sender = relay.client(&key()).await;
    for chunk in (0..N).collect::<Vec<_>>().chunks(64) {
        let items = chunk
            .iter()
            .map(|i| (device.mailbox(), i.to_be_bytes().to_vec()))
            .collect();
        for r in sender.send_batch(items).await.unwrap() {
            r.unwrap();
        }
    }
    let mut sub = device.subscribe().await.unwrap();
    let mut acks = sub.acks().unwrap();
    let mut ids: Vec<EnvelopeId> = Vec::with_capacity(N);
    while ids.len() < N {
        match tokio::time::timeout(T, sub.next()).await.unwrap().unwrap() {
            Some(Pushed::Envelope(e)) => ids.push(e.id),
            Some(_) => {}
            None => panic!("push stream ended early"),
        }
    }
    // The relay reads 20,000 ids at once and the rest at 20,000/s, so a
    // SIGTERM right after the acks are written finds a third still unread.
    let writer = tokio::spawn(async move {
        for page in ids.chunks(1000) {
            acks.ack(page).await.unwrap();
        }
        drop(acks); // FIN: nothing more will come
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    relay.sigterm();
    // The relay ends the push stream, then reads the acks up to the FIN.
    while let Some(p) = tokio::time::timeout(T, sub.next()).await.unwrap().unwrap() {
        assert!(matches!(p, Pushed::QueueEmpty), "{p:?}");
    }
    tokio::time::timeout(T, writer).await.unwrap().unwrap();
    tokio::task::block_in_place(|| relay.wait_exit());

    relay.restart();
    let device = relay.client(&owner).await;
    assert_eq!(count(&device).await, 0, "acked envelopes came back");
}

/// Captures the TLS exporter secret of a client connection.
#[derive(Debug, Default)]
struct ExporterSecret(std::sync::Mutex<Option<Vec<u8>>>);

impl rustls::KeyLog for ExporterSecret {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        if label == "EXPORTER_SECRET" {
            *self.0.lock().unwrap() = Some(secret.to_vec());
        }
    }
    fn will_log(&self, label: &str) -> bool {
        label == "EXPORTER_SECRET"
    }
}

/// `HKDF-Expand-Label` (RFC 8446 §7.1) over hash `H`.
fn expand_label<H>(secret: &[u8], label: &[u8], ctx: &[u8], n: u16) -> Vec<u8>
where
    H: sha2::Digest + sha2::digest::core_api::BlockSizeUser + Clone,
{
    let mut info = n.to_be_bytes().to_vec();
    info.push(u8::try_from(6 + label.len()).unwrap());
    info.extend_from_slice(b"tls13 ");
    info.extend_from_slice(label);
    info.push(u8::try_from(ctx.len()).unwrap());
    info.extend_from_slice(ctx);
    let mut out = vec![0; usize::from(n)];
    hkdf::SimpleHkdf::<H>::from_prk(secret)
        .unwrap()
        .expand(&info, &mut out)
        .unwrap();
    out
}

/// The binding as PROTOCOL.md II.3 writes it for stacks without an exporter API.
fn binding_from_spec<H>(exporter_master_secret: &[u8], nonce: &[u8; 32]) -> Vec<u8>
where
    H: sha2::Digest + sha2::digest::core_api::BlockSizeUser + Clone,
{
    let len = u16::try_from(<H as sha2::Digest>::output_size()).unwrap();
    let s = expand_label::<H>(
        exporter_master_secret,
        b"EXPORTER-sotto-relay-auth",
        &H::digest(b""),
        len,
    );
    expand_label::<H>(&s, b"exporter", &H::digest(nonce), 32)
}

#[tokio::test]
async fn the_channel_binding_formula_in_the_spec_is_the_tls_exporter() {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    use std::sync::Arc;
    let relay = RelayProc::start(&[]);
    for (suite, sha384) in [
        (cipher_suite::TLS13_AES_128_GCM_SHA256, false),
        (cipher_suite::TLS13_AES_256_GCM_SHA384, true),
    ] {
        let log = Arc::new(ExporterSecret::default());
        let mut provider = default_provider();
        // QUIC needs AES-128-GCM for its initial packets, so it stays offered
        // (last) when the test prefers the SHA-384 suite.
        provider.cipher_suites = vec![suite, cipher_suite::TLS13_AES_128_GCM_SHA256];
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(
                sotto_relay::client::pin::PinnedCertVerifier::new(relay.pin),
            ))
            .with_no_client_auth();
        tls.alpn_protocols = vec![frame::ALPN.to_vec()];
        tls.key_log = log.clone();
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = ep
            .connect_with(
                quinn::ClientConfig::new(Arc::new(quic)),
                relay.addr,
                "sotto-relay",
            )
            .unwrap()
            .await
            .unwrap();
        let nonce = [0x5a; 32];
        let binding = sotto_relay::auth::channel_binding(&conn, &nonce).unwrap();
        let secret = log
            .0
            .lock()
            .unwrap()
            .clone()
            .expect("exporter secret logged");
        let expected = if sha384 {
            binding_from_spec::<sha2::Sha384>(&secret, &nonce)
        } else {
            binding_from_spec::<sha2::Sha256>(&secret, &nonce)
        };
        assert_eq!(secret.len(), if sha384 { 48 } else { 32 });
        assert_eq!(binding.to_vec(), expected);
        // And the relay accepts a proof over it.
        RelayClient::authenticate(ep.clone(), conn, &key())
            .await
            .unwrap();
    }
}
