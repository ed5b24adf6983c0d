//! A group's recipients kept from one message to the next.
//!
//! Finding where a group message goes reads every member's contact record,
//! pinned list and delivery tokens: for 1,000 members with 3 devices each,
//! far more work than encrypting the message once. A send that went to
//! every target as one shared envelope, with nothing changing meanwhile,
//! leaves its batches here; the next message of the same chain to the same
//! members reuses them as long as the store's fan-out generation
//! ([`records::fanout_generation`], raised in the same commit as any write
//! that changes a contact's devices or state, a token, the group or the
//! chain's holders) has not moved and no list is due for its hourly check.
//! Anything else takes the full path, which checks every device again.

use std::collections::HashMap;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::Target;
use crate::engine::address::RelayAddress;
use crate::engine::group::state::GroupId;
#[cfg(doc)]
use crate::engine::records;

/// The recipients of one shared submission, with the delivery token sent to
/// each (if the device gave one).
pub(super) type Batch = Arc<Vec<(Target, Option<Zeroizing<[u8; 32]>>)>>;

/// Groups whose recipients are kept (past it the cache starts again).
const MAX_GROUPS: usize = 256;

/// What a kept plan holds, and what it was made under.
pub(super) struct GroupPlan {
    /// The fan-out generation it was checked under.
    pub(super) generation: u64,
    /// The sending chain whose holders it names.
    pub(super) chain_id: Vec<u8>,
    /// The members (packed ids) the message was written to.
    pub(super) members: Vec<u8>,
    /// When the first member's list is due for its hourly check.
    pub(super) fresh_until_ms: u64,
    /// The shared submissions, per relay, in order.
    pub(super) batches: Vec<(RelayAddress, Batch)>,
}

/// The plans, by group. No `Debug` of tokens: counts only.
#[derive(Default)]
pub(super) struct Plans(HashMap<GroupId, GroupPlan>);

impl std::fmt::Debug for Plans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plans({} groups)", self.0.len())
    }
}

impl Plans {
    /// The kept batches for a message of `chain_id` to `members` in group
    /// `id`, if the plan still holds at `generation` and `now_ms`.
    pub(super) fn get(
        &self,
        id: &GroupId,
        chain_id: &[u8],
        members: &[u8],
        generation: u64,
        now_ms: u64,
    ) -> Option<(&[(RelayAddress, Batch)], u64)> {
        let p = self.0.get(id)?;
        (p.generation == generation
            && p.chain_id == chain_id
            && p.members == members
            && now_ms < p.fresh_until_ms)
            .then_some((p.batches.as_slice(), p.fresh_until_ms))
    }

    /// Keeps a plan (replacing the group's last one).
    pub(super) fn put(&mut self, id: GroupId, plan: GroupPlan) {
        if self.0.len() >= MAX_GROUPS && !self.0.contains_key(&id) {
            self.0.clear();
        }
        self.0.insert(id, plan);
    }

    /// Forgets a group's plan.
    pub(super) fn forget(&mut self, id: &GroupId) {
        self.0.remove(id);
    }
}

/// A plan being recorded while an item is sent; kept only if it ends clean.
#[derive(Default)]
pub(super) struct Recording {
    /// The generation read when the item started.
    pub(super) generation: u64,
    /// As [`GroupPlan::fresh_until_ms`].
    pub(super) fresh_until_ms: u64,
    /// Submissions made so far.
    pub(super) batches: Vec<(RelayAddress, Batch)>,
    /// False once anything but a clean shared submission happened (a key
    /// handed out, a target skipped, deferred or refused, a relay taking
    /// envelopes per device): the plan would not describe the next send.
    pub(super) clean: bool,
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Recording({} batches, clean: {})",
            self.batches.len(),
            self.clean
        )
    }
}
