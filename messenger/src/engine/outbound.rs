//! Sending, decided with no I/O: the outbox planner.
//!
//! Every outgoing message is first written to the durable outbox (so
//! sending works offline and survives crashes). A [`Planner`] walks the
//! outbox once (a pass): [`Planner::poll`] says what the driver must do
//! next ([`Step`]: fetch a device list, fetch a bundle, submit an envelope,
//! or the pass is done) and [`Planner::handle`] takes the result back.
//! Every call commits what it changed before it returns (one transaction
//! for each piece: a pinned list, a session, an encryption, the item's
//! progress), so a crash between any two steps loses nothing: the next pass
//! starts again from the outbox, whose per-device progress sends to a device
//! again only what it may not have (a crash between the relay's "accepted"
//! and the progress commit; receivers drop re-sent copies by message id).
//!
//! The rules, all here:
//! - The recipient's device list is fetched, verified against its account
//!   key and pinned (a rollback or an equivocation is refused) before every
//!   item, so a device added or removed since the last send is never missed
//!   or kept; a bundle is used only if its identity is the one the list
//!   certifies, and a session only if it belongs to that identity.
//! - Nothing goes to a blocked user; our delivery token goes only to
//!   accepted contacts and to our own devices.
//! - Two lanes: ordinary items to one relay go strictly in order (a
//!   network failure holds that relay's later items; other relays go on);
//!   repair items (retry requests, re-sends) never hold anything and are
//!   dropped after [`MAX_REPAIR_ATTEMPTS`].
//! - A full mailbox holds back only the device it belongs to; a refusal
//!   that repeats ends the item after [`MAX_PERMANENT_FAILURES`] with a
//!   `SendFailed` event.

use std::collections::{HashSet, VecDeque};

use prost::Message as _;
use rand_core::CryptoRngCore;
use sotto_core::device::{Device, DeviceAddress};
use sotto_core::padding::Padding;
use sotto_core::prekeys::PrekeyBundle;
use sotto_core::session::MessageKind;
use sotto_core::store::Store;
use sotto_core::Error as CoreError;
use sotto_proto::client as pb;
use sotto_proto::relay::{ErrorCode, SignedDeviceList};
use sotto_relay::{EnvelopeId, FetchedBundle, MailboxId};
use zeroize::Zeroizing;

use super::account::DeviceCertificate;
use super::address::{RelayAddress, UserAddress};
use super::devices::{DeviceEntry, DeviceList};
use super::envelope::{sender_mac, MacKeys};
use super::events::{DeliveryState, EventBuilder, MessageId};
use super::group::{self, state::GroupId};
use super::packed::{device_key, DeviceSet, UserSet, DEVICE};
use super::records;
use crate::error::{Error, Fault, Result};

mod plan;
use plan::{Batch, GroupPlan, Plans, Recording};

/// Attempts before a queued item is given up (with a `SendFailed` event)
/// when the failure is the recipient's (no devices, bad list), not the network.
pub(crate) const MAX_PERMANENT_FAILURES: u32 = 3;
/// Attempts before a repair item is dropped, whatever the failure.
pub(crate) const MAX_REPAIR_ATTEMPTS: u32 = 5;

/// What one pass over the outbox achieved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pass {
    /// Items still waiting (a network problem, a full mailbox): pass again
    /// after a backoff.
    pub(crate) pending: bool,
}

/// What the driver must do next.
#[derive(Debug)]
pub(crate) enum Step {
    /// Fetch `user`'s signed device list from its relay; answer with
    /// [`Input::DeviceList`].
    FetchDeviceList(UserAddress),
    /// Fetch a prekey bundle of `device` from `user`'s relay; answer with
    /// [`Input::Bundle`].
    FetchBundle {
        /// Whose device.
        user: UserAddress,
        /// Its mailbox (where the relay keeps its bundle).
        mailbox: MailboxId,
    },
    /// Submit `envelope` to `mailbox` on `user`'s relay, with the delivery
    /// token the device gave us if any; answer with [`Input::Submitted`].
    Submit {
        /// Whose device.
        user: UserAddress,
        /// Its mailbox.
        mailbox: MailboxId,
        /// The sealed envelope.
        envelope: Vec<u8>,
        /// The device's delivery token, if it gave us one.
        token: Option<Zeroizing<[u8; 32]>>,
    },
    /// Submit one group envelope to many mailboxes on `relay`, stored
    /// once there; answer with [`Input::SubmittedShared`].
    SubmitShared {
        /// The relay.
        relay: RelayAddress,
        /// The group envelope.
        envelope: Vec<u8>,
        /// Each mailbox, with the delivery token its device gave us if any.
        recipients: Vec<(MailboxId, Option<Zeroizing<[u8; 32]>>)>,
    },
    /// The pass is over.
    Done(Pass),
}

/// The result of the last [`Step`], fed back with [`Planner::handle`].
#[derive(Debug)]
pub(crate) enum Input {
    /// A device list, or `None`: the relay has none for that user.
    DeviceList(Result<Option<SignedDeviceList>>),
    /// A bundle.
    Bundle(Result<FetchedBundle>),
    /// The relay's id of the accepted envelope.
    Submitted(Result<EnvelopeId>),
    /// The relay's answer per recipient of a shared submission, in order.
    SubmittedShared(Result<Vec<Result<EnvelopeId>>>),
}

/// One device an item goes to.
#[derive(Debug, Clone)]
struct Target {
    user: UserAddress,
    device: DeviceEntry,
    /// A copy for one of this user's own devices (a `SentSync`).
    own: bool,
}

/// What a submission carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carries {
    /// The item's content, over the pairwise session.
    Pairwise,
    /// A group item's sender key, over the pairwise session.
    GroupKey,
    /// A group item's envelope to one device, on a relay that cannot take
    /// a shared submission.
    GroupMessage,
}

/// A group item's parts.
#[derive(Debug)]
struct GroupItem {
    id: GroupId,
    /// The chain the message is in.
    chain_id: Vec<u8>,
    /// The encoded `Content` handing out the chain (without the token).
    key_content: pb::Content,
    /// Members whose list is fetched before the targets are known.
    lists: VecDeque<UserAddress>,
    /// Members (at queue time, still members now).
    members: Vec<UserAddress>,
    /// A target on a held relay was skipped: the item stays.
    deferred: bool,
    /// Targets holding the chain, waiting for the shared submission.
    ready: Vec<Target>,
    /// Devices whose token the relay refused: sent again without one.
    tokenless: HashSet<[u8; DEVICE]>,
    /// Devices that hold the item's chain (read once when the item starts).
    chain_holders: DeviceSet,
    /// Relays that refused a shared submission as one they cannot take
    /// (an older relay, a smaller limit): the envelope goes per device.
    per_device: HashSet<RelayAddress>,
    /// Shared submissions a kept plan says to make, in order.
    planned: VecDeque<(RelayAddress, Batch)>,
    /// This send, recorded as a plan for the next message.
    recording: Recording,
}

/// What the planner waits for.
#[derive(Debug)]
enum Awaiting {
    List {
        own: bool,
    },
    Bundle,
    Submit {
        token: Option<Zeroizing<[u8; 32]>>,
        envelope: Vec<u8>,
        carries: Carries,
    },
    GroupList(UserAddress),
    /// A shared submission to these targets (and the tokens sent).
    Shared(Batch),
}

/// Where the current item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    RecipientList,
    OwnList,
    /// A group item: fetching the members' lists.
    GroupLists,
    Targets,
}

/// A group member's list is fetched again before a group message if it was
/// last checked longer ago than this (a new device of a member gets the
/// group's messages from then on).
pub(crate) const GROUP_LIST_MAX_AGE_MS: u64 = 3600 * 1000;
/// Devices of one member a group message goes to (a list names at most 16).
pub(crate) const MAX_DEVICES_PER_MEMBER: usize = 16;
/// Recipients of one shared submission (the relay's default limit).
pub(crate) const MAX_SHARED_RECIPIENTS: usize = 1_000;

/// The item being sent.
#[derive(Debug)]
struct Current {
    seq: u64,
    item: pb::OutboxItem,
    to: UserAddress,
    /// The content for the recipient's devices.
    content: Vec<u8>,
    /// The `SentSync` content for this user's other devices, if any.
    sync: Option<Vec<u8>>,
    targets: VecDeque<Target>,
    /// A device whose mailbox was full: the item stays for it.
    full: Option<Error>,
    stage: Stage,
    /// An envelope to submit again without the token the device replaced.
    resubmit: Option<(Vec<u8>, Carries)>,
    /// Set for a group item.
    group: Option<GroupItem>,
}

impl Current {
    /// The target the awaited step was for.
    fn front(&self) -> Result<Target> {
        self.targets
            .front()
            .cloned()
            .ok_or(Error::invalid_argument("no outbox target in progress"))
    }
}

/// What a planner keeps from one pass to the next: sender-MAC keys,
/// decoded device lists by user (a group send reads every member's list;
/// decoding its identity keys again each time would cost more than the
/// send; a list is used only while the pinned one still has its hash), and
/// groups' recipients ([`plan`]).
#[derive(Debug, Default)]
pub(crate) struct PlannerCache {
    pub(crate) mac_keys: MacKeys,
    lists: std::collections::HashMap<[u8; 32], (Vec<u8>, DeviceList)>,
    /// Groups' recipients from their last clean send ([`plan`]).
    plans: Plans,
}

/// Users whose decoded list is kept (past it the cache starts again).
const LIST_CACHE: usize = 4_096;

impl PlannerCache {
    /// `user`'s pinned list from its contact record `c`.
    fn list(&mut self, user: &[u8; 32], c: &pb::ContactRecord) -> Result<Option<DeviceList>> {
        if let Some((hash, list)) = self.lists.get(user) {
            if !c.device_list_hash.is_empty() && *hash == c.device_list_hash {
                return Ok(Some(list.clone()));
            }
        }
        let list = records::pinned_list(c)?;
        if let (Some(l), false) = (&list, c.device_list_hash.is_empty()) {
            if self.lists.len() >= LIST_CACHE {
                self.lists.clear();
            }
            self.lists
                .insert(*user, (c.device_list_hash.clone(), l.clone()));
        }
        Ok(list)
    }
}

/// One pass over the outbox (see the module documentation).
#[derive(Debug)]
pub(crate) struct Planner {
    me: UserAddress,
    device_id: u32,
    certificate: DeviceCertificate,
    items: VecDeque<(u64, pb::OutboxItem)>,
    /// Relays whose ordinary items wait (one could not go).
    held: HashSet<RelayAddress>,
    current: Option<Current>,
    awaiting: Option<Awaiting>,
    pass: Pass,
    /// Events queued since [`Planner::take_events`] last said so.
    events: bool,
    cache: PlannerCache,
}

impl Planner {
    /// A pass over the outbox of `device` (read in one transaction).
    pub(crate) fn new<S: Store>(
        device: &mut Device<S>,
        me: UserAddress,
        certificate: DeviceCertificate,
        cache: PlannerCache,
    ) -> Result<Self> {
        let items = device
            .store_mut()
            .transaction(|tx| records::outbox(tx))?
            .into();
        Ok(Planner {
            me,
            device_id: device.device_id(),
            certificate,
            items,
            held: HashSet::new(),
            current: None,
            awaiting: None,
            pass: Pass::default(),
            events: false,
            cache,
        })
    }

    /// The outbox sequence number of the item in progress, if any (the
    /// driver bounds the time one item may take).
    pub(crate) fn current_item(&self) -> Option<u64> {
        self.current.as_ref().map(|c| c.seq)
    }

    /// The caches, for the next pass.
    pub(crate) fn into_cache(self) -> PlannerCache {
        self.cache
    }

    /// True (once) if events were queued since the last call.
    pub(crate) fn take_events(&mut self) -> bool {
        std::mem::take(&mut self.events)
    }

    /// The next thing to do. Never call it twice without feeding back the
    /// result of the step it returned.
    pub(crate) fn poll<S: Store>(
        &mut self,
        device: &mut Device<S>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Step> {
        if self.awaiting.is_some() {
            return Err(Error::invalid_argument("outbox step result not fed back"));
        }
        loop {
            let Some(cur) = &mut self.current else {
                let Some((seq, item)) = self.items.pop_front() else {
                    return Ok(Step::Done(self.pass));
                };
                let relay = item.recipient.parse::<UserAddress>().ok().map(|a| a.relay);
                if !item.group_id.is_empty() {
                    match self.begin_group(device, seq, &item, now_ms) {
                        Ok(c) => self.current = c,
                        Err(e) => self.fail(device, seq, item, None, e)?,
                    }
                    continue;
                }
                if !item.repair && relay.as_ref().is_some_and(|r| self.held.contains(r)) {
                    self.pass.pending = true;
                    continue;
                }
                match self.begin(device, seq, &item, rng) {
                    Ok(c) => self.current = c,
                    Err(e) => self.fail(device, seq, item, relay, e)?,
                }
                continue;
            };
            match cur.stage {
                Stage::RecipientList => {
                    self.awaiting = Some(Awaiting::List { own: false });
                    return Ok(Step::FetchDeviceList(cur.to.clone()));
                }
                Stage::OwnList => {
                    self.awaiting = Some(Awaiting::List { own: true });
                    return Ok(Step::FetchDeviceList(self.me.clone()));
                }
                Stage::GroupLists => {
                    let next = cur.group.as_mut().and_then(|g| g.lists.pop_front());
                    match next {
                        Some(user) if self.held.contains(&user.relay) => {
                            if let Some(g) = cur.group.as_mut() {
                                g.deferred = true;
                            }
                        }
                        Some(user) => {
                            cur.to = user.clone();
                            self.awaiting = Some(Awaiting::GroupList(user.clone()));
                            return Ok(Step::FetchDeviceList(user));
                        }
                        None => {
                            if let Err(e) = self.group_targets(device, now_ms) {
                                self.fail_current(device, e)?;
                            }
                        }
                    }
                }
                Stage::Targets => match self.next_target(device, rng) {
                    Ok(Some(step)) => return Ok(step),
                    Ok(None) => self.finish(device)?,
                    Err(e) => self.fail_current(device, e)?,
                },
            }
        }
    }

    /// Takes back the result of the step [`Planner::poll`] returned.
    pub(crate) fn handle<S: Store>(
        &mut self,
        device: &mut Device<S>,
        input: Input,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<()> {
        let awaiting = self
            .awaiting
            .take()
            .ok_or(Error::invalid_argument("no outbox step in progress"))?;
        let result = match (awaiting, input) {
            (Awaiting::List { own }, Input::DeviceList(r)) => self.on_list(device, own, r, now_ms),
            (Awaiting::Bundle, Input::Bundle(r)) => self.on_bundle(device, r, now_ms, rng),
            (
                Awaiting::Submit {
                    token,
                    envelope,
                    carries,
                },
                Input::Submitted(r),
            ) => self.on_submitted(device, token, envelope, carries, r, now_ms),
            (Awaiting::GroupList(user), Input::DeviceList(r)) => {
                self.on_group_list(device, &user, r, now_ms)
            }
            (Awaiting::Shared(batch), Input::SubmittedShared(r)) => {
                self.on_shared(device, batch, r, now_ms)
            }
            _ => Err(Error::invalid_argument(
                "outbox step result of another kind",
            )),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => self.fail_current(device, e),
        }
    }

    /// The item's step failed outside this planner (the driver's time
    /// limit ran out): deferred as a network failure.
    pub(crate) fn timed_out<S: Store>(&mut self, device: &mut Device<S>) -> Result<()> {
        self.awaiting = None;
        self.fail_current(device, Error::Timeout)
    }

    /// Starts an item: drops it if its recipient is blocked, or prepares
    /// its content. `None`: nothing to send.
    fn begin<S: Store>(
        &mut self,
        device: &mut Device<S>,
        seq: u64,
        item: &pb::OutboxItem,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Option<Current>> {
        let to: UserAddress = item.recipient.parse()?;
        let own = to.user == self.me.user;
        // Nothing goes to a user this user blocked (items queued before the
        // block); our delivery token goes only to accepted contacts and to
        // this user's own devices (a repair to a stranger does not hand it
        // out).
        let wants_sync = item.to_own_devices && !own;
        let prepared = device.store_mut().transaction(|tx| -> Result<_> {
            let state = records::contact(tx, &to.user)?.map(|c| c.state);
            if !own && state == Some(records::BLOCKED) {
                records::update_outbox(tx, seq, None)?;
                return Ok(None);
            }
            let token = if own || state == Some(records::ACCEPTED) {
                Some(records::own_delivery_token(tx, false, rng)?)
            } else {
                None
            };
            let own_token = if wants_sync {
                Some(records::own_delivery_token(tx, false, rng)?)
            } else {
                None
            };
            Ok(Some((token, own_token)))
        })?;
        let Some((token, own_token)) = prepared else {
            return Ok(None);
        };
        // Every content carries our home relay, so the peer can answer.
        // An item whose content does not decode can never go: it ends (a
        // `SendFailed`), it holds nothing back.
        let mut content = pb::Content::decode(item.content.as_slice())
            .map_err(|_| Error::invalid_argument("outbox item content"))?;
        if content.sender_relay.is_empty() {
            content.sender_relay = self.me.relay.to_string();
        }
        content.delivery_token = token.as_ref().map(|t| t.to_vec()).unwrap_or_default();
        // A copy for this user's other devices (what I sent, from where).
        let sync = match (&content.body, own_token) {
            (Some(pb::content::Body::Message(m)), Some(own_token)) => Some(
                pb::Content {
                    sender_relay: self.me.relay.to_string(),
                    body: Some(pb::content::Body::SentSync(pb::SentSync {
                        recipient: to.to_string(),
                        message: Some(m.clone()),
                    })),
                    delivery_token: own_token.to_vec(),
                }
                .encode_to_vec(),
            ),
            _ => None,
        };
        Ok(Some(Current {
            seq,
            item: item.clone(),
            to,
            content: content.encode_to_vec(),
            sync,
            targets: VecDeque::new(),
            full: None,
            stage: Stage::RecipientList,
            resubmit: None,
            group: None,
        }))
    }

    /// Starts a group item: its members that are still members, and the
    /// lists to fetch first (none pinned, or not checked for an hour).
    fn begin_group<S: Store>(
        &mut self,
        device: &mut Device<S>,
        seq: u64,
        item: &pb::OutboxItem,
        now_ms: u64,
    ) -> Result<Option<Current>> {
        let id = GroupId::from_slice(&item.group_id)?;
        let key = item
            .group_key
            .clone()
            .ok_or(Error::invalid_argument("group item without its key"))?;
        let me = self.me.clone();
        let generation = device
            .store_mut()
            .transaction(|tx| records::fanout_generation(tx))?;
        let fresh_start = item.done_group_devices.is_empty() && item.group_key_devices.is_empty();
        let (planned, fresh_until): (VecDeque<(RelayAddress, Batch)>, u64) =
            match self.cache.plans.get(
                &id,
                &key.chain_id,
                &item.group_member_ids,
                generation,
                now_ms,
            ) {
                Some((batches, until)) if fresh_start => (batches.iter().cloned().collect(), until),
                _ => (VecDeque::new(), u64::MAX),
            };
        let key_content = pb::Content {
            sender_relay: me.relay.to_string(),
            body: Some(pb::content::Body::SenderKey(key.clone())),
            delivery_token: Vec::new(),
        };
        let mut group = GroupItem {
            id,
            chain_id: key.chain_id.clone(),
            key_content,
            lists: VecDeque::new(),
            members: Vec::new(),
            deferred: false,
            ready: Vec::new(),
            tokenless: HashSet::new(),
            chain_holders: DeviceSet::default(),
            per_device: HashSet::new(),
            planned,
            recording: Recording {
                generation,
                fresh_until_ms: u64::MAX,
                batches: Vec::new(),
                clean: fresh_start,
            },
        };
        let mut current = Current {
            seq,
            item: item.clone(),
            to: me.clone(),
            content: Vec::new(),
            sync: None,
            targets: VecDeque::new(),
            full: None,
            stage: Stage::GroupLists,
            resubmit: None,
            group: None,
        };
        if !group.planned.is_empty() {
            // Nothing moved since the last clean send: the same batches
            // (each checked against the generation again as it leaves),
            // recorded as being sent first, as the full path does (a
            // receipt may overtake the relay's answer).
            group.recording.fresh_until_ms = fresh_until;
            if !item.message_id.is_empty() {
                let devices: Vec<(&[u8], u32)> = group
                    .planned
                    .iter()
                    .flat_map(|(_, b)| b.iter())
                    .filter(|(t, _)| !t.own)
                    .map(|(t, _)| (t.user.user.as_slice(), t.device.device_id))
                    .collect();
                device.store_mut().transaction(|tx| {
                    records::raise_delivery_many(tx, &item.message_id, &devices, None, now_ms)
                        .map(|_| ())
                })?;
            }
            current.stage = Stage::Targets;
            current.group = Some(group);
            return Ok(Some(current));
        }
        self.cache.plans.forget(&id);
        let members = UserSet::from_bytes(item.group_member_ids.clone())?;
        let prepared = device.store_mut().transaction(|tx| -> Result<_> {
            let state = match group::current(tx, id) {
                Ok(s) => s,
                Err(Error::UnknownGroup) => {
                    // This device left the group: nothing more goes.
                    records::update_outbox(tx, seq, None)?;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            let mut out = Vec::new();
            let mut lists = VecDeque::new();
            let mut fresh_until = u64::MAX;
            for user in members.iter() {
                let Some(now) = state.members.get(&user) else {
                    continue; // removed since: gets nothing
                };
                let c = records::contact(tx, &user)?;
                if user != me.user && c.as_ref().is_some_and(|c| c.state == records::BLOCKED) {
                    continue;
                }
                let checked = c
                    .as_ref()
                    .filter(|c| !c.devices.is_empty())
                    .map(|c| c.list_checked_ms);
                match checked {
                    Some(at) if now_ms.saturating_sub(at) < GROUP_LIST_MAX_AGE_MS => {
                        fresh_until = fresh_until.min(at.saturating_add(GROUP_LIST_MAX_AGE_MS));
                    }
                    _ => {
                        lists.push_back(now.address.clone());
                        fresh_until = fresh_until.min(now_ms.saturating_add(GROUP_LIST_MAX_AGE_MS));
                    }
                }
                out.push(now.address.clone());
            }
            let mut holders = group::chain_holders(tx, &id, &key.chain_id)?;
            holders.extend(
                DeviceSet::from_bytes(item.group_key_devices.clone())?
                    .iter()
                    .map(|(u, d)| device_key(&u, d)),
            );
            Ok(Some((out, lists, holders, fresh_until)))
        })?;
        let Some((members, lists, chain_holders, fresh_until)) = prepared else {
            return Ok(None);
        };
        group.members = members;
        group.lists = lists;
        group.chain_holders = chain_holders;
        group.recording.fresh_until_ms = fresh_until;
        current.group = Some(group);
        Ok(Some(current))
    }

    /// A group member's list arrived: verify and pin it.
    fn on_group_list<S: Store>(
        &mut self,
        device: &mut Device<S>,
        user: &UserAddress,
        fetched: Result<Option<SignedDeviceList>>,
        now_ms: u64,
    ) -> Result<()> {
        match fetched.and_then(|l| l.ok_or(Error::UnknownUser)) {
            Ok(signed) => {
                let list = DeviceList::verify(&user.user, &signed)?;
                let pinned = pin_list(device, user, &list, now_ms)?;
                self.events |= pinned.events;
                self.pass.pending |= pinned.outbox;
                Ok(())
            }
            // A member without a list (or a refused one) gets nothing now;
            // the others go on (and this send is not kept as a plan: the
            // list is fetched again next time).
            Err(e) if e.fault() == Fault::Peer || matches!(e, Error::UnknownUser) => {
                if let Some(g) = self.current.as_mut().and_then(|c| c.group.as_mut()) {
                    g.recording.clean = false;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Every member's list is pinned: the group item's targets are their
    /// devices (this user's, this one included) not done yet.
    fn group_targets<S: Store>(&mut self, device: &mut Device<S>, now_ms: u64) -> Result<()> {
        let me = self.me.clone();
        let cur = self.current_mut()?;
        let Some(g) = cur.group.as_ref() else {
            return Err(Error::invalid_argument("not a group item"));
        };
        let members = g.members.clone();
        let done = DeviceSet::from_bytes(cur.item.done_group_devices.clone())?;
        let mut targets = VecDeque::new();
        let mut count = 0usize;
        let mut skipped = false;
        let cache = &mut self.cache;
        device.store_mut().transaction(|tx| -> Result<()> {
            for m in &members {
                let Some(c) = records::contact(tx, &m.user)? else {
                    skipped = true;
                    continue;
                };
                let Some(list) = cache.list(&m.user, &c)? else {
                    skipped = true;
                    continue;
                };
                for d in list.devices.iter().take(MAX_DEVICES_PER_MEMBER) {
                    count += 1;
                    // This device too: its copy comes back to it, so the
                    // relay cannot tell the sender by the one left out.
                    if done.contains(&m.user, d.device_id) {
                        continue;
                    }
                    targets.push_back(Target {
                        user: m.clone(),
                        device: d.clone(),
                        own: m.user == me.user,
                    });
                }
            }
            Ok(())
        })?;
        let _ = count;
        let cur = self.current_mut()?;
        if let (true, Some(g)) = (skipped, cur.group.as_mut()) {
            g.recording.clean = false;
        }
        cur.targets = targets;
        cur.stage = Stage::Targets;
        if !cur.item.message_id.is_empty() {
            let (id, targets) = (&cur.item.message_id, &cur.targets);
            let devices: Vec<(&[u8], u32)> = targets
                .iter()
                .filter(|t| !t.own)
                .map(|t| (t.user.user.as_slice(), t.device.device_id))
                .collect();
            device.store_mut().transaction(|tx| {
                records::raise_delivery_many(tx, id, &devices, None, now_ms).map(|_| ())
            })?;
        }
        Ok(())
    }

    /// A device list arrived: verify, pin, pick the targets.
    fn on_list<S: Store>(
        &mut self,
        device: &mut Device<S>,
        own: bool,
        fetched: Result<Option<SignedDeviceList>>,
        now_ms: u64,
    ) -> Result<()> {
        let (me, my_id) = (self.me.clone(), self.device_id);
        let user = if own {
            me.clone()
        } else {
            self.current_mut()?.to.clone()
        };
        let signed = fetched?.ok_or(Error::UnknownUser)?;
        let list = DeviceList::verify(&user.user, &signed)?;
        let pinned = pin_list(device, &user, &list, now_ms)?;
        self.events |= pinned.events;
        self.pass.pending |= pinned.outbox;
        let cur = self.current_mut()?;
        if own {
            for d in &list.devices {
                if d.device_id != my_id && !cur.item.done_own_devices.contains(&d.device_id) {
                    cur.targets.push_back(Target {
                        user: me.clone(),
                        device: d.clone(),
                        own: true,
                    });
                }
            }
        } else {
            for d in &list.devices {
                if (cur.to.user == me.user && d.device_id == my_id)
                    || (!cur.item.only_devices.is_empty()
                        && !cur.item.only_devices.contains(&d.device_id))
                    || cur.item.done_devices.contains(&d.device_id)
                {
                    continue; // never to ourselves; only those asked; not twice
                }
                cur.targets.push_back(Target {
                    user: cur.to.clone(),
                    device: d.clone(),
                    own: false,
                });
            }
            if cur.sync.is_some() {
                cur.stage = Stage::OwnList;
                return Ok(());
            }
        }
        self.targets_known(device, now_ms)
    }

    /// Every target is known: refuse an item that reaches nobody, and record
    /// the devices a message goes to before it leaves, so a receipt that
    /// overtakes the relay's "accepted" still counts (receipts only count
    /// for devices the message was sent to).
    fn targets_known<S: Store>(&mut self, device: &mut Device<S>, now_ms: u64) -> Result<()> {
        let me = self.me.user;
        let cur = self.current_mut()?;
        if cur.targets.is_empty() && cur.item.done_devices.is_empty() && cur.to.user != me {
            if !cur.item.only_devices.is_empty() {
                // The device asked for is gone: nothing left to do.
                let seq = cur.seq;
                device
                    .store_mut()
                    .transaction(|tx| records::update_outbox(tx, seq, None))?;
                self.current = None;
                return Ok(());
            }
            return Err(Error::UnknownUser);
        }
        if !cur.item.message_id.is_empty() {
            let (id, targets) = (&cur.item.message_id, &cur.targets);
            device.store_mut().transaction(|tx| -> Result<()> {
                for t in targets.iter().filter(|t| !t.own) {
                    records::raise_delivery(
                        tx,
                        id,
                        &t.user.user,
                        t.device.device_id,
                        None,
                        now_ms,
                    )?;
                }
                Ok(())
            })?;
        }
        cur.stage = Stage::Targets;
        Ok(())
    }

    /// The next step for the first target: a bundle to fetch, or an
    /// envelope to submit. `None`: no target left.
    fn next_target<S: Store>(
        &mut self,
        device: &mut Device<S>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Option<Step>> {
        let (me, my_id, certificate) = (self.me.user, self.device_id, self.certificate);
        let cur = self
            .current
            .as_mut()
            .ok_or(Error::invalid_argument("no item"))?;
        let mut contacts: std::collections::HashMap<[u8; 32], Option<pb::ContactRecord>> =
            std::collections::HashMap::new();
        while let Some(t) = cur.targets.front().cloned() {
            if let Some((envelope, carries)) = cur.resubmit.take() {
                self.awaiting = Some(Awaiting::Submit {
                    token: None,
                    envelope: envelope.clone(),
                    carries,
                });
                return Ok(Some(Step::Submit {
                    user: t.user.clone(),
                    mailbox: t.device.mailbox,
                    envelope,
                    token: None,
                }));
            }
            // The list or a block may have changed since the item started
            // (the receive loop pins newer lists): a device no longer listed
            // gets nothing more, a user blocked meanwhile nothing at all.
            // (Read once per user in this call: nothing else touches the
            // store while it runs.)
            let (user, id, identity) = (t.user.user, t.device.device_id, t.device.identity);
            let c = match contacts.entry(user) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(
                    device
                        .store_mut()
                        .transaction(|tx| records::contact(tx, &user))?,
                ),
            };
            let c = c.as_ref();
            let blocked = user != me && c.is_some_and(|c| c.state == records::BLOCKED);
            let listed = c.is_some_and(|c| records::lists_identity(c, id, identity.as_bytes()));
            if blocked && cur.group.is_none() {
                cur.targets.clear();
                break;
            }
            if blocked || !listed {
                if let Some(g) = cur.group.as_mut() {
                    g.recording.clean = false;
                }
                cur.targets.pop_front();
                continue;
            }
            let mut carries = Carries::Pairwise;
            if let Some(g) = cur.group.as_mut() {
                // Per relay, in order: a target on a held relay waits.
                if self.held.contains(&t.user.relay) {
                    g.deferred = true;
                    g.recording.clean = false;
                    cur.targets.pop_front();
                    continue;
                }
                cur.to = t.user.clone();
                if g.chain_holders.contains(&user, id) || (user == me && id == my_id) {
                    // Sent with the others on its relay, once.
                    g.ready.push(t.clone());
                    cur.targets.pop_front();
                    continue;
                }
                // A key goes out: the next send will not look like this one.
                g.recording.clean = false;
                carries = Carries::GroupKey;
            }
            let addr = DeviceAddress::new(t.user.user.to_vec(), t.device.device_id);
            let has_session = device.has_session(&addr)?;
            // A repair never sets up a session on its own: it answers a
            // claim nobody authenticated, unless it is a re-send the retry
            // asked for.
            if cur.item.repair && !has_session && !cur.item.reset_session {
                cur.targets.pop_front();
                continue;
            }
            if cur.item.reset_session || !has_session {
                self.awaiting = Some(Awaiting::Bundle);
                return Ok(Some(Step::FetchBundle {
                    user: t.user.clone(),
                    mailbox: t.device.mailbox,
                }));
            }
            // The session must belong to the identity the list certifies.
            if !device
                .session_identity(&addr)?
                .is_some_and(|id| id.ct_eq(&t.device.identity))
            {
                return Err(CoreError::IdentityChanged {
                    new_identity: Box::new(t.device.identity),
                }
                .into());
            }
            let key_content;
            let content = match (&cur.group, t.own) {
                (Some(g), _) => {
                    key_content = g.key_content.encode_to_vec();
                    key_content.as_slice()
                }
                (None, true) => cur.sync.as_deref().unwrap_or_default(),
                (None, false) => cur.content.as_slice(),
            };
            let message = device.encrypt(&addr, content, rng)?;
            let mac_key = self.cache.mac_keys.get(device, &t.device.identity)?;
            let mac = sender_mac(&mac_key, &me, my_id, &message.bytes);
            // The claim goes inside the seal: the relay sees no sender.
            let inner = pb::Sealed {
                sender_user: me.to_vec(),
                sender_device: my_id,
                sender_certificate: (message.kind == MessageKind::PreKey)
                    .then(|| certificate.to_pb()),
                message: message.bytes,
                sender_mac: mac.to_vec(),
            }
            .encode_to_vec();
            let sealed = sotto_core::sealed::seal(
                t.device.identity.dh_public(),
                &inner,
                Padding::Buckets,
                rng,
            )?;
            let envelope = pb::Envelope {
                version: 1,
                body: Some(pb::envelope::Body::Sealed(sealed)),
            }
            .encode_to_vec();
            let (user, id) = (t.user.user, t.device.device_id);
            let token = device
                .store_mut()
                .transaction(|tx| records::delivery_token(tx, &user, id))?;
            self.awaiting = Some(Awaiting::Submit {
                token: token.clone(),
                envelope: envelope.clone(),
                carries,
            });
            return Ok(Some(Step::Submit {
                user: t.user.clone(),
                mailbox: t.device.mailbox,
                envelope,
                token,
            }));
        }
        // A group item: every device holding the chain gets the envelope,
        // one shared submission per relay.
        if let Some(g) = cur.group.as_mut() {
            // A kept plan's next batch, if nothing moved since it was made
            // (read again: the last submission was I/O, and the receive
            // loop may have committed meanwhile).
            if let Some((relay, batch)) = g.planned.pop_front() {
                let generation = device
                    .store_mut()
                    .transaction(|tx| records::fanout_generation(tx))?;
                if generation == g.recording.generation && !self.held.contains(&relay) {
                    g.recording.batches.push((relay.clone(), batch.clone()));
                    let recipients = batch
                        .iter()
                        .map(|(t, token)| (t.device.mailbox, token.clone()))
                        .collect();
                    if let Some((t, _)) = batch.first() {
                        cur.to = t.user.clone();
                    }
                    self.awaiting = Some(Awaiting::Shared(batch));
                    return Ok(Some(Step::SubmitShared {
                        relay,
                        envelope: cur.item.group_envelope.clone(),
                        recipients,
                    }));
                }
                // Something moved: this batch and the rest are checked
                // device by device.
                g.recording.clean = false;
                let rest = std::iter::once((relay, batch)).chain(g.planned.drain(..));
                for (_, b) in rest.collect::<Vec<_>>() {
                    for (t, _) in b.iter() {
                        if self.held.contains(&t.user.relay) {
                            g.deferred = true;
                        } else {
                            g.ready.push(t.clone());
                        }
                    }
                }
            }
            if let Some(relay) = g.ready.first().map(|t| t.user.relay.clone()) {
                let (batch, rest): (Vec<Target>, Vec<Target>) = std::mem::take(&mut g.ready)
                    .into_iter()
                    .partition(|t| t.user.relay == relay);
                let mut batch = batch;
                let mut rest = rest;
                let per_device = g.per_device.contains(&relay);
                let most = if per_device { 1 } else { MAX_SHARED_RECIPIENTS };
                if batch.len() > most {
                    rest.extend(batch.drain(most..));
                }
                g.ready = rest;
                let (tokenless, gid) = (g.tokenless.clone(), g.id);
                // Checked again as the envelope leaves (keys went out to
                // others meanwhile: a list, a block or the membership may
                // have changed), and each mailbox once (two users' lists
                // may name one mailbox; the relay refuses a request naming
                // it twice).
                let (with_tokens, dropped) = device.store_mut().transaction(|tx| -> Result<_> {
                    let members = match records::group_head(tx, &gid.0)? {
                        Some((status, members)) if status != group::GONE => Some(members),
                        _ => group::current(tx, gid)
                            .ok()
                            .map(|s| UserSet::of(s.members.keys())),
                    };
                    let mut contacts: std::collections::HashMap<
                        [u8; 32],
                        Option<pb::ContactRecord>,
                    > = std::collections::HashMap::new();
                    let mut mailboxes = HashSet::new();
                    let (mut out, mut dropped) = (Vec::new(), Vec::new());
                    for t in batch {
                        let user = t.user.user;
                        let c = match contacts.entry(user) {
                            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                            std::collections::hash_map::Entry::Vacant(e) => {
                                e.insert(records::contact(tx, &user)?)
                            }
                        };
                        let c = c.as_ref();
                        let still = members.as_ref().is_some_and(|m| m.contains(&user))
                            && !(user != me && c.is_some_and(|c| c.state == records::BLOCKED))
                            && c.is_some_and(|c| {
                                records::lists_identity(
                                    c,
                                    t.device.device_id,
                                    t.device.identity.as_bytes(),
                                )
                            });
                        let dk = device_key(&user, t.device.device_id);
                        if !still || !mailboxes.insert(t.device.mailbox) {
                            dropped.push(dk);
                            continue;
                        }
                        let token = if tokenless.contains(&dk) {
                            None
                        } else {
                            records::delivery_token(tx, &user, t.device.device_id)?
                        };
                        out.push((t, token));
                    }
                    Ok((out, dropped))
                })?;
                // Nothing goes to those: they are done for this item.
                if !dropped.is_empty() {
                    g.recording.clean = false;
                    let mut done =
                        DeviceSet::from_bytes(std::mem::take(&mut cur.item.done_group_devices))?;
                    done.extend(dropped);
                    cur.item.done_group_devices = done.into_bytes();
                }
                if with_tokens.is_empty() {
                    return self.next_target(device, rng);
                }
                let recipients = with_tokens
                    .iter()
                    .map(|(t, token)| (t.device.mailbox, token.clone()))
                    .collect();
                cur.to = with_tokens[0].0.user.clone();
                if per_device {
                    g.recording.clean = false;
                    // One device: a plain submission. The target goes back
                    // in front, where the answer finds it.
                    let (t, token) = with_tokens
                        .into_iter()
                        .next()
                        .ok_or(Error::invalid_argument("empty batch"))?;
                    let envelope = cur.item.group_envelope.clone();
                    cur.targets.push_front(t.clone());
                    self.awaiting = Some(Awaiting::Submit {
                        token: token.clone(),
                        envelope: envelope.clone(),
                        carries: Carries::GroupMessage,
                    });
                    return Ok(Some(Step::Submit {
                        user: t.user.clone(),
                        mailbox: t.device.mailbox,
                        envelope,
                        token,
                    }));
                }
                let batch: Batch = std::sync::Arc::new(with_tokens);
                g.recording.batches.push((relay.clone(), batch.clone()));
                self.awaiting = Some(Awaiting::Shared(batch));
                return Ok(Some(Step::SubmitShared {
                    relay,
                    envelope: cur.item.group_envelope.clone(),
                    recipients,
                }));
            }
        }
        Ok(None)
    }

    /// A bundle arrived: check it names the certified device, start the
    /// session (one commit with the item's progress).
    fn on_bundle<S: Store>(
        &mut self,
        device: &mut Device<S>,
        fetched: Result<FetchedBundle>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<()> {
        let cur = self.current_mut()?;
        let t = cur.front()?;
        let fetched = fetched?;
        let bundle = PrekeyBundle::assemble(
            &fetched.signed_bundle,
            fetched.one_time_ec.as_ref().map(|(_, b)| b.as_slice()),
            fetched.one_time_kem.as_ref().map(|(_, b)| b.as_slice()),
        )?;
        // The bundle must be the device the account certified.
        if bundle.device_id() != t.device.device_id || !bundle.identity().ct_eq(&t.device.identity)
        {
            return Err(CoreError::BadSignature {
                what: "bundle does not match the device list",
            }
            .into());
        }
        let addr = DeviceAddress::new(t.user.user.to_vec(), t.device.device_id);
        let reset = cur.item.reset_session && device.has_session(&addr)?;
        // One reset per repair: the flag is cleared in the commit that
        // follows the new session, so a retry of this item does not reset
        // (and spend the peer's prekeys) again; if the session cannot be
        // set up, the item keeps it.
        let seq = cur.seq;
        let mut progress = cur.item.clone();
        progress.reset_session = false;
        device.process_bundle(&addr, &bundle, now_ms / 1000, rng)?;
        cur.item.reset_session = false;
        device.store_mut().transaction(|tx| -> Result<()> {
            records::update_outbox(tx, seq, Some(&progress))?;
            if reset {
                records::push_event(
                    tx,
                    EventBuilder::about(Some(&t.user))
                        .device(t.device.device_id)
                        .kind(pb::client_event::Kind::SessionReset(true)),
                )?;
            }
            Ok(())
        })?;
        self.events |= reset;
        Ok(())
    }

    /// The relay answered a submission.
    fn on_submitted<S: Store>(
        &mut self,
        device: &mut Device<S>,
        token: Option<Zeroizing<[u8; 32]>>,
        envelope: Vec<u8>,
        carries: Carries,
        result: Result<EnvelopeId>,
        now_ms: u64,
    ) -> Result<()> {
        let cur = self.current_mut()?;
        let t = cur.front()?;
        let (user, device_id) = (&t.user, t.device.device_id);
        let envelope_id = match result {
            Err(e) if e.relay_code() == Some(ErrorCode::BadDeliveryToken) => {
                // The device replaced its token: forget ours (until its next
                // message brings the new one) and send again without one,
                // in the share strangers get.
                let Some(refused) = token else {
                    return Err(e);
                };
                device.store_mut().transaction(|tx| {
                    records::delete_delivery_token_if(tx, &user.user, device_id, &refused)
                })?;
                cur.resubmit = Some((envelope, carries));
                return Ok(());
            }
            Err(e) if e.relay_code() == Some(ErrorCode::QuotaExceeded) => {
                // This device's mailbox (or its strangers' share) is full:
                // the others go on, the item stays for it.
                cur.full = Some(e);
                cur.targets.pop_front();
                return Ok(());
            }
            other => other?,
        };
        if carries == Carries::GroupKey {
            return self.on_group_key_submitted(device, &t);
        }
        if carries == Carries::GroupMessage {
            // As one recipient of a shared submission.
            if let Some(cur) = self.current.as_mut() {
                cur.targets.pop_front();
            }
            let one: Batch = std::sync::Arc::new(vec![(t, None)]);
            return self.on_shared(device, one, Ok(vec![Ok(envelope_id)]), now_ms);
        }
        if t.own {
            cur.item.done_own_devices.push(device_id);
        } else {
            cur.item.done_devices.push(device_id);
        }
        cur.item.reset_session = false;
        let content = if t.own {
            cur.sync.clone().unwrap_or_default()
        } else {
            cur.content.clone()
        };
        let (seq, progress) = (cur.seq, cur.item.clone());
        let message_id = progress.message_id.clone();
        // Progress, sent log and delivery state in one commit. A piece of a
        // large content is not logged (a 1,000-member group's creation would
        // log 150 KB per device for 45 days): a lost one is not re-sent.
        let piece = super::fragments::is_piece(&content);
        let raised = device.store_mut().transaction(|tx| -> Result<bool> {
            records::update_outbox(tx, seq, Some(&progress))?;
            if !piece {
                records::log_sent(
                    tx,
                    &envelope_id.0,
                    &pb::SentLogEntry {
                        recipient_user: user.user.to_vec(),
                        recipient_device: device_id,
                        recipient: user.to_string(),
                        content,
                        at_ms: now_ms,
                        retries: 0,
                    },
                    now_ms,
                )?;
            }
            if !message_id.is_empty()
                && !t.own
                && records::raise_delivery(
                    tx,
                    &message_id,
                    &user.user,
                    device_id,
                    Some(DeliveryState::Sent),
                    now_ms,
                )?
            {
                records::push_event(
                    tx,
                    EventBuilder::about(Some(user))
                        .device(device_id)
                        .message_id(&message_id)
                        .delivery(&user.user, device_id, DeliveryState::Sent),
                )?;
                return Ok(true);
            }
            Ok(false)
        })?;
        self.events |= raised;
        if let Some(cur) = self.current.as_mut() {
            cur.targets.pop_front();
        }
        Ok(())
    }

    /// The relay answered a shared submission: each recipient is done, full
    /// (the item stays for it), sent again without the token it replaced,
    /// skipped (a refusal that repeats) or left for the next pass.
    fn on_shared<S: Store>(
        &mut self,
        device: &mut Device<S>,
        batch: Batch,
        result: Result<Vec<Result<EnvelopeId>>>,
        now_ms: u64,
    ) -> Result<()> {
        let results = match result {
            // A refusal of the request as a whole that says this relay
            // cannot take it (older, a smaller limit, a send burst smaller
            // than the request): per device from now on for this item,
            // never held for ever (a per-device refusal then holds the
            // relay as any).
            Err(e)
                if matches!(
                    e.relay_code(),
                    Some(
                        ErrorCode::Malformed
                            | ErrorCode::TooManyItems
                            | ErrorCode::UnsupportedVersion
                            | ErrorCode::RateLimited
                    )
                ) =>
            {
                let cur = self.current_mut()?;
                if let (Some(g), Some((t, _))) = (cur.group.as_mut(), batch.first()) {
                    tracing::debug!(error = %e, "relay takes group envelopes per device");
                    g.recording.clean = false;
                    g.per_device.insert(t.user.relay.clone());
                    g.ready.extend(batch.iter().map(|(t, _)| t.clone()));
                }
                return Ok(());
            }
            other => other?,
        };
        if results.len() != batch.len() {
            return Err(Error::invalid_argument("shared answer of another length"));
        }
        let cur = self.current_mut()?;
        if cur.group.is_none() {
            return Err(Error::invalid_argument("not a group item"));
        }
        let mut done = Vec::with_capacity(batch.len());
        let mut clean = true;
        for ((t, token), r) in batch.iter().zip(results) {
            let dk = device_key(&t.user.user, t.device.device_id);
            clean &= r.is_ok();
            match r {
                Ok(_) => done.push(t),
                Err(e) if e.relay_code() == Some(ErrorCode::BadDeliveryToken) => {
                    if let Some(refused) = token {
                        device.store_mut().transaction(|tx| {
                            records::delete_delivery_token_if(
                                tx,
                                &t.user.user,
                                t.device.device_id,
                                refused,
                            )
                        })?;
                        if let Some(g) = cur.group.as_mut() {
                            g.tokenless.insert(dk);
                            g.ready.push(t.clone());
                        }
                    }
                }
                Err(e) if e.relay_code() == Some(ErrorCode::QuotaExceeded) => {
                    cur.full = Some(e);
                }
                Err(e) if e.fault() == Fault::Peer => {
                    tracing::debug!(error = %e, "group target skipped");
                }
                Err(_) => {
                    if let Some(g) = cur.group.as_mut() {
                        g.deferred = true;
                    }
                }
            }
        }
        if let Some(g) = cur.group.as_mut() {
            g.recording.clean &= clean;
        }
        let mut done_set = DeviceSet::from_bytes(std::mem::take(&mut cur.item.done_group_devices))?;
        done_set.extend(
            done.iter()
                .map(|t| device_key(&t.user.user, t.device.device_id)),
        );
        cur.item.done_group_devices = done_set.into_bytes();
        let (seq, progress) = (cur.seq, cur.item.clone());
        let message_id = progress.message_id.clone();
        // The delivery states are recorded (`delivery(id)`: "read by 5 of
        // 7"); a group message raises no event per device for reaching the
        // relay (one per member device would flood the app), only for being
        // delivered and read.
        device.store_mut().transaction(|tx| -> Result<()> {
            records::update_outbox(tx, seq, Some(&progress))?;
            if message_id.is_empty() {
                return Ok(());
            }
            let devices: Vec<(&[u8], u32)> = done
                .iter()
                .filter(|t| !t.own)
                .map(|t| (t.user.user.as_slice(), t.device.device_id))
                .collect();
            records::raise_delivery_many(
                tx,
                &message_id,
                &devices,
                Some(DeliveryState::Sent),
                now_ms,
            )
            .map(|_| ())
        })
    }

    /// A group item's key was accepted for target `t`: the device has the
    /// chain; the envelope itself goes with the shared submission.
    fn on_group_key_submitted<S: Store>(
        &mut self,
        device: &mut Device<S>,
        t: &Target,
    ) -> Result<()> {
        let cur = self.current_mut()?;
        let (user, device_id) = (t.user.user, t.device.device_id);
        let (gid, chain_id) = match &cur.group {
            Some(g) => (g.id, g.chain_id.clone()),
            None => return Err(Error::invalid_argument("not a group item")),
        };
        if let Some(g) = cur.group.as_mut() {
            g.chain_holders.insert(&user, device_id);
        }
        let mut given = DeviceSet::from_bytes(std::mem::take(&mut cur.item.group_key_devices))?;
        given.insert(&user, device_id);
        cur.item.group_key_devices = given.into_bytes();
        let (seq, progress) = (cur.seq, cur.item.clone());
        device.store_mut().transaction(|tx| -> Result<()> {
            group::mark_distributed(tx, &gid, &chain_id, &user, device_id)?;
            records::update_outbox(tx, seq, Some(&progress))
        })
    }

    /// Every target was tried: the item is done, or stays for a device
    /// whose mailbox was full.
    fn finish<S: Store>(&mut self, device: &mut Device<S>) -> Result<()> {
        let Some(mut cur) = self.current.take() else {
            return Ok(());
        };
        if cur.group.as_ref().is_some_and(|g| g.deferred) && cur.full.is_none() {
            // Targets on held relays wait for the next pass.
            self.pass.pending = true;
            return Ok(());
        }
        if let Some(g) = cur.group.take() {
            self.keep_plan(device, &cur.item, g, cur.full.is_none())?;
        }
        match cur.full.take() {
            Some(e) => {
                let relay = Some(cur.to.relay.clone());
                self.fail(device, cur.seq, cur.item, relay, e)
            }
            None => {
                let seq = cur.seq;
                device
                    .store_mut()
                    .transaction(|tx| records::update_outbox(tx, seq, None))?;
                Ok(())
            }
        }
    }

    /// Keeps a group send's batches for the next message if it went
    /// cleanly, in one shared submission per batch, and nothing moved.
    fn keep_plan<S: Store>(
        &mut self,
        device: &mut Device<S>,
        item: &pb::OutboxItem,
        g: GroupItem,
        all_sent: bool,
    ) -> Result<()> {
        let r = g.recording;
        if !(all_sent && r.clean && !r.batches.is_empty()) {
            return Ok(());
        }
        let generation = device
            .store_mut()
            .transaction(|tx| records::fanout_generation(tx))?;
        if generation == r.generation {
            self.cache.plans.put(
                g.id,
                GroupPlan {
                    generation,
                    chain_id: g.chain_id,
                    members: item.group_member_ids.clone(),
                    fresh_until_ms: r.fresh_until_ms,
                    batches: r.batches,
                },
            );
        }
        Ok(())
    }

    /// The current item failed with `e`.
    fn fail_current<S: Store>(&mut self, device: &mut Device<S>, e: Error) -> Result<()> {
        self.awaiting = None;
        if let Some(cur) = self.current.as_mut() {
            if cur.group.is_some() && cur.stage == Stage::Targets && e.fault() == Fault::Peer {
                // One member device's problem (a bad bundle, a refusal that
                // repeats) skips that device, not the group.
                tracing::debug!(error = %e, "group target skipped");
                if let Some(g) = cur.group.as_mut() {
                    g.recording.clean = false;
                }
                cur.targets.pop_front();
                return Ok(());
            }
        }
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        self.fail(device, cur.seq, cur.item, Some(cur.to.relay), e)
    }

    /// What a failed item becomes, by whose fault it failed.
    fn fail<S: Store>(
        &mut self,
        device: &mut Device<S>,
        seq: u64,
        mut item: pb::OutboxItem,
        relay: Option<RelayAddress>,
        e: Error,
    ) -> Result<()> {
        self.pass.pending = true;
        if item.repair {
            // Repairs never hold up the conversation: count, move on.
            tracing::debug!(error = %e, "repair item deferred");
            item.attempts += 1;
            let keep = item.attempts < MAX_REPAIR_ATTEMPTS;
            return device
                .store_mut()
                .transaction(|tx| records::update_outbox(tx, seq, keep.then_some(&item)));
        }
        if e.relay_code() == Some(ErrorCode::QuotaExceeded) {
            // A full mailbox holds back nothing else (a stranger can fill
            // a share with 256 tiny envelopes).
            tracing::debug!(error = %e, "outbox item waits for room");
            return Ok(());
        }
        if matches!(e.fault(), Fault::Network | Fault::Local) {
            // Later items to the same relay must not overtake this one
            // (each conversation keeps the outbox's order).
            tracing::debug!(error = %e, "outbox item deferred");
            match relay {
                Some(r) => {
                    self.held.insert(r);
                }
                None => self.items.clear(),
            }
            return Ok(());
        }
        // The recipient's problem (or ours, repeating): give up after a few.
        item.attempts += 1;
        let reason = e.to_string();
        let failed = device.store_mut().transaction(|tx| -> Result<bool> {
            if item.attempts < MAX_PERMANENT_FAILURES {
                records::update_outbox(tx, seq, Some(&item))?;
                return Ok(false);
            }
            records::update_outbox(tx, seq, None)?;
            if item.message_id.is_empty() {
                return Ok(false);
            }
            records::push_event(
                tx,
                EventBuilder::named(&item.recipient)
                    .message_id(&item.message_id)
                    .kind(pb::client_event::Kind::SendFailed(reason)),
            )?;
            Ok(true)
        })?;
        self.events |= failed;
        Ok(())
    }

    fn current_mut(&mut self) -> Result<&mut Current> {
        self.current
            .as_mut()
            .ok_or(Error::invalid_argument("no outbox item in progress"))
    }
}

/// Queues a message to `to` (and copies for this user's other devices) in
/// the outbox: durable before this returns, sent by the next pass. Writing
/// to someone makes them a contact (their messages are no longer
/// requests), unless the user blocked them.
pub(crate) fn queue_message<S: Store>(
    device: &mut Device<S>,
    me: &UserAddress,
    to: &UserAddress,
    text: &str,
    attachments: Vec<pb::AttachmentRef>,
    now_ms: u64,
    rng: &mut impl CryptoRngCore,
) -> Result<MessageId> {
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id);
    let content = pb::Content {
        sender_relay: me.relay.to_string(),
        delivery_token: Vec::new(),
        body: Some(pb::content::Body::Message(pb::Message {
            id: id.to_vec(),
            sent_at_ms: now_ms,
            text: text.to_string(),
            attachments,
        })),
    };
    let item = pb::OutboxItem {
        recipient: to.to_string(),
        content: content.encode_to_vec(),
        to_own_devices: true,
        message_id: id.to_vec(),
        ..Default::default()
    };
    device.store_mut().transaction(|tx| {
        if records::contact(tx, &to.user)?.is_some_and(|c| c.state == records::BLOCKED) {
            return Err(Error::NotAccepted);
        }
        super::inbound::accept(tx, me, to)?;
        records::push_outbox(tx, &item)
    })?;
    Ok(MessageId(id))
}

/// After the home relay registered `token`: queues the announcement to
/// this user's other devices, and (for a replaced token) to every accepted
/// contact, unless this token was already announced. True if items were
/// queued.
pub(crate) fn announce_delivery_token<S: Store>(
    device: &mut Device<S>,
    me: &UserAddress,
    token: &[u8; 32],
) -> Result<bool> {
    device.store_mut().transaction(|tx| {
        let announced = records::announced_delivery_token(tx)?;
        if announced.as_deref() == Some(token.as_slice()) {
            return Ok(false);
        }
        let mut to = vec![me.clone()];
        if announced.is_some() {
            to.extend(
                records::contacts(tx)?
                    .into_iter()
                    .filter(|(u, c)| c.state == records::ACCEPTED && *u != me.user)
                    .filter_map(|(_, c)| c.address.parse().ok()),
            );
        }
        let content = pb::Content {
            sender_relay: me.relay.to_string(),
            delivery_token: Vec::new(), // set by the outbox
            body: Some(pb::content::Body::DeliveryTokenUpdate(
                pb::DeliveryTokenUpdate {},
            )),
        }
        .encode_to_vec();
        for peer in to {
            records::push_outbox(
                tx,
                &pb::OutboxItem {
                    recipient: peer.to_string(),
                    content: content.clone(),
                    ..Default::default()
                },
            )?;
        }
        records::set_announced_delivery_token(tx, token)?;
        Ok(true)
    })
}

/// Pins a verified list of `user` (refusing a rollback or equivocation),
/// queues events for added and removed devices and deletes the sessions of
/// removed ones. True if events were queued.
pub(crate) fn pin_list<S: Store>(
    device: &mut Device<S>,
    user: &UserAddress,
    list: &DeviceList,
    now_ms: u64,
) -> Result<Pinned> {
    let applied = device
        .store_mut()
        .transaction(|tx| records::apply_list(tx, user, list, now_ms))?;
    for addr in &applied.revoked {
        device.delete_sessions(addr)?;
    }
    Ok(Pinned {
        events: applied.events,
        outbox: applied.outbox,
    })
}

/// What pinning a list queued.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Pinned {
    /// Events for the app.
    pub(crate) events: bool,
    /// Outbox items (groups for a new device of this user).
    pub(crate) outbox: bool,
}

#[cfg(test)]
mod tests;
