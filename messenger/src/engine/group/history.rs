//! Which changes make a group's state when admins change it at once
//! (PROTOCOL.md III.12), with no I/O.
//!
//! A device keeps a root state and the valid changes after it, a tree (two
//! changes on one parent are siblings). The state is the end of the
//! **canonical chain**, chosen from the tree alone: from the root, among the
//! children that apply, the one whose branch holds the most senior author
//! (seniority in the state they fork from; non-admins after every admin),
//! then the lower hash. So devices that hold the same changes hold the same
//! state, whatever order the changes came in; a branch that loses stays in
//! the tree (a later change may still make it win); and no one beats a
//! branch holding the change of an admin senior to them: a removed admin
//! cannot fork back past its removal by a senior, and grinding hashes only
//! decides between branches whose most senior author is the same.

use std::collections::HashMap;

use super::state::{GroupState, Seniority, VerifiedChange};
use crate::error::Result;

/// Changes kept after the root; past it, the root moves along the chain.
pub const MAX_HISTORY: usize = 64;

/// How a branch compares: its most senior author, then its first change's
/// hash (lower wins).
type Rank = (Seniority, [u8; 32]);

/// What [`History::insert`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Insert {
    /// Added to the tree.
    Added,
    /// Already held (or it is the root's own change).
    Known,
    /// Its parent is not in the tree: it cannot be placed yet.
    UnknownParent,
}

/// A root state and the valid changes after it.
#[derive(Debug, Clone)]
pub(crate) struct History {
    pub(crate) root: GroupState,
    pub(crate) changes: Vec<VerifiedChange>,
}

impl History {
    /// The state after every change reachable from the root by valid
    /// changes, by the hash of its last change.
    fn states(&self) -> HashMap<[u8; 32], GroupState> {
        let mut states = HashMap::new();
        states.insert(self.root.head, self.root.clone());
        let mut frontier = vec![self.root.head];
        while let Some(head) = frontier.pop() {
            let Some(state) = states.get(&head).cloned() else {
                continue;
            };
            for c in self.changes.iter().filter(|c| c.parent() == head) {
                if states.contains_key(&c.hash) {
                    continue;
                }
                if let Ok(next) = state.apply(c) {
                    states.insert(c.hash, next);
                    frontier.push(c.hash);
                }
            }
        }
        states
    }

    /// Places a verified change. `Err`: its parent is held but it does not
    /// apply there (refused: nothing of it is kept).
    pub(crate) fn insert(&mut self, change: VerifiedChange) -> Result<Insert> {
        if change.hash == self.root.head || self.changes.iter().any(|c| c.hash == change.hash) {
            return Ok(Insert::Known);
        }
        let states = self.states();
        let Some(parent) = states.get(&change.parent()) else {
            return Ok(Insert::UnknownParent);
        };
        parent.apply(&change)?;
        self.changes.push(change);
        Ok(Insert::Added)
    }

    /// The canonical chain: indices into `changes`, root first, and the
    /// state at its end.
    pub(crate) fn canonical(&self) -> (Vec<usize>, GroupState) {
        let path = self.best(&self.root);
        let mut state = self.root.clone();
        for &i in &path {
            // Every change on the path applied when it was chosen.
            if let Ok(next) = state.apply(&self.changes[i]) {
                state = next;
            }
        }
        (path, state)
    }

    /// The best path of valid changes from `state` (see the module
    /// documentation).
    fn best(&self, state: &GroupState) -> Vec<usize> {
        let mut best: Option<(Rank, Vec<usize>)> = None;
        for (i, c) in self.changes.iter().enumerate() {
            if c.parent() != state.head {
                continue;
            }
            let Ok(next) = state.apply(c) else {
                continue;
            };
            let mut path = vec![i];
            path.extend(self.best(&next));
            let rank = path
                .iter()
                .map(|&j| state.seniority(&self.changes[j].author))
                .min()
                .unwrap_or_else(|| state.seniority(&c.author));
            let key = (rank, c.hash);
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, path));
            }
        }
        best.map(|(_, p)| p).unwrap_or_default()
    }

    /// Keeps at most [`MAX_HISTORY`] changes: the root moves along the
    /// canonical chain, and what no longer descends from it goes.
    pub(crate) fn prune(&mut self) {
        while self.changes.len() > MAX_HISTORY {
            let (path, _) = self.canonical();
            let Some(&first) = path.first() else {
                self.changes.clear();
                return;
            };
            let Ok(root) = self.root.apply(&self.changes[first]) else {
                self.changes.clear();
                return;
            };
            self.root = root;
            self.changes.remove(first);
            let states = self.states();
            self.changes.retain(|c| states.contains_key(&c.hash));
        }
    }

    /// The state right after each change of `path` (for events).
    pub(crate) fn states_along(&self, path: &[usize]) -> Vec<GroupState> {
        let mut out = Vec::with_capacity(path.len());
        let mut state = self.root.clone();
        for &i in path {
            if let Ok(next) = state.apply(&self.changes[i]) {
                state = next;
            }
            out.push(state.clone());
        }
        out
    }
}
