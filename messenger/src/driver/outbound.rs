//! Sending, the network half: runs the engine's outbox planner
//! (`engine::outbound`) against the relays. Each step the planner asks for
//! is one request on the right relay's connection; its result goes back to
//! the planner. No decision is made here but one: how long an item may
//! take before its relay connection is considered dead.

use std::sync::Arc;

use rand_core::OsRng;
use sotto_relay::RelayClient;

use super::{now_ms, Inner};
use crate::engine::address::{RelayAddress, UserAddress};
use crate::engine::devices::DeviceList;
use crate::engine::outbound::{Input, Pass, Planner, Step};
use crate::error::{Error, Result};
use sotto_core::store::Store;

/// Longest one outbox item may take before its relay connections are
/// considered dead and replaced (a relay killed without closing its
/// connections is otherwise only noticed at the QUIC idle timeout).
pub(crate) const ITEM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Sends everything in the outbox once.
pub(crate) async fn drain<S: Store + Send + 'static>(inner: &Arc<Inner<S>>) -> Result<Pass> {
    let cache = std::mem::take(
        &mut *inner
            .planner_cache
            .lock()
            .map_err(|_| Error::storage("key cache lock poisoned"))?,
    );
    let mut planner =
        inner.with_device(|d| Planner::new(d, inner.me.clone(), inner.certificate, cache))?;
    let mut item: Option<(u64, tokio::time::Instant)> = None;
    loop {
        let step = inner.with_device(|d| planner.poll(d, now_ms(), &mut OsRng))?;
        if planner.take_events() {
            inner.events_ready();
        }
        let deadline = match (item, planner.current_item()) {
            (Some((seq, deadline)), Some(now)) if seq == now => deadline,
            (_, current) => {
                let deadline = tokio::time::Instant::now() + ITEM_TIMEOUT;
                item = current.map(|seq| (seq, deadline));
                deadline
            }
        };
        let (relay, call) = match step {
            Step::Done(pass) => {
                if let Ok(mut cache) = inner.planner_cache.lock() {
                    *cache = planner.into_cache();
                }
                // The next pass sends on new connections with new keys: one
                // connection never carries a device's sends for long.
                inner.relays.close_anonymous().await;
                return Ok(pass);
            }
            Step::FetchDeviceList(user) => (user.relay.clone(), Call::List(user)),
            Step::FetchBundle { user, mailbox } => (user.relay, Call::Bundle(mailbox)),
            Step::Submit {
                user,
                mailbox,
                envelope,
                token,
            } => (user.relay, Call::Submit(mailbox, envelope, token)),
            Step::SubmitShared {
                relay,
                envelope,
                recipients,
            } => (relay, Call::SubmitShared(envelope, recipients)),
        };
        if tokio::time::Instant::now() >= deadline {
            // The item's time ran out before this step: it waits for the
            // next pass, and no connection is blamed (the one that was slow
            // is not necessarily this step's).
            inner.with_device(|d| planner.timed_out(d))?;
            continue;
        }
        match tokio::time::timeout_at(deadline, run(inner, &relay, call)).await {
            Ok(input) => inner.with_device(|d| planner.handle(d, input, now_ms(), &mut OsRng))?,
            Err(_) => {
                // The relay stopped answering: drop that connection only
                // (the home one serves everything else).
                inner.forget_relay(&relay).await;
                inner.with_device(|d| planner.timed_out(d))?;
            }
        }
        if planner.take_events() {
            inner.events_ready();
        }
    }
}

/// One relay request the planner asked for.
enum Call {
    List(UserAddress),
    Bundle(sotto_relay::MailboxId),
    Submit(
        sotto_relay::MailboxId,
        Vec<u8>,
        Option<zeroize::Zeroizing<[u8; 32]>>,
    ),
    SubmitShared(
        Vec<u8>,
        Vec<(sotto_relay::MailboxId, Option<zeroize::Zeroizing<[u8; 32]>>)>,
    ),
}

/// Runs one request on `relay`'s anonymous connection (dropped after a
/// connection-level failure, so the next request reconnects).
async fn run<S: Store + Send + 'static>(
    inner: &Arc<Inner<S>>,
    relay: &RelayAddress,
    call: Call,
) -> Input {
    // This device's own list is its own business (on the mailbox's
    // connection): fetched on the sending one, it would name the sender of
    // the envelopes that follow.
    let own = matches!(&call, Call::List(user) if user.user == inner.me.user);
    let conn = match if own {
        inner.relay(relay).await
    } else {
        inner.anonymous(relay).await
    } {
        Ok(c) => c,
        Err(e) => {
            return match call {
                Call::List(_) => Input::DeviceList(Err(e)),
                Call::Bundle(_) => Input::Bundle(Err(e)),
                Call::Submit(..) => Input::Submitted(Err(e)),
                Call::SubmitShared(..) => Input::SubmittedShared(Err(e)),
            }
        }
    };
    match call {
        Call::List(user) => {
            let r = conn.fetch_device_list(&user.user).await;
            Input::DeviceList(inner.checked(relay, &conn, r).await)
        }
        Call::Bundle(mailbox) => {
            let r = conn.fetch_bundle(&mailbox).await;
            Input::Bundle(inner.checked(relay, &conn, r).await)
        }
        Call::Submit(mailbox, envelope, token) => {
            let r = conn
                .send_with_token(&mailbox, envelope, token.as_deref())
                .await;
            Input::Submitted(inner.checked(relay, &conn, r).await)
        }
        Call::SubmitShared(envelope, recipients) => {
            let recipients = recipients
                .into_iter()
                .map(|(m, t)| (m, t.map(|t| *t)))
                .collect();
            let r = conn.send_shared(envelope, recipients).await;
            Input::SubmittedShared(inner.checked(relay, &conn, r).await.map(|results| {
                results
                    .into_iter()
                    .map(|r| r.map_err(Error::from))
                    .collect()
            }))
        }
    }
}

/// The verified device list of `user` from its relay (not yet pinned).
pub(crate) async fn fetch_devices(conn: &RelayClient, user: &UserAddress) -> Result<DeviceList> {
    let signed = conn
        .fetch_device_list(&user.user)
        .await?
        .ok_or(Error::UnknownUser)?;
    DeviceList::verify(&user.user, &signed)
}

/// Fetches `user`'s list, checks it against the pinned one (refusing a
/// rollback or an equivocation) and pins it; sessions of devices it removed
/// are deleted.
pub(crate) async fn fetch_and_pin<S: Store + Send + 'static>(
    inner: &Arc<Inner<S>>,
    conn: &Arc<RelayClient>,
    user: &UserAddress,
) -> Result<DeviceList> {
    let fetched = fetch_devices(conn, user).await;
    let list = inner.checked(&user.relay, conn, fetched).await?;
    inner.pin_list(user, &list)?;
    Ok(list)
}
