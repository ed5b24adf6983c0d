//! Groups without a network: real devices, the real planner and receive
//! step, and relays simulated in memory. What members, removed members,
//! forgers and a replaying relay can and cannot do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rand_core::OsRng;

use super::*;
use crate::engine::outbound::GROUP_LIST_MAX_AGE_MS;
use crate::engine::testkit::{kinds, Envelopes, SimNet as Net, TestUser, NOW};
use sotto_core::store::memory::MemoryStore;

fn state(user: &mut TestUser, index: usize, id: GroupId) -> GroupState {
    user.devices[index]
        .device
        .store_mut()
        .transaction(|tx| current(tx, id))
        .unwrap()
}

fn group_texts(user: &mut TestUser, index: usize) -> Vec<String> {
    user.events(index)
        .into_iter()
        .filter(|e| !e.group_id.is_empty())
        .filter_map(|e| match e.kind {
            Some(pb::client_event::Kind::Message(m)) => Some(m.text),
            _ => None,
        })
        .collect()
}

/// Alice (two devices), Bob and Carol, all on the simulated relay; Alice
/// created a group of the three, and every device processed it.
fn three() -> (Net, TestUser, TestUser, TestUser, GroupId) {
    let mut net = Net::default();
    let (mut alice, mut bob, mut carol) = (TestUser::new(2), TestUser::new(1), TestUser::new(1));
    for u in [&mut alice, &mut bob, &mut carol] {
        net.publish(u);
    }
    alice.accept(&bob);
    alice.accept(&carol);
    bob.accept(&alice);
    carol.accept(&alice);
    let (me, cert) = (alice.address(), alice.devices[0].cert);
    let id = create(
        &mut alice.devices[0].device,
        &me,
        &cert,
        "climbing",
        &[bob.address(), carol.address()],
        NOW,
        &mut OsRng,
    )
    .unwrap();
    net.pass(&mut alice, 0);
    net.deliver(&mut alice, 1);
    net.deliver(&mut bob, 0);
    net.deliver(&mut carol, 0);
    (net, alice, bob, carol, id)
}

fn send(user: &mut TestUser, index: usize, id: GroupId, text: &str) {
    let me = user.address();
    queue_message(
        &mut user.devices[index].device,
        &me,
        id,
        text,
        Vec::new(),
        NOW,
        &mut OsRng,
    )
    .unwrap();
}

#[test]
fn every_member_device_learns_the_group_and_reads_one_ciphertext() {
    let (mut net, mut alice, mut bob, mut carol, id) = three();
    let s = state(&mut alice, 0, id);
    assert_eq!(s.members.len(), 3);
    assert_eq!(state(&mut alice, 1, id), s);
    assert_eq!(state(&mut bob, 0, id), s);
    assert_eq!(state(&mut carol, 0, id), s);
    assert!(kinds(&bob.events(0)).contains(&"group"));

    send(&mut alice, 0, id, "hello group");
    net.pass(&mut alice, 0);
    // Every member device got the same group envelope bytes.
    let group_payloads = |env: Envelopes| -> Vec<Vec<u8>> {
        env.into_iter()
            .map(|(_, p)| p)
            .filter(|p| {
                matches!(
                    pb::Envelope::decode(p.as_slice()).unwrap().body,
                    Some(pb::envelope::Body::SealedGroup(_))
                )
            })
            .collect()
    };
    let b = group_payloads(net.deliver(&mut bob, 0));
    let c = group_payloads(net.deliver(&mut carol, 0));
    let a2 = group_payloads(net.deliver(&mut alice, 1));
    assert_eq!(b.len(), 1);
    assert_eq!(b, c);
    assert_eq!(b, a2);
    // Uploaded once for the three devices (one relay).
    assert_eq!(net.uploaded_shared, b[0].len());
    assert_eq!(group_texts(&mut bob, 0), ["hello group"]);
    assert_eq!(group_texts(&mut carol, 0), ["hello group"]);
    assert_eq!(group_texts(&mut alice, 1), ["hello group"]);

    // Bob answers: his chain goes to every member device first.
    send(&mut bob, 0, id, "hi all");
    net.pass(&mut bob, 0);
    net.deliver(&mut alice, 0);
    net.deliver(&mut alice, 1);
    net.deliver(&mut carol, 0);
    assert_eq!(group_texts(&mut alice, 0), ["hi all"]);
    assert_eq!(group_texts(&mut carol, 0), ["hello group", "hi all"]);
}

#[test]
fn a_removed_member_reads_nothing_sent_after() {
    let (mut net, mut alice, mut bob, mut carol, id) = three();
    send(&mut bob, 0, id, "before");
    net.pass(&mut bob, 0);
    net.deliver(&mut carol, 0);
    assert_eq!(group_texts(&mut carol, 0), ["before"]);
    // Alice removes Carol; everyone (Carol too) hears it.
    let (me, cert) = (alice.address(), alice.devices[0].cert);
    let remove = pb::GroupAction {
        action: Some(pb::group_action::Action::Remove(
            carol.address().user.to_vec(),
        )),
    };
    change(
        &mut alice.devices[0].device,
        &me,
        &cert,
        id,
        vec![remove],
        NOW,
    )
    .unwrap();
    net.pass(&mut alice, 0);
    net.deliver(&mut bob, 0);
    // Carol's client ignores her removal (it keeps every key she had).
    let carol_mailbox = (carol.address().user, carol.devices[0].mailbox);
    net.mailboxes.remove(&carol_mailbox);
    assert!(!state(&mut bob, 0, id).is_member(&carol.address().user));
    // Bob and Alice send again: new chains, never handed to Carol.
    send(&mut bob, 0, id, "after");
    net.pass(&mut bob, 0);
    send(&mut alice, 0, id, "after too");
    net.pass(&mut alice, 0);
    let to_carol = net.deliver(&mut carol, 0);
    assert!(to_carol.is_empty(), "nothing goes to a removed member");
    // Even if a relay hands her the envelopes Bob's devices got, she
    // cannot read them.
    let leaked = net.deliver(&mut alice, 0);
    for (i, e) in leaked.iter().enumerate() {
        let mut id16 = e.0;
        id16[0] = 0xee;
        id16[1] = i as u8;
        carol.receive(0, &(id16, e.1.clone()));
    }
    assert_eq!(group_texts(&mut carol, 0), ["before"]);
    assert_eq!(group_texts(&mut alice, 0), ["before", "after"]);
}

/// The sender keeps a group's recipients from one clean send to the next
/// (`outbound::plan`); a device its user removed (a stolen phone) must
/// still get nothing sent after the sender learns of it, and a member the
/// sender blocks nothing at all, though nothing else about the group moved.
#[test]
fn kept_recipients_never_outlive_a_removed_device_or_a_block() {
    let (mut net, mut alice, mut bob, mut carol, id) = three();
    // The first message hands out Bob's key; the second goes out as a
    // kept plan would.
    for text in ["one", "two"] {
        send(&mut bob, 0, id, text);
        net.pass(&mut bob, 0);
    }
    net.deliver(&mut alice, 1);
    assert_eq!(group_texts(&mut alice, 1), ["one", "two"]);
    // Alice drops her second device; Bob pins the list that no longer
    // names it (as the receive loop would).
    let kept = alice.devices[0].device.device_id();
    let mut list = alice.list(2);
    list.devices.retain(|d| d.device_id == kept);
    net.lists
        .insert(alice.account.public(), alice.signed_list(&list));
    let addr = alice.address();
    bob.devices[0]
        .device
        .store_mut()
        .transaction(|tx| records::apply_list(tx, &addr, &list, NOW).map(|_| ()))
        .unwrap();
    send(&mut bob, 0, id, "three");
    net.pass(&mut bob, 0);
    assert!(
        net.deliver(&mut alice, 1).is_empty(),
        "a removed device gets nothing"
    );
    net.deliver(&mut alice, 0);
    assert_eq!(group_texts(&mut alice, 0), ["one", "two", "three"]);
    // Bob blocks Carol: his next message does not reach her.
    net.deliver(&mut carol, 0);
    let carol_user = carol.address().user;
    bob.devices[0]
        .device
        .store_mut()
        .transaction(|tx| {
            let mut c = records::contact(tx, &carol_user)?.unwrap_or_default();
            c.state = records::BLOCKED;
            records::put_contact(tx, &carol_user, &c)
        })
        .unwrap();
    send(&mut bob, 0, id, "four");
    net.pass(&mut bob, 0);
    assert!(
        net.deliver(&mut carol, 0).is_empty(),
        "a blocked member gets nothing"
    );
    net.deliver(&mut alice, 0);
    assert_eq!(group_texts(&mut alice, 0), ["one", "two", "three", "four"]);
}

/// A group of 702 (most of them addresses that never answer): its creation
/// (about 100 KB of member addresses) is over the relay's 96 KiB envelope;
/// it goes in pieces, and Bob and Alice's other device hold the whole
/// group.
#[test]
fn a_group_too_large_for_one_envelope_reaches_every_device_in_pieces() {
    let (mut net, mut alice, mut bob, _carol, _) = three();
    let relay = bob.address().relay;
    let mut members = vec![bob.address()];
    for i in 0..700u32 {
        let mut user = [0xAA; 32];
        user[..4].copy_from_slice(&i.to_be_bytes());
        members.push(UserAddress {
            user,
            relay: relay.clone(),
        });
    }
    let (me, cert) = (alice.address(), alice.devices[0].cert);
    let id = create(
        &mut alice.devices[0].device,
        &me,
        &cert,
        "big",
        &members,
        NOW,
        &mut OsRng,
    )
    .unwrap();
    // The 700 have no list: their items wait, the others go.
    net.run_pass(&mut alice, 0, NOW);
    net.deliver(&mut bob, 0);
    net.deliver(&mut alice, 1);
    assert_eq!(state(&mut bob, 0, id).members.len(), 702);
    assert_eq!(state(&mut alice, 1, id).members.len(), 702);
    // A message in it reads on Bob's device.
    send(&mut alice, 0, id, "hello all");
    net.run_pass(&mut alice, 0, NOW);
    net.deliver(&mut bob, 0);
    assert_eq!(group_texts(&mut bob, 0), ["hello all"]);
}

/// A member of two groups re-seals a message of one under the other's
/// key and gets it to a fellow member first: refused before the chain
/// moves, so the genuine copy still reads (it would have been a duplicate).
#[test]
fn a_message_resealed_under_another_group_burns_no_key() {
    let (mut net, mut alice, mut bob, _carol, id) = three();
    let (me, cert) = (alice.address(), alice.devices[0].cert);
    let other = create(
        &mut alice.devices[0].device,
        &me,
        &cert,
        "other",
        &[bob.address()],
        NOW,
        &mut OsRng,
    )
    .unwrap();
    net.pass(&mut alice, 0);
    net.deliver(&mut bob, 0);
    send(&mut alice, 0, id, "for the first group");
    net.pass(&mut alice, 0);
    let key = (bob.address().user, bob.devices[0].mailbox);
    let got = net.mailboxes.remove(&key).unwrap_or_default();
    let mut resealed = Vec::new();
    for (eid, payload) in &got {
        if let Some(pb::envelope::Body::SealedGroup(b)) =
            pb::Envelope::decode(payload.as_slice()).unwrap().body
        {
            let inner = sotto_core::sealed::open_shared(&seal_key(&id), &b).unwrap();
            let g = pb::GroupEnvelope::decode(inner.as_slice()).unwrap();
            let mut forged_id = *eid;
            forged_id[0] ^= 0xff;
            resealed.push((forged_id, seal_envelope(&other, &g, &[9; 24]).unwrap()));
        }
    }
    assert_eq!(resealed.len(), 1);
    // The re-sealed copy first (the sender key arrives with the genuine
    // batch, so hand it over first).
    for e in got.iter().filter(|(_, p)| {
        !matches!(
            pb::Envelope::decode(p.as_slice()).unwrap().body,
            Some(pb::envelope::Body::SealedGroup(_))
        )
    }) {
        bob.receive(0, e);
    }
    bob.receive(0, &resealed[0]);
    assert!(group_texts(&mut bob, 0).is_empty());
    for e in &got {
        bob.receive(0, e);
    }
    assert_eq!(group_texts(&mut bob, 0), ["for the first group"]);
}

/// A group message goes to every member device, the sender's own too, so
/// the relay cannot name the sender by the mailbox left out; the sender's
/// device takes its copy back silently, and a copy claiming that device
/// that its chain did not send is a failure.
#[test]
fn the_sender_gets_its_own_copy_back_silently_and_a_forged_one_fails() {
    let (mut net, mut alice, mut bob, _carol, id) = three();
    send(&mut alice, 0, id, "hello");
    net.pass(&mut alice, 0);
    let own = (alice.address().user, alice.devices[0].mailbox);
    let back = net.mailboxes.get(&own).cloned().unwrap_or_default();
    assert_eq!(back.len(), 1, "the sender's own mailbox is a recipient");
    let before = alice.events(0).len();
    alice.receive(0, &back[0]);
    assert_eq!(alice.events(0).len(), before, "no event for its own copy");
    // Bob, a member, forges a message claiming Alice's device 0 under the
    // group's key (with his own chain's bytes): a failure, not silence.
    net.deliver(&mut bob, 0);
    send(&mut bob, 0, id, "mine");
    net.pass(&mut bob, 0);
    let bobs = net.mailboxes.remove(&own).unwrap_or_default();
    let mut forged = None;
    for (_, p) in &bobs {
        if let Some(pb::envelope::Body::SealedGroup(b)) =
            pb::Envelope::decode(p.as_slice()).unwrap().body
        {
            let inner = sotto_core::sealed::open_shared(&seal_key(&id), &b).unwrap();
            let mut g = pb::GroupEnvelope::decode(inner.as_slice()).unwrap();
            g.sender_user = alice.address().user.to_vec();
            g.sender_device = alice.devices[0].device.device_id();
            forged = Some(seal_envelope(&id, &g, &[7; 24]).unwrap());
        }
    }
    alice.receive(0, &([0x77; 16], forged.unwrap()));
    assert!(kinds(&alice.events(0)).contains(&"failed"));
}

#[test]
fn a_replayed_or_forged_group_message_never_shows() {
    let (mut net, mut alice, mut bob, mut carol, id) = three();
    send(&mut alice, 0, id, "once");
    net.pass(&mut alice, 0);
    let got = net.deliver(&mut bob, 0);
    net.deliver(&mut carol, 0);
    // The relay replays it under a new id: refused, no second message.
    let replay = got.last().unwrap().clone();
    let mut rid = replay.0;
    rid[0] = 0xaa;
    bob.receive(0, &(rid, replay.1.clone()));
    assert_eq!(group_texts(&mut bob, 0), ["once"]);
    // Carol holds Alice's chain key but not its signing key: she writes as
    // Alice with it.
    let keys = carol.devices[0]
        .device
        .store_mut()
        .transaction(|tx| records::sender_keys(tx, &id.0, &alice.address().user, 1))
        .unwrap();
    let stolen = ReceivingChain::from_record(&keys.chains[0]).unwrap();
    let rec = sotto_proto::session::SenderKeyRecord::decode(stolen.to_record().as_slice()).unwrap();
    let mut forged_chain = SendingChain::from_parts(
        rec.chain_id.as_slice().try_into().unwrap(),
        rec.iteration,
        ChainKey::from_bytes(rec.chain_key.as_slice().try_into().unwrap()),
        &[5; 32],
    );
    let content = crate::engine::testkit::text(&alice, 9, "forged");
    // Sealed under the group's key, as any member can.
    let forged = seal_envelope(
        &id,
        &pb::GroupEnvelope {
            sender_user: alice.address().user.to_vec(),
            sender_device: 1,
            message: forged_chain
                .encrypt(&id.0, &content.encode_to_vec(), Padding::Padme)
                .unwrap(),
        },
        &[3; 24],
    )
    .unwrap();
    bob.receive(0, &([0xbb; 16], forged));
    assert_eq!(group_texts(&mut bob, 0), ["once"]);
    assert!(kinds(&bob.events(0)).contains(&"failed"));
}

#[test]
fn a_non_admin_cannot_change_the_group_and_a_forged_change_is_refused() {
    let (mut net, mut alice, mut bob, _carol, id) = three();
    let (me, cert) = (bob.address(), bob.devices[0].cert);
    let rename = pb::GroupAction {
        action: Some(pb::group_action::Action::Rename("mine".into())),
    };
    assert!(matches!(
        change(
            &mut bob.devices[0].device,
            &me,
            &cert,
            id,
            vec![rename.clone()],
            NOW
        ),
        Err(Error::NotGroupAdmin)
    ));
    // Bob signs the change anyway and sends it: every device refuses it.
    let s = state(&mut bob, 0, id);
    let forged = sign_change(&bob.devices[0].device, &cert, &s, vec![rename], NOW).unwrap();
    let update = pb::Content {
        sender_relay: bob.relay.to_string(),
        delivery_token: Vec::new(),
        body: Some(pb::content::Body::GroupUpdate(pb::GroupUpdate {
            change: Some(forged.signed),
            state: None,
            history: Vec::new(),
        })),
    };
    let env = bob.envelope(0, &mut alice, 0, &update);
    alice.receive(0, &env);
    assert_eq!(state(&mut alice, 0, id).name, "climbing");
    let _ = &mut net;
}

#[test]
fn two_admins_changing_at_once_converge_on_every_device() {
    let (mut net, mut alice, mut bob, mut carol, id) = three();
    let (me, cert) = (alice.address(), alice.devices[0].cert);
    let promote = pb::GroupAction {
        action: Some(pb::group_action::Action::Promote(
            bob.address().user.to_vec(),
        )),
    };
    change(
        &mut alice.devices[0].device,
        &me,
        &cert,
        id,
        vec![promote],
        NOW,
    )
    .unwrap();
    net.pass(&mut alice, 0);
    for (u, i) in [(&mut bob, 0), (&mut carol, 0), (&mut alice, 1)] {
        net.deliver(u, i);
    }
    // Both rename on the same parent.
    let rename = |n: &str| pb::GroupAction {
        action: Some(pb::group_action::Action::Rename(n.into())),
    };
    change(
        &mut alice.devices[0].device,
        &me,
        &cert,
        id,
        vec![rename("a")],
        NOW,
    )
    .unwrap();
    let (bme, bcert) = (bob.address(), bob.devices[0].cert);
    change(
        &mut bob.devices[0].device,
        &bme,
        &bcert,
        id,
        vec![rename("b")],
        NOW,
    )
    .unwrap();
    net.pass(&mut alice, 0);
    net.pass(&mut bob, 0);
    let a = net.deliver(&mut alice, 0);
    let b = net.deliver(&mut bob, 0);
    net.deliver(&mut alice, 1);
    net.deliver(&mut carol, 0);
    let _ = (a, b);
    let s = state(&mut carol, 0, id);
    assert_eq!(state(&mut alice, 0, id), s);
    assert_eq!(state(&mut alice, 1, id), s);
    assert_eq!(state(&mut bob, 0, id), s);
    assert_eq!(s.version, 3);
}

/// One thing that happens in the convergence property test.
#[derive(Debug, Clone)]
enum Op {
    /// Admin `who` (0 Alice, 1 Bob) renames the group.
    Rename(usize, u8),
    /// Admin `who` adds Dave, or removes him if he is a member.
    ToggleDave(usize),
    /// Admin `who` makes Carol an admin or not.
    ToggleCarolAdmin(usize),
    /// User `who` (0..4) runs an outbox pass.
    Pass(usize),
    /// User `who` receives up to `n` envelopes of its mailbox.
    Deliver(usize, usize),
    /// The relay delivers user `who`'s next envelope twice (a new id).
    Duplicate(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..2usize, any::<u8>()).prop_map(|(w, n)| Op::Rename(w, n)),
        1 => (0..2usize).prop_map(Op::ToggleDave),
        1 => (0..2usize).prop_map(Op::ToggleCarolAdmin),
        3 => (0..4usize).prop_map(Op::Pass),
        3 => (0..4usize, 1..4usize).prop_map(|(w, n)| Op::Deliver(w, n)),
        1 => (0..4usize).prop_map(Op::Duplicate),
    ]
}

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    /// Two admins change the group at random moments while the relay
    /// interleaves deliveries and duplicates envelopes: once everything is
    /// delivered (and lost changes made again), every member device holds
    /// the same state, and a later group message reads on each of them.
    #[test]
    fn concurrent_changes_converge_on_every_member_device(ops in proptest::collection::vec(op(), 0..30)) {
        let (mut net, alice, bob, carol, id) = three();
        let mut users = vec![alice, bob, carol, TestUser::new(1)];
        net.publish(&mut users[3]);
        // Dave knows both admins: their invitations are not requests.
        let (a, b) = (users[0].address(), users[1].address());
        for peer in [0, 1] {
            let list = users[peer].list(1);
            let addr = if peer == 0 { &a } else { &b };
            crate::engine::testkit::pin(&mut users[3].devices[0].device, addr, &list);
            users[3].devices[0].device.store_mut().transaction(|tx| {
                let mut c = records::contact(tx, &addr.user)?.unwrap_or_default();
                c.state = records::ACCEPTED;
                records::put_contact(tx, &addr.user, &c)
            }).unwrap();
        }
        // Bob becomes an admin first, everyone hears it.
        let bob_user = users[1].address().user;
        make_change(&mut users[0], id, pb::group_action::Action::Promote(bob_user.to_vec()));
        settle_all(&mut net, &mut users, id);
        for op in ops {
            match op {
                Op::Rename(w, n) => {
                    make_change(&mut users[w], id, pb::group_action::Action::Rename(format!("n{n}")));
                }
                Op::ToggleDave(w) => {
                    let dave = users[3].address();
                    let s = state(&mut users[w], 0, id);
                    let a = if s.is_member(&dave.user) {
                        pb::group_action::Action::Remove(dave.user.to_vec())
                    } else {
                        pb::group_action::Action::Add(pb::GroupMember { address: dave.to_string(), admin: false, admin_since: 0 })
                    };
                    make_change(&mut users[w], id, a);
                }
                Op::ToggleCarolAdmin(w) => {
                    let carol = users[2].address().user;
                    let a = if state(&mut users[w], 0, id).is_admin(&carol) {
                        pb::group_action::Action::Demote(carol.to_vec())
                    } else {
                        pb::group_action::Action::Promote(carol.to_vec())
                    };
                    make_change(&mut users[w], id, a);
                }
                Op::Pass(w) => net.pass(&mut users[w], 0),
                Op::Deliver(w, n) => deliver_some(&mut net, &mut users, w, 0, n, id),
                Op::Duplicate(w) => {
                    let key = (users[w].address().user, users[w].devices[0].mailbox);
                    if let Some(first) = net.mailboxes.get(&key).and_then(|m| m.first()).cloned() {
                        let mut dup = first.0;
                        dup[0] = 0xdd;
                        dup[1] = dup[1].wrapping_add(1);
                        net.mailboxes.get_mut(&key).unwrap().insert(1, (dup, first.1));
                    }
                }
            }
        }
        settle_all(&mut net, &mut users, id);
        let reference = state(&mut users[0], 0, id);
        for (i, u) in users.iter_mut().enumerate() {
            if reference.is_member(&u.address().user) {
                prop_assert_eq!(&state(u, 0, id), &reference, "user {}", i);
            }
        }
        // And the group still works: Carol's message reads everywhere.
        send(&mut users[2], 0, id, "still here");
        settle_all(&mut net, &mut users, id);
        for (i, u) in users.iter_mut().enumerate() {
            if i != 2 && reference.is_member(&u.address().user) {
                prop_assert!(group_texts(u, 0).contains(&"still here".to_string()), "user {}", i);
            }
        }
    }
}

/// `user` (device 0) makes a change if it may (an admin), as the app would.
fn make_change(user: &mut TestUser, id: GroupId, a: pb::group_action::Action) {
    let (me, cert) = (user.address(), user.devices[0].cert);
    let _ = change(
        &mut user.devices[0].device,
        &me,
        &cert,
        id,
        vec![pb::GroupAction { action: Some(a) }],
        NOW,
    );
}

/// User `w`'s device `d` receives up to `n` envelopes, and makes again
/// what a fork discarded (as the driver does).
fn deliver_some(net: &mut Net, users: &mut [TestUser], w: usize, d: usize, n: usize, id: GroupId) {
    let key = (users[w].address().user, users[w].devices[d].mailbox);
    for _ in 0..n {
        let Some(list) = net.mailboxes.get_mut(&key) else {
            return;
        };
        if list.is_empty() {
            return;
        }
        let e = list.remove(0);
        users[w].receive(d, &e);
    }
    // As the driver: changes that left the chain are made again once the
    // mailbox is drained.
    let (me, cert) = (users[w].address(), users[w].devices[d].cert);
    rebase(&mut users[w].devices[d].device, &me, &cert, id, NOW).unwrap();
}

/// Passes and deliveries on every device until nothing moves.
fn settle_all(net: &mut Net, users: &mut [TestUser], id: GroupId) {
    for _ in 0..50 {
        for u in users.iter_mut() {
            for d in 0..u.devices.len() {
                net.pass(u, d);
            }
        }
        if net.mailboxes.values().all(|m| m.is_empty()) {
            return;
        }
        for w in 0..users.len() {
            for d in 0..users[w].devices.len() {
                deliver_some(net, users, w, d, usize::MAX, id);
            }
        }
    }
    panic!("the group never settled");
}

// ---- Attacks found in review: each must fail ----

fn update_content(
    from: &TestUser,
    change: &VerifiedChange,
    st: Option<pb::GroupState>,
) -> pb::Content {
    pb::Content {
        sender_relay: from.relay.to_string(),
        delivery_token: Vec::new(),
        body: Some(pb::content::Body::GroupUpdate(pb::GroupUpdate {
            change: Some(change.signed.clone()),
            state: st,
            history: Vec::new(),
        })),
    }
}

/// Signs `actions` on `before`, varying the clock until the hash is below
/// `beat` (a grinding attacker; about two tries on average).
fn grind(
    user: &TestUser,
    before: &GroupState,
    actions: Vec<pb::GroupAction>,
    beat: &[u8; 32],
) -> VerifiedChange {
    let cert = user.devices[0].cert;
    (0..10_000u64)
        .map(|t| {
            sign_change(
                &user.devices[0].device,
                &cert,
                before,
                actions.clone(),
                NOW + t,
            )
            .unwrap()
        })
        .find(|c| c.hash < *beat)
        .unwrap()
}

fn action(a: pb::group_action::Action) -> pb::GroupAction {
    pb::GroupAction { action: Some(a) }
}

#[test]
fn a_member_cannot_create_a_known_group_again() {
    let (_net, mut alice, mut bob, mut carol, id) = three();
    let before = state(&mut alice, 0, id);
    let actions = vec![
        add_action(&bob.address(), true),
        add_action(&alice.address(), false),
        add_action(&carol.address(), false),
        action(pb::group_action::Action::Rename("owned by bob".into())),
    ];
    let fork = grind(&bob, &GroupState::empty(id), actions, &[0xff; 32]);
    let c = update_content(&bob, &fork, None);
    let e = bob.envelope(0, &mut alice, 0, &c);
    alice.receive(0, &e);
    let e = bob.envelope(0, &mut carol, 0, &c);
    carol.receive(0, &e);
    assert_eq!(state(&mut alice, 0, id), before);
    assert_eq!(state(&mut carol, 0, id), before);
}

#[test]
fn a_removed_admin_cannot_fork_back_past_its_removal() {
    let (mut net, mut alice, mut bob, mut carol, id) = three();
    let (me, cert) = (alice.address(), alice.devices[0].cert);
    let bu = bob.address().user.to_vec();
    change(
        &mut alice.devices[0].device,
        &me,
        &cert,
        id,
        vec![action(pb::group_action::Action::Promote(bu.clone()))],
        NOW,
    )
    .unwrap();
    net.pass(&mut alice, 0);
    for (u, i) in [(&mut bob, 0), (&mut carol, 0), (&mut alice, 1)] {
        net.deliver(u, i);
    }
    let s2 = state(&mut bob, 0, id);
    change(
        &mut alice.devices[0].device,
        &me,
        &cert,
        id,
        vec![action(pb::group_action::Action::Remove(bu))],
        NOW,
    )
    .unwrap();
    net.pass(&mut alice, 0);
    for (u, i) in [(&mut bob, 0), (&mut carol, 0), (&mut alice, 1)] {
        net.deliver(u, i);
    }
    let removed = state(&mut carol, 0, id);
    assert!(!removed.is_member(&bob.address().user));
    // Bob signs on the state before his removal, with a lower hash than it:
    // removing Alice (senior to him) and, failing that, a mere rename.
    for a in [
        action(pb::group_action::Action::Remove(
            alice.address().user.to_vec(),
        )),
        action(pb::group_action::Action::Rename("bob was here".into())),
    ] {
        let cert = bob.devices[0].cert;
        let fork = sign_change(&bob.devices[0].device, &cert, &s2, vec![a.clone()], NOW).unwrap();
        let fork = if fork.hash < removed.head {
            fork
        } else {
            grind(&bob, &s2, vec![a], &removed.head)
        };
        let c = update_content(&bob, &fork, None);
        let e = bob.envelope(0, &mut carol, 0, &c);
        carol.receive(0, &e);
        assert_eq!(state(&mut carol, 0, id), removed);
    }
}

#[test]
fn a_stranger_readding_a_member_that_left_is_only_an_invitation() {
    let (mut net, mut alice, _bob, mut carol, id) = three();
    let (cme, ccert) = (carol.address(), carol.devices[0].cert);
    change(
        &mut carol.devices[0].device,
        &cme,
        &ccert,
        id,
        vec![action(pb::group_action::Action::Remove(cme.user.to_vec()))],
        NOW,
    )
    .unwrap();
    net.pass(&mut carol, 0);
    net.deliver(&mut alice, 0);
    let mut mallory = TestUser::new(1);
    let mut made_up = GroupState::empty(id);
    made_up.version = 7;
    made_up.head = [9; 32];
    made_up.name = "climbing".into();
    made_up.members.insert(
        mallory.address().user,
        state::Member {
            address: mallory.address(),
            admin: true,
            admin_since: 0,
        },
    );
    let ch = sign_change(
        &mallory.devices[0].device,
        &mallory.devices[0].cert,
        &made_up,
        vec![add_action(&carol.address(), false)],
        NOW,
    )
    .unwrap();
    let c = update_content(&mallory, &ch, Some(made_up.to_pb()));
    let e = mallory.envelope(0, &mut carol, 0, &c);
    carol.receive(0, &e);
    let rec = carol.devices[0]
        .device
        .store_mut()
        .transaction(|tx| records::group(tx, &id.0))
        .unwrap()
        .unwrap();
    assert_ne!(
        rec.status, MEMBER,
        "a stranger's re-add is a request, not membership"
    );
}

#[test]
fn a_member_cannot_fill_the_waiting_changes_and_freeze_the_group() {
    let (mut net, mut alice, mut bob, mut carol, id) = three();
    let s = state(&mut bob, 0, id);
    for i in 0..MAX_PENDING_CHANGES {
        let mut fake = s.clone();
        fake.version = 1_000 + i as u64;
        fake.head = [i as u8 + 1; 32];
        let ch = sign_change(
            &bob.devices[0].device,
            &bob.devices[0].cert,
            &fake,
            vec![action(pb::group_action::Action::Rename("x".into()))],
            NOW,
        )
        .unwrap();
        let c = update_content(&bob, &ch, None);
        let e = bob.envelope(0, &mut carol, 0, &c);
        carol.receive(0, &e);
    }
    // Alice makes two changes; Carol gets the second before the first.
    let (me, cert) = (alice.address(), alice.devices[0].cert);
    let ren = |n: &str| vec![action(pb::group_action::Action::Rename(n.into()))];
    change(
        &mut alice.devices[0].device,
        &me,
        &cert,
        id,
        ren("one"),
        NOW,
    )
    .unwrap();
    net.pass(&mut alice, 0);
    let first = net
        .mailboxes
        .remove(&(carol.address().user, carol.devices[0].mailbox))
        .unwrap();
    change(
        &mut alice.devices[0].device,
        &me,
        &cert,
        id,
        ren("two"),
        NOW,
    )
    .unwrap();
    net.pass(&mut alice, 0);
    net.deliver(&mut carol, 0);
    for e in &first {
        carol.receive(0, e);
    }
    let cs = state(&mut carol, 0, id);
    assert_eq!((cs.version, cs.name.as_str()), (3, "two"));
}

#[test]
fn a_strangers_group_messages_stop_at_its_request_limit() {
    let (_net, _alice, _bob, mut carol, _id) = three();
    let mut mallory = TestUser::new(1);
    let (mme, mcert) = (mallory.address(), mallory.devices[0].cert);
    let gid = create(
        &mut mallory.devices[0].device,
        &mme,
        &mcert,
        "spam",
        &[carol.address()],
        NOW,
        &mut OsRng,
    )
    .unwrap();
    // The creation, as Mallory's outbox holds it.
    let item = mallory
        .outbox(0)
        .into_iter()
        .find(|i| i.recipient == carol.address().to_string())
        .unwrap();
    let c = pb::Content::decode(item.content.as_slice()).unwrap();
    let e = mallory.envelope(0, &mut carol, 0, &c);
    carol.receive(0, &e);
    let mut chain = SendingChain::generate(&mut OsRng);
    let k = pb::Content {
        sender_relay: mallory.relay.to_string(),
        delivery_token: Vec::new(),
        body: Some(pb::content::Body::SenderKey(distribution_to_pb(
            &gid,
            &chain.distribution(),
        ))),
    };
    let e = mallory.envelope(0, &mut carol, 0, &k);
    carol.receive(0, &e);
    for i in 0..200u32 {
        let content = crate::engine::testkit::text(&mallory, 0, &format!("spam {i}"));
        let mut content = content;
        if let Some(pb::content::Body::Message(m)) = content.body.as_mut() {
            m.id = i.to_be_bytes().repeat(4);
        }
        let mut nonce = [0u8; 24];
        nonce[..4].copy_from_slice(&i.to_be_bytes());
        let env = seal_envelope(
            &gid,
            &pb::GroupEnvelope {
                sender_user: mme.user.to_vec(),
                sender_device: 1,
                message: chain
                    .encrypt(&gid.0, &content.encode_to_vec(), Padding::Padme)
                    .unwrap(),
            },
            &nonce,
        )
        .unwrap();
        let id = carol.next_id();
        carol.receive(0, &(id, env));
    }
    let n = carol
        .events(0)
        .into_iter()
        .filter(|e| matches!(e.kind, Some(pb::client_event::Kind::MessageRequest(_))))
        .count();
    assert!(
        n <= crate::engine::inbound::MAX_HELD_PER_REQUEST as usize,
        "{n} requests held"
    );
}

#[test]
fn a_version_at_the_end_of_its_range_is_refused_not_a_panic() {
    let (_net, _alice, _bob, mut carol, _id) = three();
    let mut mallory = TestUser::new(1);
    let mut made_up = GroupState::empty(GroupId([7; 32]));
    made_up.version = u64::MAX;
    made_up.members.insert(
        mallory.address().user,
        state::Member {
            address: mallory.address(),
            admin: true,
            admin_since: 0,
        },
    );
    let body = pb::GroupChange {
        group_id: vec![7; 32],
        version: 0,
        parent: vec![0; 32],
        author_user: mallory.address().user.to_vec(),
        author_device: mallory.devices[0].cert.device_id,
        actions: vec![add_action(&carol.address(), false)],
        at_ms: NOW,
    }
    .encode_to_vec();
    let signed = pb::SignedGroupChange {
        signature: mallory.devices[0]
            .device
            .sign_statement(sotto_core::device::Statement::GroupChange, &body)
            .to_vec(),
        body,
        author_certificate: Some(mallory.devices[0].cert.to_pb()),
    };
    let c = pb::Content {
        sender_relay: mallory.relay.to_string(),
        delivery_token: Vec::new(),
        body: Some(pb::content::Body::GroupUpdate(pb::GroupUpdate {
            change: Some(signed),
            state: Some(made_up.to_pb()),
            history: Vec::new(),
        })),
    };
    let e = mallory.envelope(0, &mut carol, 0, &c);
    carol.receive(0, &e);
    assert!(carol.devices[0]
        .device
        .store_mut()
        .transaction(|tx| records::group(tx, &[7; 32]))
        .unwrap()
        .is_none());
}

#[test]
fn debug_output_shows_no_group_name() {
    let (_net, mut alice, _bob, _carol, id) = three();
    let s = state(&mut alice, 0, id);
    let shown = format!(
        "{s:?} {:?}",
        crate::engine::events::GroupChange::Renamed("climbing".into())
    );
    assert!(!shown.contains("climbing"), "{shown}");
}

#[test]
fn a_device_linked_after_joining_gets_the_group_and_its_messages() {
    let (mut net, mut alice, mut bob, mut carol, id) = three();
    // Bob links a second device: a new list version on his relay.
    let mut device = sotto_core::Device::create(MemoryStore::new(), 2, 0, &mut OsRng).unwrap();
    let cert = bob.account.certify(2, device.identity());
    let me = bob.address();
    device
        .store_mut()
        .transaction(|tx| {
            records::put(
                tx,
                records::CONFIG,
                &pb::ClientConfig {
                    version: 1,
                    account_key: bob.account.public().to_vec(),
                    certificate: Some(cert.to_pb()),
                    ..Default::default()
                },
            )
        })
        .unwrap();
    bob.devices.push(crate::engine::testkit::TestDevice {
        device,
        cert,
        mailbox: crate::engine::testkit::mailbox_of(&me.user, 2),
    });
    let signed = bob.signed_list(&bob.list(2));
    net.lists.insert(me.user, signed);
    net.publish_bundles(&mut bob);
    let list = bob.list(2);
    for d in 0..2 {
        crate::engine::testkit::pin(&mut bob.devices[d].device, &me, &list);
    }
    // Device 1 pinned the list with device 2 in it: it queued the group.
    net.pass(&mut bob, 0);
    net.deliver(&mut bob, 1);
    assert_eq!(state(&mut bob, 1, id), state(&mut bob, 0, id));
    // Members see the new device when they next check Bob's list.
    send(&mut alice, 0, id, "welcome, second device");
    net.pass_at(&mut alice, 0, NOW + GROUP_LIST_MAX_AGE_MS + 1);
    net.deliver(&mut bob, 1);
    assert_eq!(group_texts(&mut bob, 1), ["welcome, second device"]);
    let _ = &mut carol;
}

/// The new chain is not a step after the membership commit: the old one is
/// gone in the very commit that removes a member (sent or received), so no
/// crash between the two can leave a removed member's key in use.
#[test]
fn a_removal_drops_the_sending_chain_in_its_own_commit() {
    let (mut net, mut alice, mut bob, mut carol, id) = three();
    for (u, text) in [(&mut alice, "a"), (&mut bob, "b")] {
        send(u, 0, id, text);
    }
    net.pass(&mut alice, 0);
    net.pass(&mut bob, 0);
    let chain = |u: &mut TestUser| {
        u.devices[0]
            .device
            .store_mut()
            .transaction(|tx| records::own_sender_key(tx, &id.0))
            .unwrap()
    };
    assert!(chain(&mut alice).is_some() && chain(&mut bob).is_some());
    let (me, cert) = (alice.address(), alice.devices[0].cert);
    let remove = action(pb::group_action::Action::Remove(
        carol.address().user.to_vec(),
    ));
    change(
        &mut alice.devices[0].device,
        &me,
        &cert,
        id,
        vec![remove],
        NOW,
    )
    .unwrap();
    assert!(
        chain(&mut alice).is_none(),
        "dropped with the change's commit"
    );
    net.pass(&mut alice, 0);
    net.deliver(&mut bob, 0);
    assert!(
        chain(&mut bob).is_none(),
        "dropped with the received change's commit"
    );
    let _ = &mut carol;
}

/// A member lists a device of its own with another member's device id,
/// identity and mailbox (all public): the sender must not name that mailbox
/// twice (the relay refuses such a request whole, which would stall the
/// group send and everything behind it on that relay).
#[test]
fn a_member_listing_anothers_mailbox_does_not_stall_the_group() {
    let (mut net, mut alice, mut bob, mut carol, id) = three();
    // Dave (two devices) joins.
    let mut dave = TestUser::new(2);
    net.publish(&mut dave);
    alice.accept(&dave);
    dave.accept(&alice);
    let (me, cert) = (alice.address(), alice.devices[0].cert);
    let add = action(pb::group_action::Action::Add(pb::GroupMember {
        address: dave.address().to_string(),
        admin: false,
        admin_since: 0,
    }));
    change(&mut alice.devices[0].device, &me, &cert, id, vec![add], NOW).unwrap();
    net.pass(&mut alice, 0);
    for d in 0..2 {
        net.deliver(&mut dave, d);
    }
    net.deliver(&mut bob, 0);
    net.deliver(&mut carol, 0);
    // Bob's list gains a "device 2": Dave's device 2, identity and mailbox.
    let mut list = bob.list(1);
    list.devices.push(dave.list(1).devices[1].clone());
    list.version = 2;
    list.next_device_id = 3;
    net.lists.insert(bob.address().user, bob.signed_list(&list));
    // Alice's cached list of Bob is stale: she fetches the new one.
    send(&mut alice, 0, id, "still flowing");
    net.pass_at(&mut alice, 0, NOW + GROUP_LIST_MAX_AGE_MS + 1);
    for d in 0..2 {
        net.deliver(&mut dave, d);
    }
    net.deliver(&mut carol, 0);
    assert_eq!(group_texts(&mut carol, 0), ["still flowing"]);
    assert_eq!(group_texts(&mut dave, 1), ["still flowing"]);
    // The next message goes the same way (nothing was left stuck).
    send(&mut alice, 0, id, "and again");
    net.pass_at(&mut alice, 0, NOW + GROUP_LIST_MAX_AGE_MS + 2);
    net.deliver(&mut dave, 1);
    assert_eq!(group_texts(&mut dave, 1), ["still flowing", "and again"]);
}

/// A relay that predates shared submissions refuses them as malformed: the
/// envelope goes per device there, and nothing is held for ever.
#[test]
fn a_relay_without_shared_sends_gets_the_envelope_per_device() {
    let (mut net, mut alice, mut bob, mut carol, id) = three();
    net.no_shared = true;
    send(&mut alice, 0, id, "per device");
    net.pass(&mut alice, 0);
    net.deliver(&mut bob, 0);
    net.deliver(&mut carol, 0);
    net.deliver(&mut alice, 1);
    assert_eq!(group_texts(&mut bob, 0), ["per device"]);
    assert_eq!(group_texts(&mut carol, 0), ["per device"]);
    assert_eq!(group_texts(&mut alice, 1), ["per device"]);
}

/// The relay drops the pairwise envelope that carried Alice's sender key to
/// Bob: Bob cannot read her group message, asks her device for the key
/// (a budgeted repair), and reads her next one.
#[test]
fn a_member_that_lost_a_sender_key_asks_for_it_and_reads_the_next_message() {
    let (mut net, mut alice, mut bob, mut carol, id) = three();
    send(&mut alice, 0, id, "lost");
    net.pass(&mut alice, 0);
    let key = (bob.address().user, bob.devices[0].mailbox);
    let kept: Envelopes = net
        .mailboxes
        .remove(&key)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, p)| {
            matches!(
                pb::Envelope::decode(p.as_slice()).unwrap().body,
                Some(pb::envelope::Body::SealedGroup(_))
            )
        })
        .collect();
    for e in &kept {
        bob.receive(0, e);
    }
    assert!(group_texts(&mut bob, 0).is_empty());
    assert!(kinds(&bob.events(0)).contains(&"failed"));
    // Bob's request goes out; Alice answers with her chain's position.
    net.pass(&mut bob, 0);
    net.deliver(&mut alice, 0);
    net.pass(&mut alice, 0);
    net.deliver(&mut bob, 0);
    send(&mut alice, 0, id, "found");
    net.pass(&mut alice, 0);
    net.deliver(&mut bob, 0);
    assert_eq!(group_texts(&mut bob, 0), ["found"]);
    let _ = &mut carol;
}
