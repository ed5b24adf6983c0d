//! A group on simulated relays, for the group benchmark
//! (`messenger/benches/group.rs`): real devices, the real outbox planner and
//! receive step, relays answered in memory. What it measures is this
//! crate's own work (planning, encrypting, storing, deciding), not a
//! network's. Built only with the `fuzzing` feature; not an API.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use rand_core::OsRng;

use crate::engine::group::{self, state::GroupId};
use crate::engine::outbound;
use crate::engine::testkit::{Envelopes, SimNet, TestUser, NOW};

/// What one send cost the sender's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Encoded submission requests (`Send` / `SendShared`), bytes.
    pub uploaded_bytes: usize,
    /// Envelopes the relay stored (one per recipient device).
    pub envelopes: usize,
    /// One envelope's payload, bytes.
    pub envelope_bytes: usize,
    /// The sender's own time (queue and outbox pass), without the
    /// simulated relays' part.
    pub sender_time: Duration,
}

/// A group of `members` users (the sender, with one device, and
/// `members - 1` others with `devices` devices each), every sender key
/// handed out (one group message already read).
pub struct GroupBench {
    net: SimNet,
    sender: TestUser,
    members: Vec<TestUser>,
    id: GroupId,
}

impl GroupBench {
    pub fn new(members: usize, devices: u32) -> Self {
        let mut net = SimNet::default();
        let mut sender = TestUser::new(1);
        net.publish(&mut sender);
        let mut users: Vec<TestUser> = (1..members).map(|_| TestUser::new(devices)).collect();
        for u in &mut users {
            net.publish(u);
            sender.accept(u);
            u.accept(&sender);
        }
        let (me, cert) = (sender.address(), sender.devices[0].cert);
        let addresses: Vec<_> = users.iter().map(TestUser::address).collect();
        let id = group::create(
            &mut sender.devices[0].device,
            &me,
            &cert,
            "bench",
            &addresses,
            NOW,
            &mut OsRng,
        )
        .unwrap();
        let mut bench = GroupBench {
            net,
            sender,
            members: users,
            id,
        };
        bench.net.pass(&mut bench.sender, 0);
        bench.deliver_all();
        // The first message hands out the sender key (a pairwise session
        // per device); from here on only the group envelope goes.
        bench.send_group(16);
        bench.deliver_all();
        bench
    }

    fn deliver_all(&mut self) {
        for u in &mut self.members {
            for d in 0..u.devices.len() {
                self.net.deliver(u, d);
            }
        }
    }

    fn sent(&mut self) -> Sent {
        let envelopes: usize = self.net.mailboxes.values().map(Vec::len).sum();
        let envelope_bytes = self
            .net
            .mailboxes
            .values()
            .flatten()
            .map(|(_, p)| p.len())
            .next()
            .unwrap_or(0);
        Sent {
            uploaded_bytes: std::mem::take(&mut self.net.uploaded),
            envelopes,
            envelope_bytes,
            sender_time: Duration::ZERO,
        }
    }

    /// One group message of `len` bytes of text, queued and sent (one
    /// outbox pass): the sender's whole work. Not delivered.
    pub fn send_group(&mut self, len: usize) -> Sent {
        let (me, text, id) = (self.sender.address(), "a".repeat(len), self.id);
        self.timed(|b| {
            group::queue_message(
                &mut b.sender.devices[0].device,
                &me,
                id,
                &text,
                Vec::new(),
                NOW,
                &mut OsRng,
            )
            .unwrap();
        })
    }

    /// The same text sent the only way there was before groups: one
    /// message to each member, a pairwise envelope per device. Not delivered.
    pub fn send_pairwise(&mut self, len: usize) -> Sent {
        let (me, text) = (self.sender.address(), "a".repeat(len));
        let to: Vec<_> = self.members.iter().map(TestUser::address).collect();
        self.timed(|b| {
            for u in &to {
                outbound::queue_message(
                    &mut b.sender.devices[0].device,
                    &me,
                    u,
                    &text,
                    Vec::new(),
                    NOW,
                    &mut OsRng,
                )
                .unwrap();
            }
        })
    }

    /// Runs `queue`, then one outbox pass of the sender; the sender's time
    /// is the whole, without the simulated relays' part.
    fn timed(&mut self, queue: impl FnOnce(&mut Self)) -> Sent {
        let started = Instant::now();
        self.net.serve_time = Duration::ZERO;
        queue(self);
        self.net.uploaded = 0;
        self.net.pass(&mut self.sender, 0);
        let took = started.elapsed().saturating_sub(self.net.serve_time);
        Sent {
            sender_time: took,
            ..self.sent()
        }
    }

    /// Forgets what the relays hold (what was sent is not delivered).
    pub fn drop_mailboxes(&mut self) {
        self.net.mailboxes.clear();
    }

    /// Sends `n` group messages, then times the first member device
    /// receiving them in order (each one step of its chain, committed as the
    /// receive loop does); the other devices' copies are dropped.
    pub fn receive_group(&mut self, n: usize) -> Duration {
        let key = (
            self.members[0].account.public(),
            self.members[0].devices[0].mailbox,
        );
        let mut got: Envelopes = Vec::with_capacity(n);
        for _ in 0..n {
            self.send_group(256);
            got.extend(self.net.mailboxes.remove(&key).unwrap_or_default());
            self.drop_mailboxes();
        }
        let member = &mut self.members[0];
        let started = Instant::now();
        for e in &got {
            member.receive(0, e);
        }
        started.elapsed()
    }
}
