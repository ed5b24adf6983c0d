//! Groups, decided with no I/O (PROTOCOL.md III.12): membership as a signed
//! hash chain of changes ([`state`]), each sending device's sender key
//! ([`sotto_core::sender_key`]) handed to member devices over the pairwise
//! sessions, and group messages encrypted once.
//!
//! The relay never learns a group exists: changes and keys travel inside
//! pairwise sessions, and a group message is a sender-key message whose
//! group id is not in it (it is the chain's context).
//!
//! What a peer can make this device do is bounded: a change applies only if
//! signed by an admin of the state it follows; a key is kept only from a
//! member device (or, at most `MAX_PENDING_SENDER_KEYS` (64), until its
//! change arrives); changes whose parent is unknown wait, at most
//! [`MAX_PENDING_CHANGES`] per group; the fork log keeps `GROUP_LOG_LEN`.

pub mod history;
pub mod state;

use prost::Message as _;
use rand_core::CryptoRngCore;
use sotto_core::padding::Padding;
use sotto_core::ratchet::ChainKey;
use sotto_core::sender_key::{
    ReceivingChain, SenderKeyDistribution, SenderKeyHeader, SendingChain,
};
use sotto_core::store::{Store, Txn};
use sotto_core::Device;
use sotto_proto::client as pb;

use self::history::{History, Insert, MAX_HISTORY};
use self::state::{sign_change, GroupId, GroupState, VerifiedChange, MAX_GROUP_MEMBERS};
use super::account::DeviceCertificate;
use super::address::UserAddress;
use super::events::{EventBuilder, MessageId};
use super::fragments;
use super::packed::{DeviceSet, UserSet};
use super::records::{self, ACCEPTED};
use crate::error::{Error, Result};

/// Changes kept per group while the change they follow is missing…
pub const MAX_PENDING_CHANGES: usize = 32;
/// …and per author.
pub const MAX_PENDING_PER_AUTHOR: usize = 4;
/// Distributions kept per sending user while their group or member is not
/// known yet (of `MAX_PENDING_SENDER_KEYS` (64) in all).
pub const MAX_PENDING_KEYS_PER_SENDER: usize = 4;
/// A sending chain is replaced after this many messages…
pub const ROTATE_AFTER_MESSAGES: u32 = 10_000;
/// …or this long (a leaked chain key heals within a week).
pub const ROTATE_AFTER_MS: u64 = 7 * 24 * 3600 * 1000;
/// Chains kept per member device: the newest and the one before it (its
/// messages may still be in flight).
pub const CHAINS_PER_DEVICE: usize = 2;

/// [`pb::GroupRecord::status`].
pub(crate) const MEMBER: u32 = 0;
pub(crate) const INVITED: u32 = 1;
pub(crate) const GONE: u32 = 2;

/// [`pb::GroupEvent::kind`].
const EVENT_APPLIED: u32 = 0;
const EVENT_INVITED: u32 = 1;
const EVENT_REMOVED: u32 = 2;

/// Where this device stands in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupStatus {
    /// A member.
    Member,
    /// Invited by a user this user has not accepted (a request).
    Invitation,
    /// No longer a member (left or removed).
    Left,
}

/// A group, as the app sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    /// Its state (members, admins, name, version).
    pub state: GroupState,
    /// Where this device stands.
    pub status: GroupStatus,
}

impl GroupInfo {
    pub(crate) fn from_record(rec: pb::GroupRecord) -> Result<Self> {
        Ok(GroupInfo {
            state: stored_state(&rec)?,
            status: match rec.status {
                MEMBER => GroupStatus::Member,
                INVITED => GroupStatus::Invitation,
                _ => GroupStatus::Left,
            },
        })
    }
}

/// What a received group change did.
#[derive(Debug, Default)]
pub(crate) struct Received {
    /// Events were queued.
    pub(crate) events: bool,
    /// Outbox items were queued.
    pub(crate) outbox: bool,
    /// A branch with changes of this device lost a fork: make them again.
    pub(crate) rebase: Option<GroupId>,
}

/// Creates a group with this user as its first admin and `members`;
/// queues the creation to every member (and this user's other devices).
#[allow(clippy::too_many_arguments)]
pub(crate) fn create<S: Store>(
    device: &mut Device<S>,
    me: &UserAddress,
    certificate: &DeviceCertificate,
    name: &str,
    members: &[UserAddress],
    now_ms: u64,
    rng: &mut impl CryptoRngCore,
) -> Result<GroupId> {
    let mut id = [0u8; 32];
    rng.fill_bytes(&mut id);
    let id = GroupId(id);
    let mut actions = vec![add_action(me, true)];
    let mut named = std::collections::HashSet::from([me.user]);
    for m in members {
        if named.insert(m.user) {
            actions.push(add_action(m, false));
        }
    }
    if actions.len() > MAX_GROUP_MEMBERS {
        return Err(Error::GroupTooLarge("more than 1,000 members"));
    }
    actions.push(pb::GroupAction {
        action: Some(pb::group_action::Action::Rename(name.to_owned())),
    });
    let empty = GroupState::empty(id);
    let change = sign_change(device, certificate, &empty, actions, now_ms)?;
    let after = empty.apply(&change).map_err(caller_error)?;
    device.store_mut().transaction(|tx| -> Result<()> {
        // The creation is the root of every member's history: no change
        // can compete with it.
        let rec = pb::GroupRecord {
            state: Some(after.to_pb()),
            status: MEMBER,
            root: Some(after.to_pb()),
            ..Default::default()
        };
        records::put_group(tx, &id.0, &rec)?;
        queue_update(tx, me, &empty, &after, &change, None)?;
        Ok(())
    })?;
    Ok(id)
}

/// Makes a change of group `id` (this device signs it); queues it to every
/// member of the new state, to the users it removes, and to this user's
/// other devices. Removing anyone starts a new sending chain here.
pub(crate) fn change<S: Store>(
    device: &mut Device<S>,
    me: &UserAddress,
    certificate: &DeviceCertificate,
    id: GroupId,
    actions: Vec<pb::GroupAction>,
    now_ms: u64,
) -> Result<()> {
    let before = device.store_mut().transaction(|tx| current(tx, id))?;
    let leaving = matches!(actions.as_slice(), [pb::GroupAction { action: Some(pb::group_action::Action::Remove(u)) }] if u.as_slice() == me.user);
    if !before.is_admin(&me.user) && !leaving {
        return Err(Error::NotGroupAdmin);
    }
    let change = sign_change(device, certificate, &before, actions, now_ms)?;
    let after = before.apply(&change).map_err(caller_error)?;
    device.store_mut().transaction(|tx| -> Result<()> {
        let mut rec = records::group(tx, &id.0)?.ok_or(Error::UnknownGroup)?;
        let mut history = load_history(&rec)?;
        let known = history.clone();
        // The head has no valid child (else the chain would go on), so the
        // change becomes the head.
        if history.insert(change.clone())? != Insert::Added || history.canonical().1 != after {
            return Err(Error::invalid_argument("the group changed meanwhile"));
        }
        rec.own_changes.push(change.hash.to_vec());
        if rec.own_changes.len() > MAX_HISTORY {
            rec.own_changes.remove(0);
        }
        history.prune();
        store_history(&mut rec, &history);
        settle(tx, me, &mut rec, &before, &after)?;
        records::put_group(tx, &id.0, &rec)?;
        queue_update(tx, me, &before, &after, &change, Some(&known))?;
        Ok(())
    })
}

/// Makes again, on the chain that won, this device's changes that left it
/// (those that still apply).
pub(crate) fn rebase<S: Store>(
    device: &mut Device<S>,
    me: &UserAddress,
    certificate: &DeviceCertificate,
    id: GroupId,
    now_ms: u64,
) -> Result<bool> {
    let lost = device.store_mut().transaction(|tx| -> Result<_> {
        let Some(mut rec) = records::group(tx, &id.0)? else {
            return Ok(Vec::new());
        };
        let lost = std::mem::take(&mut rec.rebase);
        records::put_group(tx, &id.0, &rec)?;
        Ok(lost)
    })?;
    let mut any = false;
    for signed in lost {
        let Ok(c) = VerifiedChange::stored(&signed) else {
            continue;
        };
        let Ok(state) = device.store_mut().transaction(|tx| current(tx, id)) else {
            return Ok(any);
        };
        let trial = sign_change(device, certificate, &state, c.body.actions.clone(), now_ms)?;
        if state.apply(&trial).is_ok()
            && change(device, me, certificate, id, c.body.actions, now_ms).is_ok()
        {
            any = true;
        }
    }
    Ok(any)
}

/// The current state of a group this device is a member of.
pub(crate) fn current(tx: &impl Txn, id: GroupId) -> Result<GroupState> {
    let rec = records::group(tx, &id.0)?.ok_or(Error::UnknownGroup)?;
    if rec.status == GONE {
        return Err(Error::UnknownGroup);
    }
    stored_state(&rec)
}

/// Reads a stored record as sending and receiving do (its state, root,
/// history and canonical chain): a record read from a hostile disk is an
/// error, never a panic.
#[cfg(feature = "fuzzing")]
pub(crate) fn read_stored(rec: &pb::GroupRecord) -> Result<()> {
    stored_state(rec)?;
    let _ = load_history(rec)?.canonical();
    Ok(())
}

fn stored_state(rec: &pb::GroupRecord) -> Result<GroupState> {
    GroupState::from_pb(rec.state.as_ref().ok_or(Error::corrupt("app"))?)
        .map_err(|_| Error::corrupt("app"))
}

fn load_history(rec: &pb::GroupRecord) -> Result<History> {
    let root = GroupState::from_pb(rec.root.as_ref().ok_or(Error::corrupt("app"))?)
        .map_err(|_| Error::corrupt("app"))?;
    Ok(History {
        root,
        changes: rec
            .history
            .iter()
            .map(VerifiedChange::stored)
            .collect::<Result<_>>()?,
    })
}

fn store_history(rec: &mut pb::GroupRecord, h: &History) {
    rec.root = Some(h.root.to_pb());
    rec.history = h.changes.iter().map(|c| c.signed.clone()).collect();
    rec.state = Some(h.canonical().1.to_pb());
}

fn add_action(who: &UserAddress, admin: bool) -> pb::GroupAction {
    pb::GroupAction {
        action: Some(pb::group_action::Action::Add(pb::GroupMember {
            address: who.to_string(),
            admin,
            admin_since: 0,
        })),
    }
}

/// A rule broken by this device's own change is the caller's mistake.
fn caller_error(e: Error) -> Error {
    match e {
        Error::GroupRejected("too many members") => Error::GroupTooLarge("more than 1,000 members"),
        Error::GroupRejected(why) => Error::Core(sotto_core::Error::InvalidArgument(why)),
        e => e,
    }
}

/// Queues `change` to every member of `after`, to every member of `before`
/// it removed, and to this user's other devices; members new in `after`
/// also get the root and the chain of `known` (the history before the
/// change), to place the change in.
fn queue_update(
    tx: &mut impl Txn,
    me: &UserAddress,
    before: &GroupState,
    after: &GroupState,
    change: &VerifiedChange,
    known: Option<&History>,
) -> Result<()> {
    let (root, chain) = match known {
        Some(h) => {
            let (path, _) = h.canonical();
            (
                Some(h.root.to_pb()),
                path.iter().map(|&i| h.changes[i].signed.clone()).collect(),
            )
        }
        None => (None, Vec::new()),
    };
    let mut to: Vec<&state::Member> = after.members.values().collect();
    to.extend(
        before
            .members
            .values()
            .filter(|m| !after.members.contains_key(&m.address.user)),
    );
    if !after.is_member(&me.user) {
        to.push(before.members.get(&me.user).ok_or(Error::UnknownGroup)?);
    }
    let update = |state: Option<pb::GroupState>, history: Vec<pb::SignedGroupChange>| {
        pb::Content {
            sender_relay: me.relay.to_string(),
            delivery_token: Vec::new(),
            body: Some(pb::content::Body::GroupUpdate(pb::GroupUpdate {
                change: Some(change.signed.clone()),
                state,
                history,
            })),
        }
        .encode_to_vec()
    };
    // Encoded once for members, once for newcomers (a big group's change is
    // large). A newcomer gets the root and the chain if they fit the largest
    // content, else the state the change applies to (which it trusts as
    // much: it is its inviter's).
    let for_members = update(None, Vec::new());
    let mut for_newcomers = None;
    for m in to {
        let newcomer = !before.is_member(&m.address.user) && before.version > 0;
        let content = if newcomer {
            for_newcomers
                .get_or_insert_with(|| {
                    let full = update(root.clone(), chain.clone());
                    if full.len() <= fragments::MAX_CONTENT_BYTES {
                        full
                    } else {
                        update(Some(before.to_pb()), Vec::new())
                    }
                })
                .clone()
        } else {
            for_members.clone()
        };
        records::push_outbox(
            tx,
            &pb::OutboxItem {
                recipient: m.address.to_string(),
                content,
                ..Default::default()
            },
        )?;
    }
    Ok(())
}

/// What follows a new state: who left loses its chains here, and this
/// device starts a new sending chain, so no removed device gets another
/// key; a device removed itself forgets the group's keys.
fn settle(
    tx: &mut impl Txn,
    me: &UserAddress,
    rec: &mut pb::GroupRecord,
    before: &GroupState,
    after: &GroupState,
) -> Result<()> {
    rec.state = Some(after.to_pb());
    let removed: Vec<[u8; 32]> = before
        .members
        .keys()
        .filter(|u| !after.is_member(u))
        .copied()
        .collect();
    for u in &removed {
        records::delete_sender_keys(tx, &after.id.0, u)?;
    }
    if !removed.is_empty() {
        records::put_own_sender_key(tx, &after.id.0, None)?;
    }
    if !after.is_member(&me.user) {
        rec.status = GONE;
        for u in after.members.keys() {
            records::delete_sender_keys(tx, &after.id.0, u)?;
        }
        records::put_own_sender_key(tx, &after.id.0, None)?;
    } else if rec.status == GONE {
        rec.status = MEMBER;
    }
    Ok(())
}

/// True if `update` concerns a group this device is not a member of (an
/// invitation, or a change of one): what a stranger's request holds.
pub(crate) fn is_invitation(tx: &impl Txn, update: &pb::GroupUpdate) -> Result<bool> {
    let Some(id) = update
        .change
        .as_ref()
        .and_then(|c| pb::GroupChange::decode(c.body.as_slice()).ok())
        .and_then(|b| <[u8; 32]>::try_from(b.group_id.as_slice()).ok())
    else {
        return Ok(true);
    };
    Ok(records::group(tx, &id)?.is_none_or(|g| g.status != MEMBER))
}

/// The address of `user` from a group this device is a member of, if any.
/// `user`'s address as group `id` lists it.
pub(crate) fn address_in(
    tx: &impl Txn,
    id: &GroupId,
    user: &[u8; 32],
) -> Result<Option<UserAddress>> {
    let Some(rec) = records::group(tx, &id.0)? else {
        return Ok(None);
    };
    Ok(stored_state(&rec)?
        .members
        .get(user)
        .map(|m| m.address.clone()))
}

pub(crate) fn member_address(tx: &impl Txn, user: &[u8; 32]) -> Result<Option<UserAddress>> {
    for rec in records::groups(tx)? {
        if rec.status == MEMBER {
            if let Some(m) = stored_state(&rec)?.members.get(user) {
                return Ok(Some(m.address.clone()));
            }
        }
    }
    Ok(None)
}

/// Asks `(peer, device)` for the current position of its chain `chain_id`
/// (a group message of it could not be read), as a repair: within the
/// device's repair budget and its cap of waiting repairs. True if queued.
pub(crate) fn request_key(
    tx: &mut impl Txn,
    me: &UserAddress,
    peer: &UserAddress,
    device: u32,
    chain_id: &[u8; 16],
    now_ms: u64,
) -> Result<bool> {
    if !crate::engine::inbound::take_repair_slot(tx, peer, device, now_ms)? {
        return Ok(false);
    }
    records::push_repair(
        tx,
        peer,
        device,
        me.relay.to_string(),
        pb::content::Body::SenderKeyRequest(pb::SenderKeyRequest {
            chain_id: chain_id.to_vec(),
        }),
        false,
    )?;
    Ok(true)
}

/// A `SenderKeyRequest` from `(peer, device)`: if this device's chain of
/// that id is current in a group `peer` is a member of, its current
/// position goes to that device again (a repair, capped like any). True if
/// queued.
pub(crate) fn on_key_request(
    tx: &mut impl Txn,
    me: &UserAddress,
    peer: &UserAddress,
    device: u32,
    req: &pb::SenderKeyRequest,
) -> Result<bool> {
    for rec in records::groups(tx)? {
        if rec.status != MEMBER {
            continue;
        }
        let state = stored_state(&rec)?;
        let Some(own) = records::own_sender_key(tx, &state.id.0)? else {
            continue;
        };
        if own.chain_id != req.chain_id || !state.is_member(&peer.user) {
            continue;
        }
        if records::pending_repairs(tx, &peer.to_string(), device)?
            >= crate::engine::inbound::MAX_PENDING_REPAIRS
        {
            return Ok(false);
        }
        let position = SendingChain::from_record(&own.chain)?.distribution();
        records::push_repair(
            tx,
            peer,
            device,
            me.relay.to_string(),
            pb::content::Body::SenderKey(distribution_to_pb(&state.id, &position)),
            false,
        )?;
        return Ok(true);
    }
    Ok(false)
}

/// True if `user` is a member of a group this device is a member of.
pub(crate) fn shares_a_group(tx: &impl Txn, user: &[u8; 32]) -> Result<bool> {
    for rec in records::groups(tx)? {
        if rec.status == MEMBER && stored_state(&rec)?.is_member(user) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// True if this device is a member of group `id` (raw bytes from a peer).
pub(crate) fn is_member_group(tx: &impl Txn, id: &[u8]) -> Result<bool> {
    let Ok(id) = <[u8; 32]>::try_from(id) else {
        return Ok(false);
    };
    Ok(records::group(tx, &id)?.is_some_and(|g| g.status == MEMBER))
}

/// A `GroupUpdate` from `(sender, sender_device)`, inside the decrypt's
/// transaction. `Err(GroupRejected)`: invalid content (nothing applied).
pub(crate) fn on_update(
    tx: &mut impl Txn,
    me: &UserAddress,
    sender: &UserAddress,
    sender_device: u32,
    sender_state: u32,
    update: &pb::GroupUpdate,
) -> Result<Received> {
    let signed = update
        .change
        .as_ref()
        .ok_or(Error::GroupRejected("update without a change"))?;
    let change = VerifiedChange::verify(signed)?;
    // Changes come from their author device only.
    if change.author != sender.user || change.author_device != sender_device {
        return Err(Error::GroupRejected(
            "change sent by another device than its author",
        ));
    }
    let id = change.group_id();
    let trusted = sender.user == me.user || sender_state == ACCEPTED;
    let mut out = Received::default();
    let Some(mut rec) = records::group(tx, &id.0)? else {
        // A group new to this device: the creation (its root), or a change
        // adding us with the state it follows.
        let history = if change.body.version == 1 {
            History {
                root: GroupState::empty(id).apply(&change)?,
                changes: Vec::new(),
            }
        } else {
            given_history(update, &change)?
        };
        let after = history.canonical().1;
        if !after.is_member(&me.user) {
            return Err(Error::GroupRejected(
                "change of a group this device is not in",
            ));
        }
        let mut rec = pb::GroupRecord {
            status: if trusted { MEMBER } else { INVITED },
            ..Default::default()
        };
        store_history(&mut rec, &history);
        let kind = if rec.status == INVITED {
            EVENT_INVITED
        } else {
            EVENT_APPLIED
        };
        group_event(tx, sender, sender_device, &after, &change, kind)?;
        out.events = true;
        records::put_group(tx, &id.0, &rec)?;
        adopt_pending_keys(tx, &id, &rec)?;
        return Ok(out);
    };
    if change.body.version == 1 {
        // A known group is never created again (its creation is the root).
        return Ok(out);
    }
    let before = stored_state(&rec)?;
    let mut history = load_history(&rec)?;
    match history.insert(change.clone())? {
        Insert::Known => return Ok(out),
        Insert::Added => {}
        Insert::UnknownParent if update.state.is_some() => {
            // Added again, with the author's history: its changes this
            // device lacks are placed (each verified and checked as any),
            // then the change. A device that was out and holds nothing the
            // history leads from takes the author's root, as a newcomer.
            for c in update.history.iter().take(MAX_HISTORY) {
                history.insert(VerifiedChange::verify(c)?)?;
            }
            let placed = history.insert(change.clone())? != Insert::UnknownParent;
            if !placed && rec.status == GONE && !before.is_member(&me.user) {
                let h = given_history(update, &change)?;
                let after = h.canonical().1;
                if !after.is_member(&me.user) {
                    return Err(Error::GroupRejected(
                        "change of a group this device is not in",
                    ));
                }
                if rec.status == GONE {
                    rec.status = if trusted { MEMBER } else { INVITED };
                }
                rec.pending.clear();
                store_history(&mut rec, &h);
                settle(tx, me, &mut rec, &before, &after)?;
                group_event(tx, sender, sender_device, &after, &change, EVENT_APPLIED)?;
                out.events = true;
                records::put_group(tx, &id.0, &rec)?;
                adopt_pending_keys(tx, &id, &rec)?;
                return Ok(out);
            }
            if !placed {
                // Still not placeable: it waits like any; the history
                // placed above is kept (below).
                park(&mut rec, &before, history.root.version, &change);
            }
        }
        Insert::UnknownParent => {
            park(&mut rec, &before, history.root.version, &change);
            records::put_group(tx, &id.0, &rec)?;
            return Ok(out);
        }
    }
    let old_chain: Vec<[u8; 32]> = {
        let old = load_history(&rec)?;
        let (path, _) = old.canonical();
        path.iter().map(|&i| old.changes[i].hash).collect()
    };
    // Parked changes whose parent is now held.
    loop {
        let mut placed = false;
        let mut keep = Vec::new();
        for p in std::mem::take(&mut rec.pending) {
            match VerifiedChange::stored(&p).map(|c| history.insert(c)) {
                Ok(Ok(Insert::UnknownParent)) => keep.push(p),
                Ok(Ok(Insert::Added)) => placed = true,
                _ => {} // known, or it does not apply: dropped
            }
        }
        rec.pending = keep;
        if !placed {
            break;
        }
    }
    history.prune();
    rec.pending
        .retain(|p| VerifiedChange::stored(p).is_ok_and(|c| c.body.version > history.root.version));
    let (path, after) = history.canonical();
    let new_chain: Vec<[u8; 32]> = path.iter().map(|&i| history.changes[i].hash).collect();
    // Events for the changes new on the chain, in order.
    let states = history.states_along(&path);
    let mut prev = before.clone();
    for (k, &i) in path.iter().enumerate() {
        let c = &history.changes[i];
        if old_chain.contains(&c.hash) {
            prev = states[k].clone();
            continue;
        }
        let author = prev
            .members
            .get(&c.author)
            .map(|m| m.address.clone())
            .unwrap_or_else(|| sender.clone());
        let kind = if states[k].is_member(&me.user) {
            EVENT_APPLIED
        } else {
            EVENT_REMOVED
        };
        group_event(tx, &author, c.author_device, &states[k], c, kind)?;
        out.events = true;
        prev = states[k].clone();
    }
    // This device's changes that left the chain are made again on it.
    for h in &old_chain {
        if !new_chain.contains(h) && rec.own_changes.contains(&h.to_vec()) {
            if let Some(c) = history.changes.iter().find(|c| c.hash == *h) {
                rec.rebase.push(c.signed.clone());
                out.rebase = Some(id);
            }
        }
    }
    store_history(&mut rec, &history);
    settle(tx, me, &mut rec, &before, &after)?;
    records::put_group(tx, &id.0, &rec)?;
    adopt_pending_keys(tx, &id, &rec)?;
    Ok(out)
}

/// Queues every group this device is in (or invited to) to this user's
/// devices `added` (newly linked), as a `GroupSync`: its root and held
/// changes.
pub(crate) fn sync_to_own_devices(
    tx: &mut impl Txn,
    me: &UserAddress,
    added: &[u32],
) -> Result<bool> {
    let mut queued = false;
    for rec in records::groups(tx)? {
        if rec.status == GONE {
            continue;
        }
        let sync = |root: Option<pb::GroupState>, history: Vec<pb::SignedGroupChange>| {
            pb::Content {
                sender_relay: me.relay.to_string(),
                delivery_token: Vec::new(),
                body: Some(pb::content::Body::GroupSync(pb::GroupSync {
                    root,
                    history,
                    status: rec.status,
                })),
            }
            .encode_to_vec()
        };
        let mut content = sync(rec.root.clone(), rec.history.clone());
        if content.len() > fragments::MAX_CONTENT_BYTES {
            // Past the largest content: the current state as the root,
            // without the history (the new device trusts this device's
            // root as much; it loses only forks from before it).
            content = sync(rec.state.clone(), Vec::new());
        }
        records::push_outbox(
            tx,
            &pb::OutboxItem {
                recipient: me.to_string(),
                content,
                only_devices: added.to_vec(),
                ..Default::default()
            },
        )?;
        queued = true;
    }
    Ok(queued)
}

/// A `GroupSync` from another device of this user: a group this device does
/// not hold yet is taken (the root is trusted, as the own device's; every
/// change is verified and checked as any); a known one gains the changes it
/// lacks.
pub(crate) fn on_sync(
    tx: &mut impl Txn,
    me: &UserAddress,
    sync: &pb::GroupSync,
) -> Result<Received> {
    let root = GroupState::from_pb(
        sync.root
            .as_ref()
            .ok_or(Error::GroupRejected("sync without a root"))?,
    )?;
    if root.version == 0 || sync.history.len() > MAX_HISTORY {
        return Err(Error::GroupRejected("invalid group sync"));
    }
    let id = root.id;
    let mut out = Received::default();
    let (mut rec, mut history, before) = match records::group(tx, &id.0)? {
        Some(mut rec) => {
            // The user accepted the invitation on another device.
            if rec.status == INVITED && sync.status == MEMBER {
                rec.status = MEMBER;
            }
            let h = load_history(&rec)?;
            let before = stored_state(&rec)?;
            (rec, h, Some(before))
        }
        None => (
            pb::GroupRecord {
                status: if sync.status == INVITED {
                    INVITED
                } else {
                    MEMBER
                },
                ..Default::default()
            },
            History {
                root,
                changes: Vec::new(),
            },
            None,
        ),
    };
    // Placed in order; what does not follow (or apply) is left out.
    for _ in 0..2 {
        for c in &sync.history {
            let _ = history.insert(VerifiedChange::verify(c)?);
        }
    }
    history.prune();
    let after = history.canonical().1;
    if !after.is_member(&me.user) {
        return Err(Error::GroupRejected("sync of a group this user is not in"));
    }
    if before.as_ref() != Some(&after) {
        let e = EventBuilder::about(Some(me))
            .group(&id)
            .kind(pb::client_event::Kind::Group(pb::GroupEvent {
                version: after.version,
                actions: Vec::new(),
                kind: if rec.status == INVITED {
                    EVENT_INVITED
                } else {
                    EVENT_APPLIED
                },
            }));
        records::push_event(tx, e)?;
        out.events = true;
    }
    store_history(&mut rec, &history);
    if let Some(before) = &before {
        settle(tx, me, &mut rec, before, &after)?;
    }
    records::put_group(tx, &id.0, &rec)?;
    adopt_pending_keys(tx, &id, &rec)?;
    Ok(out)
}

/// Keeps a member's change whose parent has not come yet, bounded per
/// author and in all.
fn park(rec: &mut pb::GroupRecord, state: &GroupState, root_version: u64, change: &VerifiedChange) {
    let from_author = rec
        .pending
        .iter()
        .filter(|p| VerifiedChange::stored(p).is_ok_and(|c| c.author == change.author))
        .count();
    if state.is_member(&change.author)
        && change.body.version > root_version
        && from_author < MAX_PENDING_PER_AUTHOR
        && rec.pending.len() < MAX_PENDING_CHANGES
        && !rec.pending.iter().any(|p| p.body == change.signed.body)
    {
        rec.pending.push(change.signed.clone());
    }
}

/// The history a newcomer is given: the author's root, its chain (each
/// change verified and applied as any), then the change, which must follow.
fn given_history(update: &pb::GroupUpdate, change: &VerifiedChange) -> Result<History> {
    let s = update.state.as_ref().ok_or(Error::GroupRejected(
        "change of an unknown group without its state",
    ))?;
    let root = GroupState::from_pb(s)?;
    if root.id != change.group_id() || root.version == 0 {
        return Err(Error::GroupRejected("state of another group"));
    }
    if update.history.len() > MAX_HISTORY {
        return Err(Error::GroupRejected("history too long"));
    }
    let mut h = History {
        root,
        changes: Vec::new(),
    };
    for c in &update.history {
        if h.insert(VerifiedChange::verify(c)?)? == Insert::UnknownParent {
            return Err(Error::GroupRejected("history does not follow its root"));
        }
    }
    if h.insert(change.clone())? == Insert::UnknownParent {
        return Err(Error::GroupRejected(
            "state is not the one the change follows",
        ));
    }
    Ok(h)
}

fn group_event(
    tx: &mut impl Txn,
    author: &UserAddress,
    author_device: u32,
    after: &GroupState,
    change: &VerifiedChange,
    kind: u32,
) -> Result<()> {
    let e = EventBuilder::about(Some(author))
        .device(author_device)
        .group(&after.id)
        .kind(pb::client_event::Kind::Group(pb::GroupEvent {
            version: after.version,
            actions: change.body.actions.clone(),
            kind,
        }));
    records::push_event(tx, e)?;
    Ok(())
}

/// A `SenderKeyDistribution` from a member device: kept as its newest chain
/// in that group (the one before stays for messages in flight); from a
/// device whose group or membership is not known yet, parked (bounded).
pub(crate) fn on_sender_key(
    tx: &mut impl Txn,
    sender: &UserAddress,
    sender_device: u32,
    d: &pb::SenderKeyDistribution,
) -> Result<()> {
    let dist = distribution_from_pb(d)?;
    // Checked before anything is kept (a signing key that is no point).
    ReceivingChain::from_distribution(&dist)
        .map_err(|_| Error::GroupRejected("invalid sender key"))?;
    let id = GroupId::from_slice(&d.group_id)?;
    let known = records::group(tx, &id.0)?
        .filter(|g| g.status != GONE)
        .map(|g| stored_state(&g))
        .transpose()?
        .is_some_and(|s| s.is_member(&sender.user));
    if !known {
        let mut pending = records::pending_sender_keys(tx)?;
        let from_sender = pending
            .iter()
            .filter(|p| p.sender_user == sender.user)
            .count();
        if from_sender >= MAX_PENDING_KEYS_PER_SENDER {
            return Ok(());
        }
        pending.push(pb::PendingSenderKey {
            sender_user: sender.user.to_vec(),
            sender_device,
            key: Some(d.clone()),
        });
        return records::put_pending_sender_keys(tx, pending);
    }
    keep_chain(tx, &id, &sender.user, sender_device, &dist)
}

fn keep_chain(
    tx: &mut impl Txn,
    id: &GroupId,
    user: &[u8; 32],
    device: u32,
    dist: &SenderKeyDistribution,
) -> Result<()> {
    let mut keys = records::sender_keys(tx, &id.0, user, device)?;
    for stored in keys.chains.iter_mut() {
        let mut old = ReceivingChain::from_record(stored)?;
        if *old.chain_id() == dist.chain_id {
            // The same chain again: an earlier position adds the keys this
            // device never had; a later one changes nothing (never rewound
            // past what was read); another signing key is refused.
            old.extend_back(dist)
                .map_err(|_| Error::GroupRejected("chain id reused with another key"))?;
            *stored = old.to_record().to_vec();
            return records::put_sender_keys(tx, &id.0, user, device, &keys, &[]);
        }
    }
    let chain = ReceivingChain::from_distribution(dist)
        .map_err(|_| Error::GroupRejected("invalid sender key"))?;
    keys.chains.insert(0, chain.to_record().to_vec());
    keys.chains.truncate(CHAINS_PER_DEVICE);
    let ids: Vec<[u8; 16]> = keys
        .chains
        .iter()
        .filter_map(|c| ReceivingChain::from_record(c).ok().map(|c| *c.chain_id()))
        .collect();
    records::put_sender_keys(tx, &id.0, user, device, &keys, &ids)
}

/// Parked distributions of `id` whose sender is now a member are kept.
fn adopt_pending_keys(tx: &mut impl Txn, id: &GroupId, rec: &pb::GroupRecord) -> Result<()> {
    if rec.status == GONE {
        return Ok(());
    }
    let state = stored_state(rec)?;
    let pending = records::pending_sender_keys(tx)?;
    let (ready, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|p| {
        p.key.as_ref().is_some_and(|k| k.group_id == id.0)
            && <[u8; 32]>::try_from(p.sender_user.as_slice()).is_ok_and(|u| state.is_member(&u))
    });
    if ready.is_empty() {
        return Ok(());
    }
    records::put_pending_sender_keys(tx, rest)?;
    for p in ready {
        let (Some(k), Ok(user)) = (p.key, <[u8; 32]>::try_from(p.sender_user.as_slice())) else {
            continue;
        };
        let Ok(dist) = distribution_from_pb(&k) else {
            continue;
        };
        let _ = keep_chain(tx, id, &user, p.sender_device, &dist);
    }
    Ok(())
}

fn distribution_from_pb(d: &pb::SenderKeyDistribution) -> Result<SenderKeyDistribution> {
    let bad = || Error::GroupRejected("malformed sender key");
    Ok(SenderKeyDistribution {
        chain_id: d.chain_id.as_slice().try_into().map_err(|_| bad())?,
        iteration: d.iteration,
        chain_key: ChainKey::from_bytes(d.chain_key.as_slice().try_into().map_err(|_| bad())?),
        signing_public: d.signing_public.as_slice().try_into().map_err(|_| bad())?,
    })
}

fn distribution_to_pb(id: &GroupId, d: &SenderKeyDistribution) -> pb::SenderKeyDistribution {
    pb::SenderKeyDistribution {
        group_id: id.0.to_vec(),
        chain_id: d.chain_id.to_vec(),
        iteration: d.iteration,
        chain_key: d.chain_key.as_bytes().to_vec(),
        signing_public: d.signing_public.to_vec(),
    }
}

/// A group envelope's message, decrypted inside `tx`: the group it belongs
/// to and the plaintext. The sender must hold a chain this device was given
/// and be a member of the group now.
pub(crate) fn decrypt(
    tx: &mut impl Txn,
    sealed_in: &GroupId,
    sender_user: &[u8; 32],
    sender_device: u32,
    message: &[u8],
) -> Result<(GroupId, u32, Vec<u8>)> {
    let header = SenderKeyHeader::parse(message)?;
    let id = records::chain_group(tx, sender_user, sender_device, &header.chain_id)?
        .map(GroupId)
        .ok_or(Error::GroupRejected("no sender key for this chain"))?;
    // Sealed under one group's key, its chain in another (a member of both
    // re-sealing a message to burn its key): refused before the chain moves.
    if id != *sealed_in {
        return Err(Error::GroupRejected(
            "group envelope sealed under another group",
        ));
    }
    // The head, not the record: a message never decodes the history.
    let (status, members) = match records::group_head(tx, &id.0)? {
        Some(head) => head,
        None => {
            let rec = records::group(tx, &id.0)?.ok_or(Error::GroupRejected("unknown group"))?;
            let members = UserSet::of(stored_state(&rec)?.members.keys());
            (rec.status, members)
        }
    };
    if status == GONE || !members.contains(sender_user) {
        return Err(Error::GroupRejected("group message from a non-member"));
    }
    let mut keys = records::sender_keys(tx, &id.0, sender_user, sender_device)?;
    for stored in keys.chains.iter_mut() {
        let mut chain = ReceivingChain::from_record(stored)?;
        if *chain.chain_id() != header.chain_id {
            continue;
        }
        let plaintext = chain.decrypt(&id.0, message)?;
        *stored = chain.to_record().to_vec();
        records::put_sender_keys(tx, &id.0, sender_user, sender_device, &keys, &[])?;
        return Ok((id, status, plaintext));
    }
    Err(Error::GroupRejected("no sender key for this chain"))
}

/// Queues a group message: encrypted now, once, under this device's chain
/// (a new one if there is none, it is a week old or has sent
/// [`ROTATE_AFTER_MESSAGES`]); the item keeps the chain's position before
/// it, for members that have not got the chain yet.
#[allow(clippy::too_many_arguments)]
pub(crate) fn queue_message<S: Store>(
    device: &mut Device<S>,
    me: &UserAddress,
    id: GroupId,
    text: &str,
    attachments: Vec<pb::AttachmentRef>,
    now_ms: u64,
    rng: &mut impl CryptoRngCore,
) -> Result<MessageId> {
    let mut msg_id = [0u8; 16];
    rng.fill_bytes(&mut msg_id);
    let device_id = device.device_id();
    let fresh = SendingChain::generate(rng);
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    device.store_mut().transaction(|tx| -> Result<()> {
        // The head, not the record: a message never decodes the history.
        let (status, members) = match records::group_head(tx, &id.0)? {
            Some(head) => head,
            None => {
                let rec = records::group(tx, &id.0)?.ok_or(Error::UnknownGroup)?;
                let members = UserSet::of(stored_state(&rec)?.members.keys());
                (rec.status, members)
            }
        };
        if status == GONE {
            return Err(Error::UnknownGroup);
        }
        if status != MEMBER {
            return Err(Error::NotAccepted);
        }
        let mut own = records::own_sender_key(tx, &id.0)?;
        let mut chain = match &own {
            Some(o) => Some(SendingChain::from_record(&o.chain)?),
            None => None,
        };
        let stale = match (&own, &chain) {
            (Some(o), Some(c)) => {
                c.iteration() >= ROTATE_AFTER_MESSAGES
                    || now_ms.saturating_sub(o.created_ms) >= ROTATE_AFTER_MS
            }
            _ => true,
        };
        if stale {
            chain = Some(fresh.clone());
            own = Some(pb::OwnSenderKey {
                chain: Vec::new(),
                distributed: Vec::new(),
                created_ms: now_ms,
                chain_id: fresh.chain_id().to_vec(),
            });
        }
        let (Some(mut chain), Some(mut own)) = (chain, own) else {
            return Err(Error::corrupt("app"));
        };
        own.chain_id = chain.chain_id().to_vec();
        let position = chain.distribution();
        let content = pb::Content {
            sender_relay: String::new(),
            delivery_token: Vec::new(),
            body: Some(pb::content::Body::Message(pb::Message {
                id: msg_id.to_vec(),
                sent_at_ms: now_ms,
                text: text.to_owned(),
                attachments,
            })),
        };
        let message = chain.encrypt(&id.0, &content.encode_to_vec(), Padding::Padme)?;
        own.chain = chain.to_record().to_vec();
        records::put_own_sender_key(tx, &id.0, Some(&own))?;
        let envelope = seal_envelope(
            &id,
            &pb::GroupEnvelope {
                sender_user: me.user.to_vec(),
                sender_device: device_id,
                message,
            },
            &nonce,
        )?;
        records::push_outbox(
            tx,
            &pb::OutboxItem {
                message_id: msg_id.to_vec(),
                group_id: id.0.to_vec(),
                group_envelope: envelope,
                group_key: Some(distribution_to_pb(&id, &position)),
                group_member_ids: members.into_bytes(),
                ..Default::default()
            },
        )?;
        Ok(())
    })?;
    Ok(MessageId(msg_id))
}

/// The devices that hold this device's chain `chain_id` in group `id`
/// (none if the chain was replaced since).
pub(crate) fn chain_holders(tx: &impl Txn, id: &GroupId, chain_id: &[u8]) -> Result<DeviceSet> {
    match records::own_sender_key(tx, &id.0)? {
        Some(own) if own.chain_id == chain_id => DeviceSet::from_bytes(own.distributed),
        _ => Ok(DeviceSet::default()),
    }
}

/// The key a group's envelopes are sealed under (PROTOCOL.md III.12): every
/// member holds the group id, the relay never sees it.
/// `HKDF-SHA256(salt = none, ikm = group id, info = "Sotto_v1_GroupSeal")`.
pub(crate) fn seal_key(id: &GroupId) -> zeroize::Zeroizing<[u8; 32]> {
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    // 32 bytes is a valid HKDF-SHA256 output length: expand cannot fail.
    let _ = hkdf::Hkdf::<sha2::Sha256>::new(None, &id.0).expand(GROUP_SEAL_INFO, key.as_mut());
    key
}

/// HKDF info of a group's seal key.
pub const GROUP_SEAL_INFO: &[u8] = b"Sotto_v1_GroupSeal";

/// The relay payload of a group envelope: sealed under the group's key
/// with `nonce` (24 random bytes).
pub(crate) fn seal_envelope(
    id: &GroupId,
    g: &pb::GroupEnvelope,
    nonce: &[u8; 24],
) -> Result<Vec<u8>> {
    let sealed = sotto_core::sealed::seal_shared_with(
        &seal_key(id),
        nonce,
        &g.encode_to_vec(),
        Padding::Buckets,
    )?;
    Ok(pb::Envelope {
        version: 1,
        body: Some(pb::envelope::Body::SealedGroup(sealed)),
    }
    .encode_to_vec())
}

/// Opens a sealed group envelope with the key of each group this device
/// holds and has not left (none of which the relay can tell apart); the
/// group and the envelope, or `None` if no key opens it.
pub(crate) fn unseal(tx: &impl Txn, sealed: &[u8]) -> Result<Option<(GroupId, pb::GroupEnvelope)>> {
    for id in records::live_group_ids(tx, GONE)? {
        let id = GroupId(id);
        if let Ok(inner) = sotto_core::sealed::open_shared(&seal_key(&id), sealed) {
            return Ok(pb::GroupEnvelope::decode(inner.as_slice())
                .ok()
                .map(|g| (id, g)));
        }
    }
    Ok(None)
}

/// Records that `(user, device)` has the chain `chain_id` now.
pub(crate) fn mark_distributed(
    tx: &mut impl Txn,
    id: &GroupId,
    chain_id: &[u8],
    user: &[u8; 32],
    device: u32,
) -> Result<()> {
    let Some(mut own) = records::own_sender_key(tx, &id.0)? else {
        return Ok(());
    };
    if own.chain_id != chain_id {
        return Ok(());
    }
    let mut holders = DeviceSet::from_bytes(std::mem::take(&mut own.distributed))?;
    if holders.insert(user, device) {
        own.distributed = holders.into_bytes();
        records::put_own_sender_key(tx, &id.0, Some(&own))?;
        // Who a message goes to as one shared envelope changed.
        records::bump_fanout(tx)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
