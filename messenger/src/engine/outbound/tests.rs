//! Sending without a network: the planner against a relay simulated in
//! memory (device lists, bundles, mailboxes), with faults injected at every
//! step, crashes between steps, and device lists that change under it. The
//! receivers are real devices running the real receive step.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use rand_core::OsRng;
use sotto_core::device::Device;
use sotto_core::store::memory::MemoryStore;
use sotto_proto::relay::{ErrorCode, SignedDeviceList};
use sotto_relay::{EnvelopeId, FetchedBundle, RelayError};

use super::*;
use crate::engine::address::RelayAddress;
use crate::engine::testkit::{TestDevice, TestUser};

/// What the simulated relay does with one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Serves the request.
    None,
    /// The connection drops (the request is not served).
    Network,
    /// A refusal that says "later".
    RateLimited,
    /// The recipient device's mailbox is full (submissions only).
    Full,
    /// A refusal that repeats (the item's fault).
    Refused,
    /// The device replaced the token we hold (submissions with a token).
    StaleToken,
    /// The relay serves the request, then this device crashes before it
    /// hears the answer: the planner and the device's memory are lost.
    CrashAfter,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        12 => Just(Fault::None),
        2 => Just(Fault::Network),
        1 => Just(Fault::RateLimited),
        1 => Just(Fault::Full),
        1 => Just(Fault::Refused),
        1 => Just(Fault::StaleToken),
        1 => Just(Fault::CrashAfter),
    ]
}

/// One thing that happens between passes.
#[derive(Debug, Clone)]
enum Op {
    /// The app queues a message to Bob.
    Send,
    /// The app queues a message to Carol, whose relay is down for good.
    SendToUnreachable,
    /// A repair item to Carol (it must never hold Bob's messages).
    RepairToUnreachable,
    /// A pass, each step meeting the next fault (then `None`).
    Pass(Vec<Fault>),
    /// Bob links a new device (a new list version on his relay).
    BobAddsDevice,
    /// Bob removes his newest device (never device 1).
    BobRemovesDevice,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Send),
        1 => Just(Op::SendToUnreachable),
        1 => Just(Op::RepairToUnreachable),
        6 => proptest::collection::vec(fault(), 0..12).prop_map(Op::Pass),
        1 => Just(Op::BobAddsDevice),
        1 => Just(Op::BobRemovesDevice),
    ]
}

/// A mailbox by (user, mailbox key).
type Mailbox = ([u8; 32], [u8; 32]);
/// An envelope in a mailbox: its relay id and payload.
type Envelope = ([u8; 16], Vec<u8>);

/// The relays: Bob's and Alice's on one address, Carol's on another (down).
struct Net {
    lists: BTreeMap<[u8; 32], SignedDeviceList>,
    bundles: BTreeMap<Mailbox, Vec<u8>>,
    mailboxes: BTreeMap<Mailbox, Vec<Envelope>>,
    down: RelayAddress,
    next_id: u64,
    next_device_id: BTreeMap<[u8; 32], u32>,
}

impl Net {
    /// Empty relays; `down` never answers.
    fn new(down: RelayAddress) -> Self {
        Net {
            lists: BTreeMap::new(),
            bundles: BTreeMap::new(),
            mailboxes: BTreeMap::new(),
            down,
            next_id: 1,
            next_device_id: BTreeMap::new(),
        }
    }

    fn publish(&mut self, user: &mut TestUser, version: u64) {
        let mut list = user.list(version);
        // Device ids are never reused: the list's counter never goes back.
        let next = self
            .next_device_id
            .entry(user.account.public())
            .or_default();
        *next = (*next).max(list.next_device_id);
        list.next_device_id = *next;
        self.lists
            .insert(user.account.public(), user.signed_list(&list));
        let account = user.account.public();
        for d in &mut user.devices {
            self.bundles
                .insert((account, d.mailbox), d.device.signed_bundle().unwrap());
        }
    }

    fn error(code: ErrorCode) -> Error {
        Error::Relay(RelayError::refusal(code, "simulated"))
    }

    /// Serves one step, or fails it by `fault`. `None` for a step the
    /// planner must not get an answer to (a crash).
    fn serve(&mut self, step: &Step, fault: Fault) -> Input {
        let net_err = || Error::Relay(RelayError::Io(std::io::Error::other("simulated")));
        let relay = match step {
            Step::FetchDeviceList(u) => &u.relay,
            Step::FetchBundle { user, .. } => &user.relay,
            Step::Submit { user, .. } => &user.relay,
            Step::SubmitShared { .. } | Step::Done(_) => unreachable!("no groups here"),
        };
        let fault = if *relay == self.down {
            Fault::Network
        } else {
            fault
        };
        let refusal = match fault {
            Fault::Network => Some(net_err()),
            Fault::RateLimited => Some(Self::error(ErrorCode::RateLimited)),
            Fault::Refused => Some(Self::error(ErrorCode::InvalidArgument)),
            Fault::Full if matches!(step, Step::Submit { .. }) => {
                Some(Self::error(ErrorCode::QuotaExceeded))
            }
            Fault::StaleToken if matches!(step, Step::Submit { token: Some(_), .. }) => {
                Some(Self::error(ErrorCode::BadDeliveryToken))
            }
            _ => None,
        };
        match step {
            Step::FetchDeviceList(user) => Input::DeviceList(match refusal {
                Some(e) => Err(e),
                None => Ok(self.lists.get(&user.user).cloned()),
            }),
            Step::FetchBundle { user, mailbox } => Input::Bundle(match refusal {
                Some(e) => Err(e),
                None => self
                    .bundles
                    .get(&(user.user, mailbox.0))
                    .map(|b| FetchedBundle {
                        signed_bundle: b.clone(),
                        one_time_ec: None,
                        one_time_kem: None,
                    })
                    .ok_or(Self::error(ErrorCode::NotFound)),
            }),
            Step::Submit {
                user,
                mailbox,
                envelope,
                ..
            } => Input::Submitted(match refusal {
                Some(e) => Err(e),
                None => {
                    let mut id = [0u8; 16];
                    id[8..].copy_from_slice(&self.next_id.to_be_bytes());
                    self.next_id += 1;
                    self.mailboxes
                        .entry((user.user, mailbox.0))
                        .or_default()
                        .push((id, envelope.clone()));
                    Ok(EnvelopeId(id))
                }
            }),
            Step::SubmitShared { .. } | Step::Done(_) => unreachable!(),
        }
    }
}

/// Runs one pass; faults are consumed one per step. Returns the pass, or
/// `None` if the device crashed.
fn pass(
    alice: &mut TestUser,
    net: &mut Net,
    faults: &mut std::vec::IntoIter<Fault>,
) -> Option<Pass> {
    let me = alice.address();
    let sender = &mut alice.devices[0];
    let mut planner =
        Planner::new(&mut sender.device, me, sender.cert, PlannerCache::default()).unwrap();
    for _ in 0..10_000 {
        let step = planner.poll(&mut sender.device, 1_000, &mut OsRng).unwrap();
        if let Step::Done(p) = step {
            return Some(p);
        }
        let fault = faults.next().unwrap_or(Fault::None);
        let input = net.serve(&step, fault);
        if fault == Fault::CrashAfter {
            crash(sender);
            return None;
        }
        planner
            .handle(&mut sender.device, input, 1_000, &mut OsRng)
            .unwrap();
    }
    panic!("a pass that never ends");
}

/// The device restarts from its store: whatever was not committed is gone.
fn crash(d: &mut TestDevice) {
    let store: MemoryStore = d.device.store().clone();
    d.device = Device::open(store).unwrap();
}

/// Every envelope in `device`'s mailbox not yet read, processed by the
/// real receive step.
fn receive(user: &mut TestUser, index: usize, net: &mut Net, read: &mut BTreeMap<Mailbox, usize>) {
    let mailbox = (user.account.public(), user.devices[index].mailbox);
    let envelopes = net.mailboxes.get(&mailbox).cloned().unwrap_or_default();
    let from = read.entry(mailbox).or_default();
    for e in &envelopes[*from..] {
        user.receive(index, e);
    }
    *from = envelopes.len();
}

/// The message ids of `kind` events ("message" or "sent_sync") a device
/// queued, with how often each was shown.
fn shown(user: &mut TestUser, index: usize, kind: &str) -> BTreeMap<Vec<u8>, usize> {
    use sotto_proto::client::client_event::Kind as K;
    let mut out = BTreeMap::new();
    for e in user.events(index) {
        let id = match (&e.kind, kind) {
            // A device that joined after Bob accepted Alice sees requests.
            (Some(K::Message(m) | K::MessageRequest(m)), "message") => m.id.clone(),
            (Some(K::SentSync(s)), "sent_sync") => s.message.as_ref().unwrap().id.clone(),
            _ => continue,
        };
        *out.entry(id).or_insert(0) += 1;
    }
    out
}

fn failed(user: &mut TestUser) -> BTreeSet<Vec<u8>> {
    use sotto_proto::client::client_event::Kind as K;
    user.events(0)
        .into_iter()
        .filter(|e| matches!(e.kind, Some(K::SendFailed(_))))
        .map(|e| e.message_id)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Whatever the network does, the relay refuses, the device crashes
    /// between steps and Bob's devices change: every message reaches every
    /// device of Bob's listed from its queuing on, and Alice's other device,
    /// exactly once (unless a repeating refusal ended it with a `SendFailed`
    /// event, and only then); no
    /// removed device gets anything after its removal; a recipient whose
    /// relay is down holds back nobody else; the outbox ends empty but for
    /// the unreachable recipient's items.
    #[test]
    fn every_message_reaches_every_listed_device_exactly_once(ops in proptest::collection::vec(op(), 1..24)) {
        let mut alice = TestUser::new(2);
        let mut bob = TestUser::new(2);
        let carol = {
            let mut c = TestUser::new(1);
            c.relay = RelayAddress::new("127.0.0.2:1".parse().unwrap(), [8; 32]);
            c
        };
        alice.accept(&bob);
        alice.accept(&carol);
        bob.accept(&alice);
        let mut net = Net::new(carol.relay.clone());
        // Bob's devices gave Alice delivery tokens (so a stale one can be refused).
        let bob_user = bob.account.public();
        alice.devices[0].device.store_mut().transaction(|tx| {
            for d in [1u32, 2] {
                records::put_delivery_token(tx, &bob_user, d, &[d as u8; 32])?;
            }
            Ok::<_, Error>(())
        }).unwrap();
        let mut version = 1;
        net.publish(&mut alice, 1);
        net.publish(&mut bob, 1);
        let (me, bob_addr, carol_addr) = (alice.address(), bob.address(), carol.address());
        let mut sent = Vec::new();
        let mut removed: BTreeMap<Mailbox, usize> = BTreeMap::new();
        // Bob's listed devices, each with the first message it must get
        // (those queued once it was listed).
        let mut from: BTreeMap<u32, usize> = [(1, 0), (2, 0)].into();
        let mut refused = false;
        for op in ops {
            match op {
                Op::Send => {
                    let d = &mut alice.devices[0].device;
                    let id = queue_message(d, &me, &bob_addr, "hi", vec![], 1_000, &mut OsRng).unwrap();
                    sent.push(id.0.to_vec());
                }
                Op::SendToUnreachable => {
                    let d = &mut alice.devices[0].device;
                    queue_message(d, &me, &carol_addr, "hi", vec![], 1_000, &mut OsRng).unwrap();
                }
                Op::RepairToUnreachable => {
                    alice.devices[0].device.store_mut().transaction(|tx| {
                        records::push_outbox(tx, &pb::OutboxItem {
                            recipient: carol_addr.to_string(),
                            content: pb::Content::default().encode_to_vec(),
                            only_devices: vec![1],
                            repair: true,
                            ..Default::default()
                        })
                    }).unwrap();
                }
                Op::Pass(faults) => {
                    refused |= faults.contains(&Fault::Refused);
                    let _ = pass(&mut alice, &mut net, &mut faults.into_iter());
                }
                Op::BobAddsDevice => {
                    let id = net.next_device_id[&bob.account.public()];
                    let device = Device::create(MemoryStore::new(), id, 0, &mut OsRng).unwrap();
                    let cert = bob.account.certify(id, device.identity());
                    bob.devices.push(TestDevice {
                        device,
                        cert,
                        mailbox: crate::engine::testkit::mailbox_of(&bob.account.public(), id),
                    });
                    from.insert(id, sent.len());
                    version += 1;
                    net.publish(&mut bob, version);
                }
                Op::BobRemovesDevice => {
                    if bob.devices.len() > 1 {
                        let gone = bob.devices.pop().unwrap();
                        from.remove(&gone.device.device_id());
                        let key = (bob.account.public(), gone.mailbox);
                        let seen = net.mailboxes.get(&key).map_or(0, Vec::len);
                        removed.insert(key, seen);
                        version += 1;
                        net.publish(&mut bob, version);
                    }
                }
            }
        }
        // The network heals (but Carol's relay): a few passes empty the outbox.
        for _ in 0..(MAX_PERMANENT_FAILURES + 2) {
            let _ = pass(&mut alice, &mut net, &mut Vec::new().into_iter());
        }
        let left: Vec<_> = alice.outbox(0);
        prop_assert!(left.iter().all(|i| i.recipient == carol_addr.to_string()), "{left:?}");

        let failed = failed(&mut alice);
        // Only a refusal that repeats ends a message.
        prop_assert!(refused || failed.is_empty(), "failed without a repeating refusal");
        let mut read = BTreeMap::new();
        for index in 0..bob.devices.len() {
            receive(&mut bob, index, &mut net, &mut read);
        }
        receive(&mut alice, 1, &mut net, &mut read);
        for (index, d) in bob.devices.iter().map(|d| d.device.device_id()).enumerate().collect::<Vec<_>>() {
            let got = shown(&mut bob, index, "message");
            for (i, id) in sent.iter().enumerate() {
                let n = got.get(id).copied().unwrap_or(0);
                if from.get(&d).is_some_and(|first| i >= *first) && !failed.contains(id) {
                    prop_assert_eq!(n, 1, "Bob's device {} and message {:?}", d, id);
                } else {
                    prop_assert!(n <= 1, "Bob's device {} shows {:?} {} times", d, id, n);
                }
            }
        }
        let synced = shown(&mut alice, 1, "sent_sync");
        for id in &sent {
            let n = synced.get(id).copied().unwrap_or(0);
            prop_assert!(n <= 1);
            if !failed.contains(id) {
                prop_assert_eq!(n, 1, "Alice's other device and message {:?}", id);
            }
        }
        for (mailbox, seen) in removed {
            let now = net.mailboxes.get(&mailbox).map_or(0, Vec::len);
            prop_assert_eq!(now, seen, "a removed device got envelopes");
        }
    }
}

/// Alice (one device) and Bob (`bob_devices`), accepted contacts, with
/// their lists published on the simulated relay.
fn alice_and_bob(bob_devices: u32) -> (TestUser, TestUser, Net) {
    let mut alice = TestUser::new(1);
    let mut bob = TestUser::new(bob_devices);
    alice.accept(&bob);
    let mut net = Net::new(RelayAddress::new("127.0.0.2:1".parse().unwrap(), [8; 32]));
    net.publish(&mut alice, 1);
    net.publish(&mut bob, 1);
    (alice, bob, net)
}

/// Alice's first device queues a message to `to`.
fn send(alice: &mut TestUser, to: &UserAddress, text: &str) -> MessageId {
    let me = alice.address();
    queue_message(
        &mut alice.devices[0].device,
        &me,
        to,
        text,
        vec![],
        1_000,
        &mut OsRng,
    )
    .unwrap()
}

/// A recipient whose every bundle is refused: the item fails for good
/// after a few passes, with one `SendFailed` event, and nothing is left.
#[test]
fn a_permanent_failure_ends_the_item_with_one_event() {
    let (mut alice, bob, mut net) = alice_and_bob(1);
    net.bundles.clear(); // the relay has no bundle: NotFound, every time
    let to = bob.address();
    let id = send(&mut alice, &to, "hi");
    for _ in 0..MAX_PERMANENT_FAILURES {
        pass(&mut alice, &mut net, &mut Vec::new().into_iter()).unwrap();
    }
    assert!(alice.outbox(0).is_empty());
    assert_eq!(failed(&mut alice), [id.0.to_vec()].into());
}

/// A removed device's session is deleted when the list that removes it is
/// pinned, and the planner never encrypts to it again.
#[test]
fn no_removed_device_ever_gets_a_message() {
    let (mut alice, mut bob, mut net) = alice_and_bob(2);
    let to = bob.address();
    send(&mut alice, &to, "one");
    pass(&mut alice, &mut net, &mut Vec::new().into_iter()).unwrap();
    let gone = bob.devices.pop().unwrap();
    net.publish(&mut bob, 2);
    let gone = (bob.account.public(), gone.mailbox);
    let before = net.mailboxes.get(&gone).map_or(0, Vec::len);
    assert_eq!(before, 1);
    send(&mut alice, &to, "two");
    pass(&mut alice, &mut net, &mut Vec::new().into_iter()).unwrap();
    assert_eq!(net.mailboxes.get(&gone).map_or(0, Vec::len), before);
    let kept = (bob.account.public(), bob.devices[0].mailbox);
    assert_eq!(net.mailboxes.get(&kept).map_or(0, Vec::len), 2);
}

/// A user blocked while an item to them is on its way gets nothing more of
/// it: the planner checks the block (and the pinned list) at every device.
#[test]
fn a_block_during_an_item_stops_it() {
    let (mut alice, bob, mut net) = alice_and_bob(2);
    let (me, to) = (alice.address(), bob.address());
    send(&mut alice, &to, "hi");
    let sender = &mut alice.devices[0];
    let mut planner =
        Planner::new(&mut sender.device, me, sender.cert, PlannerCache::default()).unwrap();
    let mut blocked = false;
    loop {
        let step = planner.poll(&mut sender.device, 1_000, &mut OsRng).unwrap();
        if let Step::Done(_) = step {
            break;
        }
        if let Step::Submit { .. } = step {
            assert!(!blocked, "a submission after the block");
        }
        let input = net.serve(&step, Fault::None);
        planner
            .handle(&mut sender.device, input, 1_000, &mut OsRng)
            .unwrap();
        if !blocked && net.mailboxes.values().map(Vec::len).sum::<usize>() == 1 {
            // One of Bob's two devices has it; now Alice blocks Bob.
            let bob_user = to.user;
            sender
                .device
                .store_mut()
                .transaction(|tx| {
                    let mut c = records::contact(tx, &bob_user)?.unwrap_or_default();
                    c.state = records::BLOCKED;
                    records::put_contact(tx, &bob_user, &c)
                })
                .unwrap();
            blocked = true;
        }
    }
    assert!(blocked);
    assert_eq!(net.mailboxes.values().map(Vec::len).sum::<usize>(), 1);
    assert!(alice.outbox(0).is_empty());
}
