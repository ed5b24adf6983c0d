//! Thin async client for the relay, used by tests, the load generator and the
//! high-level client in sotto-core.
//!
//! One QUIC connection per device, authenticated once at connect; each request
//! then runs on its own bidirectional stream (quinn's recommended pattern, so
//! a slow request never blocks another). Pushes arrive on a [`Subscription`].

pub mod pin;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use sotto_proto::relay::{
    client_frame::Body as Req, server_frame::Body as Resp, Ack, AuthBegin, AuthProve, BlobDownload,
    BlobUpload, FetchBundle, FetchDeviceList, PrekeyCounts, PrekeyItem, PublishDeviceList,
    PublishPrekeys, QueryPrekeyCounts, RegisterPushToken, Send, SendBatch, SendEphemeral,
    SendShared, SetDeliveryToken, SharedRecipient, SignedDeviceList, Subscribe,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::error::{RelayError, Result};
use crate::frame;
use crate::ids::{BlobId, EnvelopeId, MailboxId};

/// Largest relay frame the client accepts (a full fetch page).
pub const CLIENT_MAX_FRAME: usize = 8 << 20;

/// An envelope received from the relay (fetch or push).
#[derive(Clone, PartialEq, Eq)]
pub struct ReceivedEnvelope {
    /// Relay-assigned id; pass it to [`RelayClient::ack`].
    pub id: EnvelopeId,
    /// Opaque ciphertext as the sender submitted it.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for ReceivedEnvelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Payload is ciphertext, but still never logged.
        write!(
            f,
            "ReceivedEnvelope({:?}, {} bytes)",
            self.id,
            self.payload.len()
        )
    }
}

/// One page of a mailbox backlog.
#[derive(Debug, Clone)]
pub struct FetchPage {
    /// Envelopes in FIFO order.
    pub envelopes: Vec<ReceivedEnvelope>,
    /// Whether more envelopes follow the last one.
    pub more: bool,
}

/// A prekey bundle handed out by the directory.
#[derive(Debug, Clone)]
pub struct FetchedBundle {
    /// The target's signed bundle blob (clients verify its signatures).
    pub signed_bundle: Vec<u8>,
    /// A one-time EC prekey, never handed out again; `None` when exhausted.
    pub one_time_ec: Option<(u32, Vec<u8>)>,
    /// A one-time KEM prekey; `None` when exhausted (use the last-resort key).
    pub one_time_kem: Option<(u32, Vec<u8>)>,
}

/// Something the relay pushed on a subscription.
#[derive(Debug, Clone)]
pub enum Pushed {
    /// A new (or redelivered, not yet acknowledged) envelope.
    Envelope(ReceivedEnvelope),
    /// The backlog present at subscription time has been delivered.
    QueueEmpty,
    /// The device's one-time prekeys are running low: replenish.
    PrekeysLow(PrekeyCounts),
    /// A live-only payload ([`RelayClient::send_ephemeral`]): nothing to
    /// acknowledge, never delivered again.
    Ephemeral(Vec<u8>),
}

/// A live push stream: backlog first, then [`Pushed::QueueEmpty`], then live.
#[derive(Debug)]
pub struct Subscription {
    recv: quinn::RecvStream,
    send: Option<quinn::SendStream>,
}

/// The sending half of a [`Subscription`]: acks written here ride on the
/// push stream (no stream and no reply of their own, and the QUIC ACK of the
/// push travels with them), which halves the datagrams a received envelope
/// costs. There is no confirmation: the relay deletes the envelopes at once
/// in memory and durably with its next synced commit (at most a second
/// later), so a machine crash in between may deliver them again (clients
/// de-duplicate). Use
/// [`RelayClient::ack`] when a confirmation is needed.
#[derive(Debug)]
pub struct StreamAcks {
    send: quinn::SendStream,
}

impl StreamAcks {
    /// Acknowledges up to 1,000 envelopes of this subscription's mailbox.
    pub async fn ack(&mut self, ids: &[EnvelopeId]) -> Result<()> {
        let body = Req::Ack(Ack {
            ids: ids.iter().map(|i| i.0.to_vec()).collect(),
        });
        frame::write_frame(&mut self.send, &frame::client_frame(0, body)).await
    }
}

impl Subscription {
    /// Takes the sending half, for acks on this stream; `None` the second time.
    pub fn acks(&mut self) -> Option<StreamAcks> {
        self.send.take().map(|send| StreamAcks { send })
    }

    /// The next push; `Ok(None)` when the relay closed the stream.
    ///
    /// Not cancel-safe: dropping the future mid-frame loses that frame and
    /// desynchronises the stream. Poll it from one task (forward into a
    /// channel if you need timeouts); unacked envelopes are redelivered on
    /// the next subscription anyway.
    pub async fn next(&mut self) -> Result<Option<Pushed>> {
        let Some(bytes) = frame::read_frame(&mut self.recv, CLIENT_MAX_FRAME).await? else {
            return Ok(None);
        };
        let (_, body) = frame::decode_server(&bytes)?;
        Ok(Some(match body {
            Resp::Envelope(e) => Pushed::Envelope(ReceivedEnvelope {
                id: EnvelopeId::from_slice(&e.id)?,
                payload: e.payload,
            }),
            Resp::QueueEmpty(_) => Pushed::QueueEmpty,
            Resp::PrekeyCounts(c) => Pushed::PrekeysLow(c),
            Resp::Ephemeral(e) => Pushed::Ephemeral(e.payload),
            _ => return Err(RelayError::UnexpectedReply),
        }))
    }
}

/// An authenticated connection to a relay acting as one device's mailbox.
#[derive(Debug)]
pub struct RelayClient {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    mailbox: MailboxId,
    next_id: AtomicU64,
}

/// A client endpoint (one UDP socket) pinned to `pin`; many connections can
/// share it (load generators, multi-account apps).
pub fn endpoint(pin: [u8; 32], ipv6: bool) -> Result<quinn::Endpoint> {
    // Quinn's sockets and timers need Tokio; outside a runtime they would
    // panic deep inside it.
    tokio::runtime::Handle::try_current().map_err(|_| RelayError::NoRuntime)?;
    let bind: SocketAddr = if ipv6 {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    };
    let socket = crate::udp::bind(bind, crate::udp::CLIENT_BUFFER_BYTES)?;
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    endpoint.set_default_client_config(pin::client_config(pin)?);
    Ok(endpoint)
}

/// Opens a QUIC connection to `addr` pinned to `pin`, without authenticating
/// (tests use it to probe the relay's handling of bad clients).
pub async fn connect_raw(
    addr: SocketAddr,
    pin: [u8; 32],
) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let endpoint = endpoint(pin, addr.is_ipv6())?;
    let conn = endpoint
        .connect(addr, "sotto-relay")?
        .await
        .map_err(|e| handshake_error(e, &pin))?;
    Ok((endpoint, conn))
}

/// A failed handshake, with a pin mismatch named as such.
fn handshake_error(e: quinn::ConnectionError, pin: &[u8; 32]) -> RelayError {
    if let quinn::ConnectionError::TransportError(t) = &e {
        if let Some(at) = t.reason.find(pin::MISMATCH) {
            // "...: the relay presents <64 hex digits>..."
            let rest = &t.reason[at + pin::MISMATCH.len()..];
            let presented = rest
                .split(|c: char| !c.is_ascii_hexdigit())
                .find(|w| w.len() == 64)
                .map_or_else(
                    || "the relay presents another certificate".to_owned(),
                    |h| format!("the relay presents {h}"),
                );
            return RelayError::FingerprintMismatch {
                pinned: hex::encode(pin),
                presented,
            };
        }
    }
    RelayError::Connection(e)
}

impl RelayClient {
    /// Connects, pins the relay certificate and authenticates as `key`'s mailbox.
    pub async fn connect(addr: SocketAddr, pin: [u8; 32], key: &SigningKey) -> Result<Self> {
        let (endpoint, conn) = connect_raw(addr, pin).await?;
        Self::authenticate(endpoint, conn, key).await
    }

    /// Connects over an existing [`endpoint`] and authenticates.
    pub async fn connect_on(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        key: &SigningKey,
    ) -> Result<Self> {
        let conn = endpoint.connect(addr, "sotto-relay")?.await?;
        Self::authenticate(endpoint.clone(), conn, key).await
    }

    /// Runs the challenge-response on an open connection.
    pub async fn authenticate(
        endpoint: quinn::Endpoint,
        conn: quinn::Connection,
        key: &SigningKey,
    ) -> Result<Self> {
        let (mut send, mut recv) = conn.open_bi().await?;
        frame::write_frame(
            &mut send,
            &frame::client_frame(0, Req::AuthBegin(AuthBegin {})),
        )
        .await?;
        let bytes = frame::read_frame(&mut recv, CLIENT_MAX_FRAME)
            .await?
            .ok_or(RelayError::Truncated)?;
        let Resp::AuthChallenge(ch) = frame::decode_server(&bytes)?.1 else {
            return Err(RelayError::UnexpectedReply);
        };
        let nonce: [u8; 32] = ch
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| RelayError::Malformed("nonce must be 32 bytes"))?;
        let binding = crate::auth::channel_binding(&conn, &nonce)?;
        let sig = crate::auth::sign(key, &binding, &nonce);
        let prove = AuthProve {
            device_key: key.verifying_key().to_bytes().to_vec(),
            signature: sig.to_vec(),
        };
        frame::write_frame(&mut send, &frame::client_frame(0, Req::AuthProve(prove))).await?;
        send.finish()?;
        let bytes = frame::read_frame(&mut recv, CLIENT_MAX_FRAME)
            .await?
            .ok_or(RelayError::Truncated)?;
        let Resp::AuthOk(ok) = frame::decode_server(&bytes)?.1 else {
            return Err(RelayError::UnexpectedReply);
        };
        Ok(Self {
            endpoint,
            conn,
            mailbox: MailboxId::from_slice(&ok.mailbox)?,
            next_id: AtomicU64::new(1),
        })
    }

    /// This device's mailbox id (its public key).
    pub fn mailbox(&self) -> MailboxId {
        self.mailbox
    }

    /// The underlying QUIC connection.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Closes the connection (and, if this client owns its endpoint alone,
    /// waits for the close to reach the relay).
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"bye");
        if self.endpoint.open_connections() == 0 {
            self.endpoint.wait_idle().await;
        }
    }

    async fn open(&self, body: Req) -> Result<(quinn::SendStream, quinn::RecvStream, u64)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (mut send, recv) = self.conn.open_bi().await?;
        frame::write_frame(&mut send, &frame::client_frame(id, body)).await?;
        Ok((send, recv, id))
    }

    async fn read_reply(recv: &mut quinn::RecvStream, id: u64) -> Result<Resp> {
        let bytes = frame::read_frame(recv, CLIENT_MAX_FRAME)
            .await?
            .ok_or(RelayError::Truncated)?;
        let (rid, body) = frame::decode_server(&bytes)?;
        if rid != id {
            return Err(RelayError::UnexpectedReply);
        }
        Ok(body)
    }

    /// One request, one reply, on a fresh stream.
    async fn request(&self, body: Req) -> Result<Resp> {
        let (mut send, mut recv, id) = self.open(body).await?;
        send.finish()?;
        Self::read_reply(&mut recv, id).await
    }

    /// Submits one envelope; returns once the relay stored it durably.
    pub async fn send(&self, recipient: &MailboxId, payload: Vec<u8>) -> Result<EnvelopeId> {
        self.send_with_token(recipient, payload, None).await
    }

    /// [`Self::send`] with the recipient's delivery token, which puts the
    /// envelope outside the small share of the mailbox strangers get; a token
    /// the recipient has since replaced is refused with `BAD_DELIVERY_TOKEN`.
    pub async fn send_with_token(
        &self,
        recipient: &MailboxId,
        payload: Vec<u8>,
        delivery_token: Option<&[u8; 32]>,
    ) -> Result<EnvelopeId> {
        let req = Req::Send(Send {
            recipient: recipient.0.to_vec(),
            payload,
            delivery_token: delivery_token.map(|t| t.to_vec()).unwrap_or_default(),
        });
        match self.request(req).await? {
            Resp::SendOk(ok) => EnvelopeId::from_slice(&ok.envelope_id),
            _ => Err(RelayError::UnexpectedReply),
        }
    }

    /// Submits envelopes for several mailboxes in one durable write; each item
    /// succeeds or is refused on its own (e.g. one recipient's quota).
    pub async fn send_batch(
        &self,
        items: Vec<(MailboxId, Vec<u8>)>,
    ) -> Result<Vec<Result<EnvelopeId>>> {
        let n = items.len();
        let req = Req::SendBatch(SendBatch {
            items: items
                .into_iter()
                .map(|(r, payload)| Send {
                    recipient: r.0.to_vec(),
                    payload,
                    delivery_token: Vec::new(),
                })
                .collect(),
        });
        let Resp::SendBatchOk(ok) = self.request(req).await? else {
            return Err(RelayError::UnexpectedReply);
        };
        per_item(ok.results, n)
    }

    /// Submits one payload for many mailboxes, stored once by the relay
    /// (PROTOCOL.md Part II §4): each recipient `(mailbox, delivery token)`
    /// gets its own envelope id or its own refusal, in order.
    pub async fn send_shared(
        &self,
        payload: Vec<u8>,
        recipients: Vec<(MailboxId, Option<[u8; 32]>)>,
    ) -> Result<Vec<Result<EnvelopeId>>> {
        let n = recipients.len();
        let req = Req::SendShared(SendShared {
            payload,
            recipients: recipients
                .into_iter()
                .map(|(m, t)| SharedRecipient {
                    mailbox: m.0.to_vec(),
                    delivery_token: t.map(|t| t.to_vec()).unwrap_or_default(),
                })
                .collect(),
        });
        let Resp::SendSharedOk(ok) = self.request(req).await? else {
            return Err(RelayError::UnexpectedReply);
        };
        per_item(ok.results, n)
    }

    /// Submits live-only payloads `(mailbox, payload, delivery token)`:
    /// each goes to its mailbox's live subscription now or never (PROTOCOL.md
    /// Part II §4). `Ok(())` for an item means it was not refused (not that
    /// it was delivered); a mailbox refuses items without its token.
    pub async fn send_ephemeral(
        &self,
        items: Vec<(MailboxId, Vec<u8>, [u8; 32])>,
    ) -> Result<Vec<Result<()>>> {
        let n = items.len();
        let req = Req::SendEphemeral(SendEphemeral {
            items: items
                .into_iter()
                .map(|(r, payload, token)| Send {
                    recipient: r.0.to_vec(),
                    payload,
                    delivery_token: token.to_vec(),
                })
                .collect(),
        });
        let Resp::SendBatchOk(ok) = self.request(req).await? else {
            return Err(RelayError::UnexpectedReply);
        };
        if ok.results.len() != n {
            return Err(RelayError::UnexpectedReply);
        }
        Ok(ok
            .results
            .into_iter()
            .map(|r| match r.error {
                None => Ok(()),
                Some(e) => Err(frame::remote_error(&e)),
            })
            .collect())
    }

    /// Fetches up to `limit` envelopes after `after` (or from the head).
    pub async fn fetch(&self, after: Option<EnvelopeId>, limit: u32) -> Result<FetchPage> {
        let req = Req::Fetch(sotto_proto::relay::Fetch {
            after: after.map(|a| a.0.to_vec()).unwrap_or_default(),
            limit,
        });
        let Resp::FetchOk(ok) = self.request(req).await? else {
            return Err(RelayError::UnexpectedReply);
        };
        let envelopes = ok
            .envelopes
            .into_iter()
            .map(|e| {
                Ok(ReceivedEnvelope {
                    id: EnvelopeId::from_slice(&e.id)?,
                    payload: e.payload,
                })
            })
            .collect::<Result<_>>()?;
        Ok(FetchPage {
            envelopes,
            more: ok.more,
        })
    }

    /// Acknowledges (deletes for good) envelopes; returns how many existed.
    pub async fn ack(&self, ids: &[EnvelopeId]) -> Result<u32> {
        let req = Req::Ack(Ack {
            ids: ids.iter().map(|i| i.0.to_vec()).collect(),
        });
        match self.request(req).await? {
            Resp::AckOk(ok) => Ok(ok.removed),
            _ => Err(RelayError::UnexpectedReply),
        }
    }

    /// Opens the push stream for this mailbox.
    pub async fn subscribe(&self) -> Result<Subscription> {
        let (send, recv, _) = self.open(Req::Subscribe(Subscribe {})).await?;
        Ok(Subscription {
            recv,
            send: Some(send),
        })
    }

    /// Publishes (replaces) the signed bundle and/or adds one-time prekeys.
    pub async fn publish_prekeys(
        &self,
        signed_bundle: Option<Vec<u8>>,
        one_time_ec: Vec<(u32, Vec<u8>)>,
        one_time_kem: Vec<(u32, Vec<u8>)>,
    ) -> Result<PrekeyCounts> {
        let items = |v: Vec<(u32, Vec<u8>)>| {
            v.into_iter()
                .map(|(id, key)| PrekeyItem { id, key })
                .collect()
        };
        let req = Req::PublishPrekeys(PublishPrekeys {
            signed_bundle: signed_bundle.unwrap_or_default(),
            one_time_ec: items(one_time_ec),
            one_time_kem: items(one_time_kem),
        });
        match self.request(req).await? {
            Resp::PrekeyCounts(c) => Ok(c),
            _ => Err(RelayError::UnexpectedReply),
        }
    }

    /// How many one-time prekeys of each kind the relay still holds for us.
    pub async fn prekey_counts(&self) -> Result<PrekeyCounts> {
        match self
            .request(Req::QueryPrekeyCounts(QueryPrekeyCounts {}))
            .await?
        {
            Resp::PrekeyCounts(c) => Ok(c),
            _ => Err(RelayError::UnexpectedReply),
        }
    }

    /// Fetches `target`'s bundle, consuming at most one one-time key of each kind.
    pub async fn fetch_bundle(&self, target: &MailboxId) -> Result<FetchedBundle> {
        let req = Req::FetchBundle(FetchBundle {
            target: target.0.to_vec(),
        });
        let Resp::Bundle(b) = self.request(req).await? else {
            return Err(RelayError::UnexpectedReply);
        };
        Ok(FetchedBundle {
            signed_bundle: b.signed_bundle,
            one_time_ec: b.one_time_ec.map(|i| (i.id, i.key)),
            one_time_kem: b.one_time_kem.map(|i| (i.id, i.key)),
        })
    }

    /// Publishes a user's signed device list (version must increase).
    pub async fn publish_device_list(&self, list: SignedDeviceList) -> Result<()> {
        let req = Req::PublishDeviceList(PublishDeviceList { list: Some(list) });
        match self.request(req).await? {
            Resp::Ok(_) => Ok(()),
            _ => Err(RelayError::UnexpectedReply),
        }
    }

    /// Fetches a user's device list; `None` if never published.
    pub async fn fetch_device_list(&self, user_key: &[u8; 32]) -> Result<Option<SignedDeviceList>> {
        let req = Req::FetchDeviceList(FetchDeviceList {
            user_key: user_key.to_vec(),
        });
        match self.request(req).await {
            Ok(Resp::DeviceList(l)) => Ok(Some(l)),
            Ok(_) => Err(RelayError::UnexpectedReply),
            Err(e) if e.remote_code() == Some(sotto_proto::relay::ErrorCode::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Uploads an already-encrypted blob of exactly `len` bytes, streamed from
    /// `reader` (never held whole in memory). Retry from scratch on failure.
    pub async fn upload_blob<R: AsyncRead + Unpin>(
        &self,
        len: u64,
        mut reader: R,
    ) -> Result<BlobId> {
        let (mut send, mut recv, id) = self
            .open(Req::BlobUpload(BlobUpload { length: len }))
            .await?;
        let copied = tokio::io::copy(&mut (&mut reader).take_exact(len), &mut send).await?;
        if copied != len {
            return Err(RelayError::InvalidArgument(
                "reader shorter than announced length",
            ));
        }
        send.finish()?;
        match Self::read_reply(&mut recv, id).await? {
            Resp::BlobUploaded(b) => BlobId::from_slice(&b.blob_id),
            _ => Err(RelayError::UnexpectedReply),
        }
    }

    /// Downloads blob bytes from `offset` into `out`; returns the blob's
    /// total length as the relay states it. Never reads past that length
    /// (more bytes are [`RelayError::Malformed`]), so a relay cannot make the
    /// client write more than it announced.
    pub async fn download_blob<W: AsyncWrite + Unpin>(
        &self,
        blob: &BlobId,
        offset: u64,
        out: W,
    ) -> Result<u64> {
        self.download(blob, offset, None, out).await
    }

    /// Like [`RelayClient::download_blob`], for a blob whose total length the
    /// caller knows (an attachment pointer names it): a relay announcing any
    /// other length is refused before a byte is written.
    pub async fn download_blob_exact<W: AsyncWrite + Unpin>(
        &self,
        blob: &BlobId,
        offset: u64,
        length: u64,
        out: W,
    ) -> Result<u64> {
        self.download(blob, offset, Some(length), out).await
    }

    async fn download<W: AsyncWrite + Unpin>(
        &self,
        blob: &BlobId,
        offset: u64,
        expected: Option<u64>,
        mut out: W,
    ) -> Result<u64> {
        let req = Req::BlobDownload(BlobDownload {
            blob_id: blob.0.to_vec(),
            offset,
        });
        let (mut send, mut recv, id) = self.open(req).await?;
        send.finish()?;
        let Resp::BlobInfo(info) = Self::read_reply(&mut recv, id).await? else {
            return Err(RelayError::UnexpectedReply);
        };
        if expected.is_some_and(|want| want != info.length) {
            return Err(RelayError::Malformed(
                "blob length differs from the expected one",
            ));
        }
        let want = info.length.saturating_sub(offset);
        let got = tokio::io::copy(&mut (&mut recv).take_exact(want), &mut out).await?;
        out.flush().await?;
        if got != want {
            return Err(RelayError::Truncated);
        }
        let mut extra = [0u8; 1];
        if tokio::io::AsyncReadExt::read(&mut recv, &mut extra).await? != 0 {
            return Err(RelayError::Malformed("blob longer than announced"));
        }
        Ok(info.length)
    }

    /// Registers (or with an empty token, clears) an opaque push token.
    pub async fn register_push_token(&self, token: Vec<u8>) -> Result<()> {
        match self
            .request(Req::RegisterPushToken(RegisterPushToken { token }))
            .await?
        {
            Resp::Ok(_) => Ok(()),
            _ => Err(RelayError::UnexpectedReply),
        }
    }

    /// Registers the verifier of the delivery token this device hands its
    /// contacts ([`crate::auth::delivery_verifier`]), replacing any earlier
    /// one; `None` clears it (every sender is then counted as a contact).
    pub async fn set_delivery_token(&self, token: Option<&[u8; 32]>) -> Result<()> {
        let verifier = token
            .map(|t| crate::auth::delivery_verifier(t).to_vec())
            .unwrap_or_default();
        match self
            .request(Req::SetDeliveryToken(SetDeliveryToken { verifier }))
            .await?
        {
            Resp::Ok(_) => Ok(()),
            _ => Err(RelayError::UnexpectedReply),
        }
    }
}

/// `AsyncReadExt::take` under a name that says what the upload relies on.
trait TakeExact: AsyncRead + Sized {
    fn take_exact(self, n: u64) -> tokio::io::Take<Self> {
        tokio::io::AsyncReadExt::take(self, n)
    }
}
impl<R: AsyncRead> TakeExact for R {}

/// The relay's answer per item of a batch or shared send, checked to be one
/// per item sent.
fn per_item(
    results: Vec<sotto_proto::relay::SendResult>,
    n: usize,
) -> Result<Vec<Result<EnvelopeId>>> {
    if results.len() != n {
        return Err(RelayError::UnexpectedReply);
    }
    Ok(results
        .into_iter()
        .map(|r| match r.error {
            Some(e) => Err(frame::remote_error(&e)),
            None => EnvelopeId::from_slice(&r.envelope_id),
        })
        .collect())
}
