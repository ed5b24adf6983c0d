//! One task per QUIC connection: authenticate once, then serve one request
//! per bidirectional stream, each in its own task.
//!
//! Any bad input is answered with a typed error frame on that stream (or, for
//! a failed authentication, a connection close with a reason); it never
//! affects other streams or connections.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use sotto_proto::relay::{
    client_frame::Body as Req, server_frame::Body as Resp, AckOk, AuthChallenge, AuthOk, BlobInfo,
    BlobUploaded, Envelope, ErrorCode, FetchOk, QueueEmpty, SendBatchOk, SendOk, SendResult,
    SendSharedOk, ServerFrame,
};

use super::budget::{Budgeted, ConnBudget, Reservation};
use super::mailbox::Submission;
use super::State;
use crate::error::{RelayError, Result};
use crate::frame::{self, error_frame, server_frame};
use crate::ids::{BlobId, EnvelopeId, MailboxId};
use crate::limits::TokenBucket;

/// Deadline for the whole authentication exchange.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Application close codes.
const CLOSE_AUTH: u32 = 1;
/// Stream reset code for a push stream replaced by a newer subscription.
const CLOSE_SUPERSEDED: u32 = 2;
/// Stop-sending code for a push stream whose client half carried something
/// other than well-formed acks (the pushes go on).
const STOP_BAD_ACKS: u32 = 3;
/// Largest ack frame on a push stream (1,000 ids of 16 bytes, framed).
const MAX_ACK_FRAME: usize = 32 * 1024;
/// Stream-ack rate per subscription: ids per second, and the burst.
const ACK_IDS_PER_SEC: f64 = 20_000.0;
const ACK_IDS_BURST: u32 = 20_000;
/// How long the acks of a push stream that has ended are still read.
const ACK_DRAIN: Duration = Duration::from_secs(2);
/// Fetch page bounds.
const MAX_PAGE: usize = 1000;
const MAX_PAGE_BYTES: usize = 4 << 20;

struct Conn {
    mailbox: MailboxId,
    /// The source address's rate-limit key ([`crate::limits::source_key`]).
    source: std::net::IpAddr,
    budget: ConnBudget,
}

/// Decrements a counter when dropped.
struct Guard<'a>(&'a std::sync::atomic::AtomicU64);
impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one incoming connection to completion.
pub(super) async fn handle(
    state: Arc<State>,
    incoming: quinn::Incoming,
    source: std::net::IpAddr,
    address: super::budget::AddressBudget,
) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "handshake failed");
            return;
        }
    };
    state.metrics.connections.fetch_add(1, Ordering::Relaxed);
    let _g = Guard(&state.metrics.connections);
    let mailbox = match authenticate(&state, &conn).await {
        Ok(m) => m,
        Err(e) => {
            state.metrics.auth_failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "authentication failed");
            conn.close(CLOSE_AUTH.into(), refusal_code(&e).as_str_name().as_bytes());
            return;
        }
    };
    state.metrics.auth_ok.fetch_add(1, Ordering::Relaxed);
    let ctx = Arc::new(Conn {
        mailbox,
        source,
        budget: state
            .budget
            .connection(state.config.connection_budget_bytes, address),
    });
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    tokio::spawn(serve_stream(state.clone(), ctx.clone(), send, recv));
                }
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// Writes a reply within the write deadline (`write_timeout_secs`): a peer
/// that does not read its reply has its stream reset and the reply's memory
/// given back.
async fn reply_within(deadline: Duration, send: &mut quinn::SendStream, f: &ServerFrame) {
    match tokio::time::timeout(deadline, frame::write_frame(send, f)).await {
        Ok(_) => {
            let _ = send.finish();
        }
        Err(_) => {
            let _ = send.reset(0u32.into());
        }
    }
}

/// Writes a reply within the default deadline (small replies and errors).
async fn reply(send: &mut quinn::SendStream, f: &ServerFrame) {
    reply_within(Duration::from_secs(30), send, f).await
}

/// Challenge-response on the first stream; see [`crate::auth`]. The
/// deadline runs from the end of the handshake; a second stream opened
/// before `AuthOk` fails the authentication (requests are never held for
/// later). Every failure is answered on the auth stream, echoing the id of
/// the last request read there, before the caller closes the connection.
async fn authenticate(state: &State, conn: &quinn::Connection) -> Result<MailboxId> {
    let deadline = tokio::time::Instant::now() + AUTH_TIMEOUT;
    let timed_out = || RelayError::refusal(ErrorCode::NotAuthenticated, "authentication timeout");
    let (mut send, mut recv) = match tokio::time::timeout_at(deadline, conn.accept_bi()).await {
        Ok(s) => s?,
        Err(_) => return Err(timed_out()),
    };
    let mut rid = 0;
    let result = tokio::select! {
        r = exchange(conn, &mut send, &mut recv, &mut rid) => r,
        s = conn.accept_bi() => match s {
            Ok(_) => Err(RelayError::refusal(
                ErrorCode::NotAuthenticated,
                "request before authentication",
            )),
            Err(e) => Err(e.into()),
        },
        _ = tokio::time::sleep_until(deadline) => Err(timed_out()),
    };
    match &result {
        Ok(_) => {
            let _ = send.finish();
        }
        Err(RelayError::Connection(_)) => {}
        Err(e) => {
            if e.code() == ErrorCode::Malformed || e.code() == ErrorCode::FrameTooLarge {
                state
                    .metrics
                    .malformed_frames
                    .fetch_add(1, Ordering::Relaxed);
            }
            // Short waits: the connection is closed right after.
            let f = error_frame(rid, refusal_code(e), &detail(e));
            if let Ok(Ok(())) =
                tokio::time::timeout(Duration::from_secs(1), frame::write_frame(&mut send, &f))
                    .await
            {
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
            }
        }
    }
    result
}

/// The exchange itself: `AuthBegin` -> `AuthChallenge`, `AuthProve` -> `AuthOk`.
/// `rid` holds the id for an error reply: the failing frame's own (0 if it
/// is not a `ClientFrame` at all), else the last request read here.
async fn exchange(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    rid: &mut u64,
) -> Result<MailboxId> {
    let bytes = frame::read_frame(recv, 1024)
        .await?
        .ok_or(RelayError::Truncated)?;
    let (id, body) =
        frame::decode_client(&bytes).inspect_err(|_| *rid = frame::request_id(&bytes))?;
    *rid = id;
    let Req::AuthBegin(_) = body else {
        return Err(RelayError::refusal(
            ErrorCode::NotAuthenticated,
            "authenticate first",
        ));
    };
    let mut nonce = [0u8; 32];
    OsRng.fill_bytes(&mut nonce);
    let ch = server_frame(
        *rid,
        Resp::AuthChallenge(AuthChallenge {
            nonce: nonce.to_vec(),
        }),
    );
    frame::write_frame(send, &ch).await?;
    let bytes = frame::read_frame(recv, 1024)
        .await?
        .ok_or(RelayError::Truncated)?;
    let (id, body) =
        frame::decode_client(&bytes).inspect_err(|_| *rid = frame::request_id(&bytes))?;
    *rid = id;
    let Req::AuthProve(p) = body else {
        return Err(RelayError::refusal(ErrorCode::AuthFailed, "expected proof"));
    };
    let binding = crate::auth::channel_binding(conn, &nonce)?;
    // The nonce lives only in this stack frame: it is consumed here.
    let pk = crate::auth::verify(&binding, &nonce, &p.device_key, &p.signature)?;
    let ok = server_frame(
        *rid,
        Resp::AuthOk(AuthOk {
            mailbox: pk.to_vec(),
        }),
    );
    frame::write_frame(send, &ok).await?;
    Ok(MailboxId(pk))
}

fn refusal_code(e: &RelayError) -> ErrorCode {
    match e.code() {
        ErrorCode::Unspecified => ErrorCode::AuthFailed,
        c => c,
    }
}

/// Content-free text for an error frame.
fn detail(e: &RelayError) -> String {
    match e {
        RelayError::Remote { detail, .. } => detail.clone(),
        RelayError::Storage(_) => "storage failure".into(),
        other => other.to_string(),
    }
}

/// Counts a request as in flight for graceful shutdown.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve_stream(
    state: Arc<State>,
    ctx: Arc<Conn>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    // The request's bytes are held against the connection's and the relay's
    // memory budgets (see `super::budget`) until its reply is written.
    let mut budgeted = Budgeted {
        budget: &ctx.budget,
        held: Reservation::default(),
    };
    let read = tokio::time::timeout(
        Duration::from_secs(state.config.request_timeout_secs),
        frame::read_frame_with(&mut recv, state.config.max_frame_bytes, &mut budgeted),
    )
    .await;
    let held = budgeted.held;
    let bytes = match read {
        Ok(Ok(Some(b))) => b,
        Ok(Ok(None)) => {
            state
                .metrics
                .malformed_frames
                .fetch_add(1, Ordering::Relaxed);
            reply(
                &mut send,
                &error_frame(0, ErrorCode::Malformed, "empty request stream"),
            )
            .await;
            return;
        }
        Ok(Err(e)) if e.code() == ErrorCode::Overloaded => {
            state.metrics.overloaded.fetch_add(1, Ordering::Relaxed);
            drop(held);
            reply(&mut send, &error_frame(0, e.code(), &detail(&e))).await;
            return;
        }
        Ok(Err(e)) => {
            state
                .metrics
                .malformed_frames
                .fetch_add(1, Ordering::Relaxed);
            drop(held);
            reply(&mut send, &error_frame(0, e.code(), &detail(&e))).await;
            return;
        }
        Err(_) => {
            reply(
                &mut send,
                &error_frame(0, ErrorCode::Malformed, "request timeout"),
            )
            .await;
            return;
        }
    };
    let (rid, body) = match frame::decode_client(&bytes) {
        Ok(x) => x,
        Err(e) => {
            state
                .metrics
                .malformed_frames
                .fetch_add(1, Ordering::Relaxed);
            let rid = frame::request_id(&bytes);
            reply(&mut send, &error_frame(rid, e.code(), &detail(&e))).await;
            return;
        }
    };
    drop(bytes);
    // In flight from here: a graceful shutdown waits for it (at most 10 s).
    state.in_flight.fetch_add(1, Ordering::AcqRel);
    let _f = InFlight(&state.in_flight);
    if let Req::Subscribe(_) = body {
        // Acks may follow on the same stream: read them on the side.
        let mut acks = AbortOnDrop(tokio::spawn(stream_acks(state.clone(), ctx.mailbox, recv)));
        subscribe(&state, &ctx, rid, &mut send).await;
        // The pushes ended (shutdown, a newer subscription, the client):
        // acks the client wrote before it saw the end are still arriving,
        // and are applied up to its FIN, for at most `ACK_DRAIN`.
        let _ = tokio::time::timeout(ACK_DRAIN, &mut acks.0).await;
        return;
    }
    let mut held = held;
    match dispatch(&state, &ctx, rid, body, &mut send, &mut recv).await {
        Ok(Some(f)) => {
            // A reply (a fetch page may be 4 MiB) is held against the same
            // budgets while it is written.
            let len = prost::Message::encoded_len(&f);
            let deadline = Duration::from_secs(state.config.write_timeout_secs);
            match ctx.budget.reserve(&mut held, len).await {
                Ok(()) => reply_within(deadline, &mut send, &f).await,
                Err(e) => {
                    state.metrics.overloaded.fetch_add(1, Ordering::Relaxed);
                    reply(&mut send, &error_frame(rid, e.code(), &detail(&e))).await
                }
            }
        }
        Ok(None) => {
            let _ = send.finish();
        }
        Err(e) => {
            if matches!(e, RelayError::Truncated | RelayError::Malformed(_)) {
                state
                    .metrics
                    .malformed_frames
                    .fetch_add(1, Ordering::Relaxed);
            }
            reply(&mut send, &error_frame(rid, e.code(), &detail(&e))).await;
        }
    }
}

/// Takes `n` sends from the sender's key and source address (relay-wide
/// buckets: a new connection starts where the last one left off).
fn take_sends(state: &State, ctx: &Conn, n: usize) -> Result<()> {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    if state
        .sends
        .try_take(ctx.mailbox, ctx.source, n, Instant::now())
    {
        Ok(())
    } else {
        Err(RelayError::refusal(
            ErrorCode::RateLimited,
            "send rate limited",
        ))
    }
}

/// One registration (delivery or push token) from the caller's address.
fn take_registration(state: &State, ctx: &Conn) -> Result<()> {
    let ok = state
        .registrations
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .try_take(ctx.source, 1, Instant::now());
    if ok {
        Ok(())
    } else {
        Err(RelayError::refusal(
            ErrorCode::RateLimited,
            "token registrations rate limited",
        ))
    }
}

/// A delivery token is empty (a stranger) or 32 bytes.
fn token(t: Vec<u8>) -> Result<Vec<u8>> {
    if t.is_empty() || t.len() == 32 {
        Ok(t)
    } else {
        Err(RelayError::refusal(
            ErrorCode::Malformed,
            "delivery token must be empty or 32 bytes",
        ))
    }
}

/// One item's outcome in a batch or shared send.
fn send_result(r: Result<EnvelopeId>) -> SendResult {
    match r {
        Ok(id) => SendResult {
            envelope_id: id.0.to_vec(),
            error: None,
        },
        Err(e) => SendResult {
            envelope_id: vec![],
            error: Some(sotto_proto::relay::Error {
                code: e.code() as i32,
                detail: detail(&e),
            }),
        },
    }
}

/// The items of a `SendBatch` or `SendEphemeral`, refused whole past
/// `max_batch_items`, for a malformed recipient or token, or past the send
/// rate (one token per item).
fn batch(
    state: &State,
    ctx: &Conn,
    items: Vec<sotto_proto::relay::Send>,
) -> Result<Vec<Submission>> {
    if items.len() > state.config.max_batch_items {
        return Err(RelayError::refusal(
            ErrorCode::TooManyItems,
            "batch too large",
        ));
    }
    let items = items
        .into_iter()
        .map(|s| {
            Ok(Submission {
                to: recipient(&s.recipient)?,
                payload: s.payload,
                delivery_token: token(s.delivery_token)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    take_sends(state, ctx, items.len())?;
    Ok(items)
}

fn recipient(b: &[u8]) -> Result<MailboxId> {
    MailboxId::from_slice(b)
        .map_err(|_| RelayError::refusal(ErrorCode::Malformed, "recipient must be 32 bytes"))
}

async fn dispatch(
    state: &State,
    ctx: &Conn,
    rid: u64,
    body: Req,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<Option<ServerFrame>> {
    let ok = |b: Resp| Ok(Some(server_frame(rid, b)));
    match body {
        Req::AuthBegin(_) | Req::AuthProve(_) => Err(RelayError::refusal(
            ErrorCode::AlreadyAuthenticated,
            "connection already authenticated",
        )),
        Req::Send(s) => {
            let started = Instant::now();
            let to = recipient(&s.recipient)?;
            if s.payload.len() > state.config.max_envelope_bytes {
                state
                    .metrics
                    .envelopes_refused
                    .fetch_add(1, Ordering::Relaxed);
                return Err(RelayError::refusal(
                    ErrorCode::EnvelopeTooLarge,
                    "envelope too large",
                ));
            }
            let delivery_token = token(s.delivery_token)?;
            take_sends(state, ctx, 1)?;
            let id = state
                .mailboxes
                .submit(vec![Submission {
                    to,
                    payload: s.payload,
                    delivery_token,
                }])
                .await
                .pop()
                .unwrap_or(Err(RelayError::UnexpectedReply))?;
            state.metrics.send_latency.observe(started.elapsed());
            ok(Resp::SendOk(SendOk {
                envelope_id: id.0.to_vec(),
            }))
        }
        Req::SendBatch(b) => {
            let started = Instant::now();
            let items = batch(state, ctx, b.items)?;
            let results = state
                .mailboxes
                .submit(items)
                .await
                .into_iter()
                .map(send_result)
                .collect();
            state.metrics.send_latency.observe(started.elapsed());
            ok(Resp::SendBatchOk(SendBatchOk { results }))
        }
        Req::SendShared(b) => {
            let started = Instant::now();
            if b.recipients.is_empty() {
                return Err(RelayError::refusal(
                    ErrorCode::Malformed,
                    "a shared send names no recipient",
                ));
            }
            if b.recipients.len() > state.config.max_shared_recipients {
                return Err(RelayError::refusal(
                    ErrorCode::TooManyItems,
                    "too many recipients",
                ));
            }
            let mut seen = std::collections::HashSet::with_capacity(b.recipients.len());
            let recipients = b
                .recipients
                .into_iter()
                .map(|r| {
                    let to = recipient(&r.mailbox)?;
                    if !seen.insert(to) {
                        return Err(RelayError::refusal(
                            ErrorCode::Malformed,
                            "a recipient named twice",
                        ));
                    }
                    Ok((to, token(r.delivery_token)?))
                })
                .collect::<Result<Vec<_>>>()?;
            take_sends(state, ctx, recipients.len())?;
            let results = state
                .mailboxes
                .submit_shared(b.payload, recipients)
                .await
                .into_iter()
                .map(send_result)
                .collect();
            state.metrics.send_latency.observe(started.elapsed());
            ok(Resp::SendSharedOk(SendSharedOk { results }))
        }
        Req::SendEphemeral(b) => {
            let items = batch(state, ctx, b.items)?;
            // Per (source address, mailbox) first: an item past it is
            // refused alone, before the mailbox sees it.
            let now = Instant::now();
            let allowed: Vec<bool> = {
                let mut per = state.ephemeral.lock().unwrap_or_else(|e| e.into_inner());
                items
                    .iter()
                    .map(|s| per.try_take((ctx.source, s.to), 1, now))
                    .collect()
            };
            let (pass, _): (Vec<_>, Vec<_>) = items
                .into_iter()
                .zip(allowed.iter().copied())
                .partition(|(_, ok)| *ok);
            let mut delivered = state
                .mailboxes
                .submit_ephemeral(pass.into_iter().map(|(s, _)| s).collect())
                .into_iter();
            let results = allowed
                .into_iter()
                .map(|ok| {
                    let r = if ok {
                        delivered.next().unwrap_or(Err(RelayError::UnexpectedReply))
                    } else {
                        Err(RelayError::refusal(
                            ErrorCode::RateLimited,
                            "live signals to this mailbox rate limited",
                        ))
                    };
                    match r {
                        Ok(()) => SendResult {
                            envelope_id: vec![],
                            error: None,
                        },
                        Err(e) => send_result(Err(e)),
                    }
                })
                .collect();
            ok(Resp::SendBatchOk(SendBatchOk { results }))
        }
        Req::Fetch(f) => {
            let after = if f.after.is_empty() {
                0
            } else {
                EnvelopeId::from_slice(&f.after)?.seq()
            };
            let limit = match f.limit as usize {
                0 => 100,
                n => n.min(MAX_PAGE),
            };
            let (items, more) =
                state
                    .mailboxes
                    .fetch(&ctx.mailbox, after, limit, MAX_PAGE_BYTES)?;
            let envelopes = items
                .into_iter()
                .map(|s| Envelope {
                    id: s.id.0.to_vec(),
                    payload: s.payload,
                })
                .collect();
            ok(Resp::FetchOk(FetchOk { envelopes, more }))
        }
        Req::Ack(a) => {
            let ids = ack_ids(&a)?;
            let removed = state.mailboxes.ack(&ctx.mailbox, &ids).await?;
            ok(Resp::AckOk(AckOk { removed }))
        }
        Req::Subscribe(_) => Err(RelayError::UnexpectedReply),
        Req::PublishPrekeys(p) => ok(Resp::PrekeyCounts(
            state.directory.publish(&ctx.mailbox, p).await?,
        )),
        Req::QueryPrekeyCounts(_) => ok(Resp::PrekeyCounts(state.directory.counts(&ctx.mailbox))),
        Req::FetchBundle(f) => {
            let target = recipient(&f.target)?;
            let (bundle, low) = state.directory.fetch(&ctx.mailbox, &target).await?;
            if let Some(c) = low {
                state.mailboxes.flag_prekeys_low(&target, c);
            }
            ok(Resp::Bundle(bundle))
        }
        Req::PublishDeviceList(p) => {
            let list = p.list.ok_or(RelayError::Malformed("missing list"))?;
            state.directory.publish_device_list(list).await?;
            ok(Resp::Ok(sotto_proto::relay::Ok {}))
        }
        Req::FetchDeviceList(f) => ok(Resp::DeviceList(
            state.directory.fetch_device_list(&f.user_key)?,
        )),
        Req::BlobUpload(u) => {
            let id = state.blobs.upload(u.length, recv).await?;
            ok(Resp::BlobUploaded(BlobUploaded {
                blob_id: id.0.to_vec(),
            }))
        }
        Req::BlobDownload(d) => {
            let id = BlobId::from_slice(&d.blob_id)?;
            let len = state.blobs.length(&id)?;
            if d.offset > len {
                return Err(RelayError::refusal(
                    ErrorCode::InvalidArgument,
                    "offset beyond end",
                ));
            }
            frame::write_frame(
                send,
                &server_frame(rid, Resp::BlobInfo(BlobInfo { length: len })),
            )
            .await?;
            state.blobs.download(&id, d.offset, len, send).await?;
            Ok(None)
        }
        Req::SetDeliveryToken(t) => {
            take_registration(state, ctx)?;
            state
                .mailboxes
                .set_delivery_verifier(&ctx.mailbox, &t.verifier)
                .await?;
            ok(Resp::Ok(sotto_proto::relay::Ok {}))
        }
        Req::RegisterPushToken(t) => {
            if t.token.len() > 4096 {
                return Err(RelayError::refusal(
                    ErrorCode::InvalidArgument,
                    "push token too long",
                ));
            }
            take_registration(state, ctx)?;
            state
                .mailboxes
                .set_push_token(&ctx.mailbox, t.token)
                .await?;
            ok(Resp::Ok(sotto_proto::relay::Ok {}))
        }
    }
}

/// The ids of an `Ack` (request or stream frame): at most a page of them.
fn ack_ids(a: &sotto_proto::relay::Ack) -> Result<Vec<EnvelopeId>> {
    if a.ids.len() > MAX_PAGE {
        return Err(RelayError::refusal(ErrorCode::TooManyItems, "too many ids"));
    }
    a.ids.iter().map(|i| EnvelopeId::from_slice(i)).collect()
}

/// Aborts a task when dropped (the ack reader of a push stream ends with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads `Ack` frames from the client half of a push stream and applies
/// them without a reply (see `PROTOCOL.md`, Part II section 4). Anything
/// else ends the reading with STOP_SENDING; the pushes go on. Ids are
/// rate-limited (the reader then simply pauses, and QUIC flow control holds
/// the client back), so acks cannot monopolise the mailbox index.
async fn stream_acks(state: Arc<State>, mailbox: MailboxId, mut recv: quinn::RecvStream) {
    let mut budget = TokenBucket::new(ACK_IDS_BURST, ACK_IDS_PER_SEC, Instant::now());
    loop {
        let bytes = match frame::read_frame(&mut recv, MAX_ACK_FRAME).await {
            Ok(Some(b)) => b,
            // Finished, or the connection went away: nothing malformed.
            Ok(None) | Err(RelayError::Io(_)) => return,
            Err(_) => break,
        };
        let Ok((_, Req::Ack(a))) = frame::decode_client(&bytes) else {
            break;
        };
        let Ok(ids) = ack_ids(&a) else { break };
        if ids.is_empty() {
            break;
        }
        let n = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        while !budget.try_take(n, Instant::now()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        state.mailboxes.ack_unconfirmed(&mailbox, &ids);
    }
    state
        .metrics
        .malformed_frames
        .fetch_add(1, Ordering::Relaxed);
    let _ = recv.stop(STOP_BAD_ACKS.into());
}

/// The push stream: backlog, `QueueEmpty`, then live envelopes and
/// prekey-low notices, until the client or the relay closes it, or a newer
/// subscription for the same mailbox replaces it (the stream is then
/// finished, or reset if it was stuck mid-write on a stale connection).
async fn subscribe(state: &State, ctx: &Conn, rid: u64, send: &mut quinn::SendStream) {
    let (mut changed, mut slot, mut ephemeral) = state.mailboxes.subscribe(&ctx.mailbox);
    let mut shutdown = state.shutdown.clone();
    let mut cursor = 0u64;
    let mut sent_empty = false;
    loop {
        if slot.is_superseded() {
            let _ = send.finish();
            return;
        }
        changed.borrow_and_update();
        if let Some(c) = state.mailboxes.take_prekeys_low(&ctx.mailbox) {
            if frame::write_frame(send, &server_frame(rid, Resp::PrekeyCounts(c)))
                .await
                .is_err()
            {
                return;
            }
        }
        let (page, more) = match state
            .mailboxes
            .fetch_live(&ctx.mailbox, cursor, 256, 1 << 20)
        {
            Ok(x) => x,
            Err(e) => {
                reply(send, &error_frame(rid, e.code(), "storage failure")).await;
                return;
            }
        };
        let mut buf = Vec::new();
        for s in page {
            cursor = s.id.seq();
            buf.extend(frame::encode(&server_frame(
                rid,
                Resp::Envelope(Envelope {
                    id: s.id.0.to_vec(),
                    payload: s.payload,
                }),
            )));
        }
        if !more && !sent_empty {
            buf.extend(frame::encode(&server_frame(
                rid,
                Resp::QueueEmpty(QueueEmpty {}),
            )));
            sent_empty = true;
        }
        if !buf.is_empty() {
            tokio::select! {
                r = tokio::io::AsyncWriteExt::write_all(send, &buf) => if r.is_err() { return },
                _ = slot.superseded() => {
                    // A frame may be half written: abort rather than finish.
                    let _ = send.reset(CLOSE_SUPERSEDED.into());
                    return;
                }
            }
        }
        if more {
            continue;
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            Some(first) = ephemeral.recv() => {
                // Live-only payloads: written now (with any that queued
                // behind the first), never kept for a later subscription.
                let mut buf = Vec::new();
                let mut next = Some(first);
                while let Some(payload) = next {
                    buf.extend(frame::encode(&server_frame(
                        rid,
                        Resp::Ephemeral(Envelope { id: Vec::new(), payload }),
                    )));
                    next = ephemeral.try_recv().ok();
                }
                tokio::select! {
                    r = tokio::io::AsyncWriteExt::write_all(send, &buf) => if r.is_err() { return },
                    _ = slot.superseded() => {
                        let _ = send.reset(CLOSE_SUPERSEDED.into());
                        return;
                    }
                }
            }
            _ = send.stopped() => return,
            _ = slot.superseded() => {
                let _ = send.finish();
                return;
            }
            _ = shutdown.changed() => {
                let _ = send.finish();
                return;
            }
        }
    }
}
