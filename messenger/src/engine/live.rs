//! Presence and typing: live signals that are never stored (PROTOCOL.md
//! III.14). This is the sans-IO half: given what arrived and the time
//! (always passed in), it decides which signals to send and which changes
//! to report. Everything here lives in memory only and dies with the
//! process, on purpose: who is online for whom is never written down, on
//! the relay or here.
//!
//! Presence is asked for, not broadcast. A device whose user has a
//! conversation open *watches* the contact: it sends every device of the
//! contact an ask every [`ASK_INTERVAL_MS`] (backing off while nobody
//! answers, up to [`MAX_ASK_INTERVAL_MS`]). A device that receives an ask
//! from a contact its user shares presence with answers at once and then
//! sends a heartbeat every [`HEARTBEAT_MS`] until the ask is
//! [`ASK_LEASE_MS`] old. The watcher shows the contact online while some
//! device of it said so less than [`OFFLINE_AFTER_MS`] ago: three missed
//! heartbeats, so a network drop shorter than about 30 s does not flap the
//! status, and a killed client shows offline within 45 s. Typing goes only
//! to the devices that watch this user (they have the conversation open).

use std::collections::HashMap;

use sotto_proto::client as pb;

/// How long an ask holds: the answering device sends heartbeats until then.
pub const ASK_LEASE_MS: u64 = 60_000;
/// How often a watching device asks again (well inside the lease).
pub const ASK_INTERVAL_MS: u64 = 30_000;
/// The second ask, when the first found no answer: a contact just added
/// may not have handed its delivery token over yet.
pub const FIRST_RETRY_MS: u64 = 5_000;
/// From the fourth unanswered ask the interval doubles, up to this: a
/// conversation left open on a contact that is away asks it a dozen times
/// an hour, not 120.
pub const MAX_ASK_INTERVAL_MS: u64 = 300_000;
/// How often an answering device repeats its state while asked.
pub const HEARTBEAT_MS: u64 = 15_000;
/// A device not heard for this long counts as offline: three heartbeats,
/// the grace that keeps a brief drop from flapping the status.
pub const OFFLINE_AFTER_MS: u64 = 45_000;
/// A typing user's "typing" is repeated this often while it lasts.
pub const TYPING_REFRESH_MS: u64 = 8_000;
/// A receiver forgets "typing" not repeated for this long (a lost "stopped").
pub const TYPING_TIMEOUT_MS: u64 = 15_000;
/// A sender stops by itself when the app reported no keystroke for this long.
pub const TYPING_IDLE_MS: u64 = 10_000;
/// Contacts watched at once; watching one more forgets the oldest watch.
pub const MAX_WATCHED: usize = 64;
/// Asking devices answered at once; asks past it are ignored until some
/// lease ends (a contact can name many devices).
pub const MAX_WATCHERS: usize = 1024;
/// Typing states (sent or received) kept at once.
pub const MAX_TYPING: usize = 256;
/// Devices whose latest send time is kept (to refuse signals a relay
/// reordered); past it, a new device's order is not checked.
pub const MAX_ORDERED: usize = 4096;
/// How long a device's latest send time is kept: past a signal's 30 s
/// lifetime (PROTOCOL.md III.14) and the 60 s a sender's clock may lead.
const ORDER_KEPT_MS: u64 = 90_000;

/// What this device knows of a contact's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Not watched, or no device of the contact answered (offline since
    /// before the watch, or not sharing its presence with this user).
    Unknown,
    /// Some device of the contact said so less than [`OFFLINE_AFTER_MS`] ago.
    Online,
    /// Every device that answered went offline (or silent); `last_seen_ms`
    /// is when it was last known online (Unix ms).
    Offline {
        /// When the contact was last known online.
        last_seen_ms: u64,
    },
}

/// A change to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveChange {
    /// A watched contact's presence changed.
    Presence {
        /// The contact (account key).
        user: [u8; 32],
        /// Its presence now.
        presence: Presence,
    },
    /// A contact started or stopped typing to this user.
    Typing {
        /// The contact (account key).
        user: [u8; 32],
        /// Whether it is typing now.
        typing: bool,
    },
}

/// Where a signal goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// Every device of the user that can be reached.
    User([u8; 32]),
    /// One device.
    Device([u8; 32], u32),
}

/// A signal to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Its recipients.
    pub to: To,
    /// The signal.
    pub signal: pb::live::Signal,
}

#[derive(Debug, Clone, Copy)]
struct Heard {
    at_ms: u64,
    online: bool,
    last_seen_ms: u64,
}

#[derive(Debug)]
struct Watch {
    since_ms: u64,
    next_ask_ms: u64,
    /// Asks sent since the last answer.
    unanswered: u32,
    devices: HashMap<u32, Heard>,
    reported: Presence,
}

impl Watch {
    /// The pause before the next ask, once `unanswered` asks went unanswered.
    fn ask_interval(&self) -> u64 {
        match self.unanswered {
            0..=1 if self.devices.is_empty() => FIRST_RETRY_MS,
            0..=3 => ASK_INTERVAL_MS,
            n => (ASK_INTERVAL_MS << (n - 3).min(8)).min(MAX_ASK_INTERVAL_MS),
        }
    }

    fn presence(&self, now_ms: u64) -> Presence {
        let mut last_seen = None::<u64>;
        for h in self.devices.values() {
            let fresh = now_ms.saturating_sub(h.at_ms) < OFFLINE_AFTER_MS;
            if h.online && fresh {
                return Presence::Online;
            }
            let seen = if h.online { h.at_ms } else { h.last_seen_ms };
            last_seen = Some(last_seen.map_or(seen, |l| l.max(seen)));
        }
        match last_seen {
            Some(last_seen_ms) => Presence::Offline { last_seen_ms },
            None => Presence::Unknown,
        }
    }

    /// When this watch's presence may next change without a signal.
    fn flips_at(&self, now_ms: u64) -> Option<u64> {
        self.devices
            .values()
            .filter(|h| h.online)
            .map(|h| h.at_ms + OFFLINE_AFTER_MS)
            .filter(|&t| t > now_ms)
            .max()
    }
}

#[derive(Debug, Clone, Copy)]
struct TypingOut {
    last_key_ms: u64,
    last_sent_ms: u64,
}

/// The live state of one device.
#[derive(Debug)]
pub struct Live {
    online: bool,
    /// The mailbox subscription is down: no heartbeats.
    suspended: bool,
    /// When this device went offline (for the "last seen" it tells).
    offline_since_ms: u64,
    watches: HashMap<[u8; 32], Watch>,
    /// Devices that asked, and until when they are answered.
    watchers: HashMap<([u8; 32], u32), u64>,
    next_heartbeat_ms: Option<u64>,
    typing_out: HashMap<[u8; 32], TypingOut>,
    /// Contacts' devices typing to this user, until when.
    typing_in: HashMap<([u8; 32], u32), u64>,
    /// The latest send time (the sender's clock) taken from each device:
    /// an older signal arriving later (held back by a relay) is dropped.
    latest: HashMap<([u8; 32], u32), u64>,
}

impl Live {
    /// A device that is offline until [`Self::set_online`] says otherwise.
    pub fn new(now_ms: u64) -> Self {
        Self {
            online: false,
            suspended: false,
            offline_since_ms: now_ms,
            watches: HashMap::new(),
            watchers: HashMap::new(),
            next_heartbeat_ms: None,
            typing_out: HashMap::new(),
            typing_in: HashMap::new(),
            latest: HashMap::new(),
        }
    }

    fn my_state(&self) -> pb::live::Signal {
        pb::live::Signal::Presence(pb::PresenceState {
            online: self.online,
            last_seen_ms: if self.online {
                0
            } else {
                self.offline_since_ms
            },
        })
    }

    /// This device is (not) online: reachable and its user present. A
    /// change is told at once to every device that asked.
    pub fn set_online(&mut self, online: bool, now_ms: u64) -> Vec<Outgoing> {
        if online == self.online {
            return Vec::new();
        }
        self.online = online;
        if !online {
            self.offline_since_ms = now_ms;
        }
        self.watchers.retain(|_, until| *until > now_ms);
        let state = self.my_state();
        self.watchers
            .keys()
            .map(|&(u, d)| Outgoing {
                to: To::Device(u, d),
                signal: state,
            })
            .collect()
    }

    /// Whether this device counts itself online.
    pub fn is_online(&self) -> bool {
        self.online
    }

    /// The mailbox subscription is down (`true`) or back: while down, no
    /// heartbeat goes out (the device cannot hear asks either), so watchers
    /// see it offline after the grace unless it comes back first; nothing
    /// is announced, so a brief drop does not flap.
    pub fn suspend(&mut self, down: bool) {
        self.suspended = down;
    }

    /// Forgets the devices that asked (all, or `user`'s): this user now
    /// hides its presence from them; nothing more goes to them.
    pub fn forget_watchers(&mut self, user: Option<&[u8; 32]>) {
        self.watchers
            .retain(|(u, _), _| user.is_some_and(|w| w != u));
        let users: Vec<[u8; 32]> = self.typing_out.keys().copied().collect();
        for u in users {
            if user.is_none_or(|w| *w == u) {
                self.typing_out.remove(&u);
            }
        }
    }

    /// Starts watching `user` (its conversation is open): asks now and
    /// every [`ASK_INTERVAL_MS`] until [`Self::unwatch`].
    pub fn watch(&mut self, user: [u8; 32], now_ms: u64) {
        if self.watches.contains_key(&user) {
            return;
        }
        if self.watches.len() >= MAX_WATCHED {
            let oldest = self
                .watches
                .iter()
                .min_by_key(|(_, w)| w.since_ms)
                .map(|(u, _)| *u);
            if let Some(u) = oldest {
                self.watches.remove(&u);
            }
        }
        self.watches.insert(
            user,
            Watch {
                since_ms: now_ms,
                next_ask_ms: now_ms,
                unanswered: 0,
                devices: HashMap::new(),
                reported: Presence::Unknown,
            },
        );
    }

    /// Stops watching `user` (its presence becomes [`Presence::Unknown`]).
    pub fn unwatch(&mut self, user: &[u8; 32]) {
        self.watches.remove(user);
    }

    /// What this device knows of `user`'s presence.
    pub fn presence(&self, user: &[u8; 32], now_ms: u64) -> Presence {
        self.watches
            .get(user)
            .map_or(Presence::Unknown, |w| w.presence(now_ms))
    }

    /// The user typed (`true`, call it on every keystroke: it is cheap) or
    /// stopped (`false`: sent, or the draft cleared) in `user`'s conversation.
    pub fn set_typing(&mut self, user: [u8; 32], typing: bool, now_ms: u64) -> Vec<Outgoing> {
        if !typing {
            return match self.typing_out.remove(&user) {
                Some(_) => self.to_watchers_of(user, false, now_ms),
                None => Vec::new(),
            };
        }
        let due = match self.typing_out.get_mut(&user) {
            Some(t) => {
                t.last_key_ms = now_ms;
                now_ms.saturating_sub(t.last_sent_ms) >= TYPING_REFRESH_MS
            }
            None => {
                if self.typing_out.len() >= MAX_TYPING {
                    return Vec::new();
                }
                self.typing_out.insert(
                    user,
                    TypingOut {
                        last_key_ms: now_ms,
                        last_sent_ms: 0,
                    },
                );
                true
            }
        };
        if !due {
            return Vec::new();
        }
        if let Some(t) = self.typing_out.get_mut(&user) {
            t.last_sent_ms = now_ms;
        }
        self.to_watchers_of(user, true, now_ms)
    }

    fn to_watchers_of(&self, user: [u8; 32], typing: bool, now_ms: u64) -> Vec<Outgoing> {
        self.watchers
            .iter()
            .filter(|(&(u, _), &until)| u == user && until > now_ms)
            .map(|(&(u, d), _)| Outgoing {
                to: To::Device(u, d),
                signal: pb::live::Signal::Typing(pb::Typing { typing }),
            })
            .collect()
    }

    /// A signal from `(user, device)`, an accepted contact's device proven
    /// by its MAC, made at `sent_at_ms` by the sender's clock; `shares`
    /// tells whether this user shares its presence (and typing) with that
    /// contact. A signal not newer than the latest taken from that device
    /// is dropped (a relay held it back past a newer one).
    pub fn receive(
        &mut self,
        user: [u8; 32],
        device: u32,
        signal: &pb::live::Signal,
        sent_at_ms: u64,
        shares: bool,
        now_ms: u64,
    ) -> (Vec<Outgoing>, Vec<LiveChange>) {
        let mut out = Vec::new();
        let mut changes = Vec::new();
        let room = self.latest.len() < MAX_ORDERED;
        match self.latest.get_mut(&(user, device)) {
            Some(latest) if *latest >= sent_at_ms => return (out, changes),
            Some(latest) => *latest = sent_at_ms,
            None if room => {
                self.latest.insert((user, device), sent_at_ms);
            }
            None => {}
        }
        match signal {
            pb::live::Signal::Ask(_) => {
                if !shares {
                    // No answer at all: the asker cannot tell hiding from offline.
                    self.watchers.remove(&(user, device));
                    return (out, changes);
                }
                self.watchers.retain(|_, until| *until > now_ms);
                if !self.watchers.contains_key(&(user, device))
                    && self.watchers.len() >= MAX_WATCHERS
                {
                    return (out, changes);
                }
                self.watchers.insert((user, device), now_ms + ASK_LEASE_MS);
                self.next_heartbeat_ms.get_or_insert(now_ms + HEARTBEAT_MS);
                out.push(Outgoing {
                    to: To::Device(user, device),
                    signal: self.my_state(),
                });
                // A conversation just opened on the other side while this
                // user types: tell it at once.
                if self.typing_out.contains_key(&user) {
                    out.push(Outgoing {
                        to: To::Device(user, device),
                        signal: pb::live::Signal::Typing(pb::Typing { typing: true }),
                    });
                }
            }
            pb::live::Signal::Presence(p) => {
                if let Some(w) = self.watches.get_mut(&user) {
                    w.unanswered = 0;
                    w.next_ask_ms = w.next_ask_ms.min(now_ms + ASK_INTERVAL_MS);
                    // A "last seen" from the future is the sender's claim:
                    // never later than now; and never earlier than what
                    // this device already knew of it.
                    let known = w.devices.get(&device).map_or(0, |h| {
                        if h.online {
                            h.at_ms
                        } else {
                            h.last_seen_ms
                        }
                    });
                    let last_seen_ms = if p.online {
                        0
                    } else {
                        p.last_seen_ms.min(now_ms).max(known)
                    };
                    w.devices.insert(
                        device,
                        Heard {
                            at_ms: now_ms,
                            online: p.online,
                            last_seen_ms,
                        },
                    );
                    report(user, w, now_ms, &mut changes);
                }
            }
            pb::live::Signal::Typing(t) => {
                let before = self.is_typing(&user, now_ms);
                if t.typing {
                    if self.typing_in.len() < MAX_TYPING
                        || self.typing_in.contains_key(&(user, device))
                    {
                        self.typing_in
                            .insert((user, device), now_ms + TYPING_TIMEOUT_MS);
                    }
                } else {
                    self.typing_in.remove(&(user, device));
                }
                let after = self.is_typing(&user, now_ms);
                if before != after {
                    changes.push(LiveChange::Typing {
                        user,
                        typing: after,
                    });
                }
            }
        }
        (out, changes)
    }

    fn is_typing(&self, user: &[u8; 32], now_ms: u64) -> bool {
        self.typing_in
            .iter()
            .any(|(&(u, _), &until)| &u == user && until > now_ms)
    }

    /// Whether `user` is typing to this user now.
    pub fn typing(&self, user: &[u8; 32], now_ms: u64) -> bool {
        self.is_typing(user, now_ms)
    }

    /// Everything time makes due: asks, heartbeats, "typing" repeated or
    /// stopped, statuses gone stale.
    pub fn tick(&mut self, now_ms: u64) -> (Vec<Outgoing>, Vec<LiveChange>) {
        let mut out = Vec::new();
        let mut changes = Vec::new();
        for (user, w) in &mut self.watches {
            if w.next_ask_ms <= now_ms {
                w.unanswered = w.unanswered.saturating_add(1);
                w.next_ask_ms = now_ms + w.ask_interval();
                out.push(Outgoing {
                    to: To::User(*user),
                    signal: pb::live::Signal::Ask(pb::PresenceAsk {}),
                });
            }
            report(*user, w, now_ms, &mut changes);
        }
        self.watchers.retain(|_, until| *until > now_ms);
        if self.watchers.is_empty() {
            self.next_heartbeat_ms = None;
        } else if self.next_heartbeat_ms.is_some_and(|t| t <= now_ms) {
            self.next_heartbeat_ms = Some(now_ms + HEARTBEAT_MS);
            if !self.suspended {
                let state = self.my_state();
                out.extend(self.watchers.keys().map(|&(u, d)| Outgoing {
                    to: To::Device(u, d),
                    signal: state,
                }));
            }
        }
        let users: Vec<[u8; 32]> = self.typing_out.keys().copied().collect();
        for user in users {
            let Some(t) = self.typing_out.get(&user).copied() else {
                continue;
            };
            if now_ms.saturating_sub(t.last_key_ms) >= TYPING_IDLE_MS {
                out.extend(self.set_typing(user, false, now_ms));
            } else if now_ms.saturating_sub(t.last_sent_ms) >= TYPING_REFRESH_MS {
                if let Some(t) = self.typing_out.get_mut(&user) {
                    t.last_sent_ms = now_ms;
                }
                out.extend(self.to_watchers_of(user, true, now_ms));
            }
        }
        self.latest
            .retain(|_, sent_at| sent_at.saturating_add(ORDER_KEPT_MS) > now_ms);
        let mut stopped: Vec<[u8; 32]> = Vec::new();
        self.typing_in.retain(|&(u, _), until| {
            let keep = *until > now_ms;
            if !keep {
                stopped.push(u);
            }
            keep
        });
        stopped.sort_unstable();
        stopped.dedup();
        for user in stopped {
            if !self.is_typing(&user, now_ms) {
                changes.push(LiveChange::Typing {
                    user,
                    typing: false,
                });
            }
        }
        (out, changes)
    }

    /// When [`Self::tick`] has something to do next, if ever (after a
    /// tick at `now_ms`, never before it).
    pub fn next_deadline(&self, now_ms: u64) -> Option<u64> {
        let asks = self.watches.values().map(|w| w.next_ask_ms);
        let flips = self.watches.values().filter_map(|w| w.flips_at(now_ms));
        let typing_out = self
            .typing_out
            .values()
            .map(|t| (t.last_key_ms + TYPING_IDLE_MS).min(t.last_sent_ms + TYPING_REFRESH_MS));
        let typing_in = self.typing_in.values().copied();
        let leases = self.watchers.values().copied();
        asks.chain(flips)
            .chain(typing_out)
            .chain(typing_in)
            .chain(leases)
            .chain(self.next_heartbeat_ms)
            .min()
            .map(|t| t.max(now_ms))
    }
}

fn report(user: [u8; 32], w: &mut Watch, now_ms: u64, changes: &mut Vec<LiveChange>) {
    let now = w.presence(now_ms);
    if now != w.reported {
        w.reported = now;
        changes.push(LiveChange::Presence {
            user,
            presence: now,
        });
    }
}

#[cfg(test)]
mod tests;
