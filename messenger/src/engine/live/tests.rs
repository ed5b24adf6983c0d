//! Presence and typing over a simulated network: two (or three) devices'
//! `Live` states exchanging signals through a lossy, delaying queue with
//! time passed in, as the driver would run them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use proptest::prelude::*;

const ALICE: [u8; 32] = [1; 32];
const BOB: [u8; 32] = [2; 32];

/// Two devices: Alice (device 1) watches Bob (device 1).
struct Net {
    now: u64,
    alice: Live,
    bob: Live,
    /// Bob shares his presence with Alice.
    bob_shares: bool,
    /// Signals are lost while set (a network drop, or Bob killed).
    bob_down: bool,
    alice_changes: Vec<LiveChange>,
    bob_changes: Vec<LiveChange>,
    /// Each sender's last send time: strictly increasing, as the driver
    /// makes them.
    sent_at: u64,
}

impl Net {
    fn new() -> Self {
        let mut n = Net {
            now: 1_000_000,
            alice: Live::new(1_000_000),
            bob: Live::new(1_000_000),
            bob_shares: true,
            bob_down: false,
            alice_changes: Vec::new(),
            bob_changes: Vec::new(),
            sent_at: 0,
        };
        assert!(n.alice.set_online(true, n.now).is_empty());
        assert!(n.bob.set_online(true, n.now).is_empty());
        n
    }

    /// Delivers `out` from `from` (ALICE or BOB), and every answer, at once.
    fn deliver(&mut self, from: [u8; 32], out: Vec<Outgoing>) {
        let mut queue: Vec<([u8; 32], Outgoing)> = out.into_iter().map(|o| (from, o)).collect();
        while let Some((from, o)) = queue.pop() {
            if self.bob_down {
                continue;
            }
            let (to_live, changes, shares) = if from == ALICE {
                (&mut self.bob, &mut self.bob_changes, self.bob_shares)
            } else {
                (&mut self.alice, &mut self.alice_changes, true)
            };
            self.sent_at = self.now.max(self.sent_at + 1);
            let (more, c) = to_live.receive(from, 1, &o.signal, self.sent_at, shares, self.now);
            changes.extend(c);
            let next_from = if from == ALICE { BOB } else { ALICE };
            queue.extend(more.into_iter().map(|o| (next_from, o)));
        }
    }

    /// Runs both devices' timers up to `until`, a deadline at a time.
    fn run_until(&mut self, until: u64) {
        loop {
            let next = [
                self.alice.next_deadline(self.now),
                if self.bob_down {
                    None
                } else {
                    self.bob.next_deadline(self.now)
                },
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(until)
            .max(self.now);
            if next > until {
                self.now = until;
                break;
            }
            self.now = next;
            let (out, c) = self.alice.tick(self.now);
            self.alice_changes.extend(c);
            self.deliver(ALICE, out);
            if !self.bob_down {
                let (out, c) = self.bob.tick(self.now);
                self.bob_changes.extend(c);
                self.deliver(BOB, out);
            }
            if next == until {
                break;
            }
        }
    }
}

#[test]
fn a_watched_contact_shows_online_and_goes_offline_within_45_s_of_its_last_heartbeat() {
    let mut n = Net::new();
    n.alice.watch(BOB, n.now);
    n.run_until(n.now + 1);
    assert_eq!(n.alice.presence(&BOB, n.now), Presence::Online);
    // Heartbeats and renewed asks keep it online for as long as it lasts.
    n.run_until(n.now + 10 * 60_000);
    assert_eq!(n.alice.presence(&BOB, n.now), Presence::Online);
    assert_eq!(
        n.alice_changes,
        [LiveChange::Presence {
            user: BOB,
            presence: Presence::Online
        }],
        "no flapping while heartbeats come"
    );
    // Bob's client is killed: nothing more from it.
    let killed = n.now;
    n.bob_down = true;
    n.run_until(killed + OFFLINE_AFTER_MS + 1);
    match n.alice.presence(&BOB, n.now) {
        Presence::Offline { last_seen_ms } => {
            assert!(last_seen_ms <= killed && killed - last_seen_ms <= HEARTBEAT_MS);
        }
        other => panic!("still {other:?} 45 s after the kill"),
    }
}

#[test]
fn a_drop_shorter_than_the_grace_does_not_flap_and_a_going_offline_shows_at_once() {
    let mut n = Net::new();
    n.alice.watch(BOB, n.now);
    n.run_until(n.now + 60_000);
    n.alice_changes.clear();
    n.bob_down = true;
    n.run_until(n.now + 25_000);
    n.bob_down = false;
    n.run_until(n.now + 120_000);
    assert!(n.alice_changes.is_empty(), "{:?}", n.alice_changes);
    // Bob goes away (app closed): told at once, with when.
    let away = n.now;
    let out = n.bob.set_online(false, away);
    n.deliver(BOB, out);
    assert_eq!(
        n.alice.presence(&BOB, n.now),
        Presence::Offline { last_seen_ms: away }
    );
}

#[test]
fn a_user_hiding_presence_never_answers_and_sends_no_typing() {
    let mut n = Net::new();
    n.bob_shares = false;
    n.alice.watch(BOB, n.now);
    n.run_until(n.now + 5 * 60_000);
    assert_eq!(n.alice.presence(&BOB, n.now), Presence::Unknown);
    let out = n.bob.set_typing(ALICE, true, n.now);
    assert!(out.is_empty(), "typing went to a device it hides from");
}

#[test]
fn typing_goes_only_to_watching_devices_and_a_lost_stop_expires() {
    let mut n = Net::new();
    // Bob does not watch Alice: Alice's typing goes nowhere.
    assert!(n.alice.set_typing(BOB, true, n.now).is_empty());
    assert!(n.alice.set_typing(BOB, false, n.now).is_empty());
    // Bob opens the conversation: Alice's keystrokes reach him, throttled.
    n.bob.watch(ALICE, n.now);
    n.run_until(n.now + 1);
    let mut sent = 0;
    for i in 0..20 {
        let out = n.alice.set_typing(BOB, true, n.now + i * 500);
        sent += out.len();
        n.deliver(ALICE, out);
    }
    n.now += 20 * 500;
    assert_eq!(
        sent, 2,
        "one per {TYPING_REFRESH_MS} ms, not one per keystroke"
    );
    assert!(n.bob.typing(&ALICE, n.now));
    // The stop is lost: Bob forgets within the timeout.
    n.bob_down = true;
    let out = n.alice.set_typing(BOB, false, n.now);
    assert_eq!(out.len(), 1);
    n.deliver(ALICE, out);
    n.bob_down = false;
    let t = n.now;
    n.run_until(t + TYPING_TIMEOUT_MS + 1);
    assert!(!n.bob.typing(&ALICE, n.now));
    assert_eq!(
        n.bob_changes.last(),
        Some(&LiveChange::Typing {
            user: ALICE,
            typing: false
        })
    );
}

#[test]
fn a_sender_that_stops_typing_without_saying_so_stops_by_itself() {
    let mut n = Net::new();
    n.bob.watch(ALICE, n.now);
    n.run_until(n.now + 1);
    let out = n.alice.set_typing(BOB, true, n.now);
    n.deliver(ALICE, out);
    assert!(n.bob.typing(&ALICE, n.now));
    n.run_until(n.now + TYPING_IDLE_MS + 1);
    assert!(!n.bob.typing(&ALICE, n.now), "the idle stop reached Bob");
}

#[test]
fn watchers_and_watches_are_bounded() {
    let mut l = Live::new(0);
    l.set_online(true, 0);
    let ask = pb::live::Signal::Ask(pb::PresenceAsk {});
    for d in 0..(MAX_WATCHERS as u32 + 50) {
        l.receive([9; 32], d, &ask, 1, true, 1);
    }
    assert_eq!(l.watchers.len(), MAX_WATCHERS);
    // Leases end: room again.
    l.tick(1 + ASK_LEASE_MS);
    assert!(l.watchers.is_empty());
    for u in 0..(MAX_WATCHED as u8 + 10) {
        l.watch([u; 32], u64::from(u));
    }
    assert_eq!(l.watches.len(), MAX_WATCHED);
    assert!(!l.watches.contains_key(&[0; 32]), "the oldest watch went");
}

#[test]
fn a_last_seen_from_the_future_is_clamped_to_now() {
    let mut l = Live::new(0);
    l.watch(BOB, 10);
    let lie = pb::live::Signal::Presence(pb::PresenceState {
        online: false,
        last_seen_ms: u64::MAX,
    });
    l.receive(BOB, 1, &lie, 100, true, 100);
    assert_eq!(
        l.presence(&BOB, 100),
        Presence::Offline { last_seen_ms: 100 }
    );
}

proptest! {
    /// Whatever arrives, in any order, duplicated or not, at any times:
    /// nothing panics, the deadline never lies in the past, "online" only
    /// ever rests on a device heard online within the bound, and every
    /// reported change is a real change.
    #[test]
    fn hostile_and_lossy_signals_keep_the_state_sound(
        steps in proptest::collection::vec(
            (0u8..6, 0u32..4, any::<bool>(), any::<u64>(), 0u64..40_000),
            1..200,
        )
    ) {
        let mut l = Live::new(0);
        let mut now = 1_000u64;
        let mut heard_online: HashMap<u32, u64> = HashMap::new();
        let mut reported = Presence::Unknown;
        l.set_online(true, now);
        l.watch(BOB, now);
        for (kind, device, flag, value, dt) in steps {
            now += dt;
            let signal = match kind {
                0 => pb::live::Signal::Ask(pb::PresenceAsk {}),
                1 | 2 => pb::live::Signal::Presence(pb::PresenceState { online: flag, last_seen_ms: value }),
                3 => pb::live::Signal::Typing(pb::Typing { typing: flag }),
                4 => { let _ = l.set_typing(BOB, flag, now); continue; }
                _ => {
                    let (_, changes) = l.tick(now);
                    for c in changes {
                        if let LiveChange::Presence { presence, .. } = c {
                            prop_assert_ne!(presence, reported);
                            reported = presence;
                        }
                    }
                    if let Some(d) = l.next_deadline(now) {
                        prop_assert!(d >= now);
                    }
                    continue;
                }
            };
            if let pb::live::Signal::Presence(p) = &signal {
                if p.online { heard_online.insert(device, now); } else { heard_online.remove(&device); }
            }
            let (_, changes) = l.receive(BOB, device, &signal, now + u64::from(kind), flag, now);
            for c in changes {
                if let LiveChange::Presence { presence, .. } = c {
                    prop_assert_ne!(presence, reported);
                    reported = presence;
                }
            }
            if l.presence(&BOB, now) == Presence::Online {
                prop_assert!(heard_online.values().any(|&t| now - t < OFFLINE_AFTER_MS));
            }
        }
    }
}

#[test]
fn asks_back_off_while_nobody_answers_and_resume_at_the_first_answer() {
    let mut n = Net::new();
    n.bob_down = true;
    n.alice.watch(BOB, n.now);
    let start = n.now;
    let mut asks = Vec::new();
    while n.now < start + 3_600_000 {
        let next = n.alice.next_deadline(n.now).unwrap();
        n.now = next;
        let (out, _) = n.alice.tick(n.now);
        if !out.is_empty() {
            asks.push(n.now - start);
        }
    }
    // 5 s, then 30 s twice, then doubling.
    assert_eq!(&asks[..5], &[0, 5_000, 35_000, 65_000, 125_000]);
    assert!(asks.windows(2).all(|w| w[1] - w[0] <= MAX_ASK_INTERVAL_MS));
    assert!(asks.len() <= 20, "{} asks in an hour to nobody", asks.len());
    // Bob comes back: the next ask is answered, and asks return to every 30 s.
    n.bob_down = false;
    n.run_until(n.now + MAX_ASK_INTERVAL_MS);
    assert_eq!(n.alice.presence(&BOB, n.now), Presence::Online);
    let w = &n.alice.watches[&BOB];
    assert!(w.next_ask_ms - n.now <= ASK_INTERVAL_MS);
}

#[test]
fn a_signal_held_back_past_a_newer_one_is_dropped_and_last_seen_never_goes_back() {
    let mut l = Live::new(0);
    l.watch(BOB, 0);
    let state = |online, last_seen_ms| {
        pb::live::Signal::Presence(pb::PresenceState {
            online,
            last_seen_ms,
        })
    };
    // Bob's heartbeat (made at 1,000) is held back past his "offline"
    // (made at 2,000): it must not bring him back online.
    l.receive(BOB, 1, &state(false, 2_000), 2_000, true, 2_100);
    let (_, changes) = l.receive(BOB, 1, &state(true, 0), 1_000, true, 2_200);
    assert!(changes.is_empty());
    assert_eq!(
        l.presence(&BOB, 2_200),
        Presence::Offline {
            last_seen_ms: 2_000
        }
    );
    // A later "offline, last seen 0" does not erase what was known.
    l.receive(BOB, 1, &state(false, 0), 3_000, true, 3_100);
    assert_eq!(
        l.presence(&BOB, 3_100),
        Presence::Offline {
            last_seen_ms: 2_000
        }
    );
    // Typing: a "true" held back past the "false" stays dropped.
    l.receive(
        BOB,
        1,
        &pb::live::Signal::Typing(pb::Typing { typing: false }),
        5_000,
        true,
        5_000,
    );
    l.receive(
        BOB,
        1,
        &pb::live::Signal::Typing(pb::Typing { typing: true }),
        4_000,
        true,
        5_001,
    );
    assert!(!l.typing(&BOB, 5_001));
}
