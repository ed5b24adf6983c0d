//! Live signals on the wire (PROTOCOL.md III.14): who they may go to, how
//! one is sealed for a device, and the checks one must pass when it
//! arrives.
//!
//! A live signal travels outside every session: a `Live` (with its send
//! time), MACed under the sender MAC key of the two devices (their static
//! identity agreement, PROTOCOL.md I.12, with its own domain) and sealed to
//! the recipient device (I.14). So a lost signal costs no ratchet key (an
//! offline contact never returns to a gap it cannot cross), a received one
//! changes nothing on disk, and a device hiding its presence leaves no
//! trace in its sessions of having read an ask. What it gives up: no
//! forward secrecy for presence (the seal is to the long-term identity),
//! which Part IV §IV.3 states.

use std::collections::HashMap;

use prost::Message as _;
use rand_core::CryptoRngCore;
use sotto_core::device::Device;
use sotto_core::padding::Padding;
use sotto_core::store::Store;
use sotto_proto::client as pb;
use sotto_relay::MailboxId;

use super::address::{RelayAddress, UserAddress};
use super::envelope::{live_mac, verify_live_mac, MacKeys};
use super::records::{self, ACCEPTED};
use crate::error::{Error, Result};

/// A signal older than this (by its send time) is refused: the relay may
/// hold signals back, and a stale "online" or "typing" would lie.
pub(crate) const MAX_AGE_MS: u64 = 30_000;
/// A signal this far ahead of the receiver's clock is refused (clocks of
/// two devices differ; more than this is a lie or a broken clock).
pub(crate) const MAX_AHEAD_MS: u64 = 60_000;
/// MACs of signals seen, kept until the signal would be too old anyway;
/// past this the entries expiring first are forgotten.
pub(crate) const REPLAY_CACHE: usize = 8192;

/// One device a live signal can go to.
#[derive(Debug)]
pub(crate) struct LiveTarget {
    pub(crate) relay: RelayAddress,
    pub(crate) user: [u8; 32],
    pub(crate) device_id: u32,
    pub(crate) mailbox: MailboxId,
    pub(crate) identity: sotto_core::identity::IdentityKey,
    pub(crate) token: zeroize::Zeroizing<[u8; 32]>,
}

/// The devices of `user` (one, with `only`) a signal can reach: an
/// accepted contact's pinned devices that gave this device a delivery token
/// (the relay takes no live signal without one). Never this user, and
/// nobody while this user hides its presence from that contact: hiding
/// also stops asking (an ask would say "online, with your conversation
/// open").
pub(crate) fn targets<S: Store>(
    device: &mut Device<S>,
    me: &UserAddress,
    user: &[u8; 32],
    only: Option<u32>,
) -> Result<Vec<LiveTarget>> {
    if *user == me.user {
        return Ok(Vec::new());
    }
    device.store_mut().transaction(|tx| {
        let Some(c) = records::contact(tx, user)? else {
            return Ok(Vec::new());
        };
        if c.state != ACCEPTED {
            return Ok(Vec::new());
        }
        if c.presence_hidden || records::presence_hidden(tx)? {
            return Ok(Vec::new());
        }
        let Ok(address) = c.address.parse::<UserAddress>() else {
            return Ok(Vec::new());
        };
        let Some(list) = records::pinned_list(&c)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for d in &list.devices {
            if only.is_some_and(|o| o != d.device_id) {
                continue;
            }
            let Some(token) = records::delivery_token(tx, user, d.device_id)? else {
                continue;
            };
            out.push(LiveTarget {
                relay: address.relay.clone(),
                user: *user,
                device_id: d.device_id,
                mailbox: d.mailbox,
                identity: d.identity,
                token,
            });
        }
        Ok(out)
    })
}

/// Seals `signal`, made at `now_ms` (Unix ms), for `t`.
pub(crate) fn seal<S: Store>(
    device: &Device<S>,
    mac_keys: &mut MacKeys,
    me: &UserAddress,
    t: &LiveTarget,
    signal: pb::live::Signal,
    now_ms: u64,
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<u8>> {
    let signal = pb::Live {
        signal: Some(signal),
        sent_at_ms: now_ms,
    }
    .encode_to_vec();
    let my_id = device.device_id();
    let key = mac_keys.get(device, &t.identity)?;
    let mac = live_mac(&key, (&me.user, my_id), (&t.user, t.device_id), &signal);
    let inner = pb::LiveSealed {
        sender_user: me.user.to_vec(),
        sender_device: my_id,
        signal,
        mac: mac.to_vec(),
    }
    .encode_to_vec();
    let sealed = sotto_core::sealed::seal(t.identity.dh_public(), &inner, Padding::Buckets, rng)?;
    Ok(pb::Envelope {
        version: 1,
        body: Some(pb::envelope::Body::Live(sealed)),
    }
    .encode_to_vec())
}

/// The MACs of signals accepted recently, so a relay cannot replay one.
/// Full (only many contacts together can fill it: each passes at most its
/// allowance), it refuses new signals rather than forget fresh ones.
#[derive(Debug, Default)]
pub(crate) struct ReplayCache(HashMap<[u8; 16], u64>);

impl ReplayCache {
    fn seen(&self, mac: &[u8; 16]) -> bool {
        self.0.contains_key(mac)
    }

    /// Records `mac` (kept until `expires_ms`); false if there is no room.
    fn record(&mut self, mac: [u8; 16], expires_ms: u64, now_ms: u64) -> bool {
        if self.0.len() >= REPLAY_CACHE {
            self.0.retain(|_, until| *until > now_ms);
        }
        if self.0.len() >= REPLAY_CACHE {
            return false;
        }
        self.0.insert(mac, expires_ms);
        true
    }
}

/// A live signal that passed every check.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) user: [u8; 32],
    pub(crate) device: u32,
    pub(crate) signal: pb::live::Signal,
    /// When the sender made it (its clock).
    pub(crate) sent_at_ms: u64,
    /// The user hides its presence from this contact.
    pub(crate) hidden: bool,
}

/// Opens an ephemeral payload, checking in this order: an `Envelope {
/// version 1, live }` whose seal opens to a `LiveSealed`; a sender that is
/// not this user and is an accepted contact (never a stranger or a blocked
/// user); a device its pinned list names; the MAC under the sender MAC key
/// with that device's listed identity, made for this device; a `Live` with
/// a signal, made at most [`MAX_AGE_MS`] ago and [`MAX_AHEAD_MS`] ahead of
/// `now_ms` (Unix ms); not accepted before; then `allow(sender)` (the
/// sender's allowance); and room to remember it. Nothing is written.
pub(crate) fn open<S: Store>(
    device: &mut Device<S>,
    mac_keys: &mut MacKeys,
    replay: &mut ReplayCache,
    me: &UserAddress,
    payload: &[u8],
    now_ms: u64,
    allow: impl FnOnce(&[u8; 32]) -> bool,
) -> Result<Opened> {
    let refused = |why| Err(Error::LiveRefused(why));
    let sealed = match pb::Envelope::decode(payload) {
        Ok(pb::Envelope {
            version: 1,
            body: Some(pb::envelope::Body::Live(bytes)),
        }) => bytes,
        _ => return refused("not a live envelope"),
    };
    let Ok(inner) = device.unseal(&sealed) else {
        return refused("the seal does not open");
    };
    let Ok(s) = pb::LiveSealed::decode(inner.as_slice()) else {
        return refused("malformed sealed signal");
    };
    let Ok(user) = <[u8; 32]>::try_from(s.sender_user.as_slice()) else {
        return refused("malformed sender");
    };
    if user == me.user {
        return refused("a live signal from this user's own device");
    }
    let contact = device
        .store_mut()
        .transaction(|tx| records::contact(tx, &user))?;
    let Some(contact) = contact.filter(|c| c.state == ACCEPTED) else {
        return refused("not an accepted contact");
    };
    let Some(listed) =
        records::pinned_list(&contact)?.and_then(|l| l.get(s.sender_device).map(|e| e.identity))
    else {
        return refused("a device the pinned list does not name");
    };
    let key = mac_keys.get_from(device, &listed)?;
    let to = (&me.user, device.device_id());
    if !verify_live_mac(&key, (&user, s.sender_device), to, &s.signal, &s.mac) {
        return refused("the MAC does not verify");
    }
    let Ok(pb::Live {
        signal: Some(signal),
        sent_at_ms,
    }) = pb::Live::decode(s.signal.as_slice())
    else {
        return refused("not a live signal");
    };
    if sent_at_ms.saturating_add(MAX_AGE_MS) < now_ms {
        return refused("too old");
    }
    if sent_at_ms > now_ms.saturating_add(MAX_AHEAD_MS) {
        return refused("sent in the future");
    }
    let mut tag = [0u8; 16];
    tag.copy_from_slice(&s.mac);
    if replay.seen(&tag) {
        return refused("a replay");
    }
    if !allow(&user) {
        return refused("past the contact's allowance");
    }
    if !replay.record(tag, sent_at_ms.saturating_add(MAX_AGE_MS), now_ms) {
        return refused("too many recent signals to remember");
    }
    Ok(Opened {
        user,
        device: s.sender_device,
        signal,
        sent_at_ms,
        hidden: contact.presence_hidden,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::engine::testkit::{TestUser, NOW};
    use rand_core::OsRng;

    fn target_of(u: &TestUser) -> LiveTarget {
        LiveTarget {
            relay: u.relay.clone(),
            user: u.address().user,
            device_id: 1,
            mailbox: MailboxId(u.devices[0].mailbox),
            identity: *u.devices[0].device.identity(),
            token: zeroize::Zeroizing::new([1; 32]),
        }
    }

    fn online() -> pb::live::Signal {
        pb::live::Signal::Presence(pb::PresenceState {
            online: true,
            last_seen_ms: 0,
        })
    }

    fn send(from: &TestUser, to: &TestUser, at: u64) -> Vec<u8> {
        let t = target_of(to);
        let mut keys = MacKeys::default();
        seal(
            &from.devices[0].device,
            &mut keys,
            &from.address(),
            &t,
            online(),
            at,
            &mut OsRng,
        )
        .unwrap()
    }

    fn open_at(
        to: &mut TestUser,
        replay: &mut ReplayCache,
        payload: &[u8],
        now: u64,
    ) -> Result<Opened> {
        let me = to.address();
        let mut keys = MacKeys::default();
        open(
            &mut to.devices[0].device,
            &mut keys,
            replay,
            &me,
            payload,
            now,
            |_| true,
        )
    }

    fn refusal(r: Result<Opened>) -> &'static str {
        match r {
            Err(Error::LiveRefused(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_signal_opens_once_and_only_fresh_from_an_accepted_contacts_listed_device() {
        let (mut alice, mut bob, carol) = (TestUser::new(1), TestUser::new(1), TestUser::new(1));
        bob.accept(&alice);
        alice.accept(&bob);
        let mut replay = ReplayCache::default();

        let env = send(&alice, &bob, NOW);
        let o = open_at(&mut bob, &mut replay, &env, NOW + 1_000).unwrap();
        assert_eq!((o.user, o.device), (alice.address().user, 1));
        assert_eq!(o.signal, online());
        assert_eq!(
            refusal(open_at(&mut bob, &mut replay, &env, NOW + 2_000)),
            "a replay"
        );

        let old = send(&alice, &bob, NOW);
        assert_eq!(
            refusal(open_at(&mut bob, &mut replay, &old, NOW + MAX_AGE_MS + 1)),
            "too old"
        );
        let ahead = send(&alice, &bob, NOW + MAX_AHEAD_MS + 1);
        assert_eq!(
            refusal(open_at(&mut bob, &mut replay, &ahead, NOW)),
            "sent in the future"
        );
        // Carol is no contact of Bob's.
        let stranger = send(&carol, &bob, NOW);
        assert_eq!(
            refusal(open_at(&mut bob, &mut replay, &stranger, NOW)),
            "not an accepted contact"
        );
        // Carol claims to be Alice: her MAC key is not Alice's.
        let signal = pb::Live {
            signal: Some(online()),
            sent_at_ms: NOW,
        }
        .encode_to_vec();
        let bob_identity = *bob.devices[0].device.identity();
        let carol_dev = &carol.devices[0].device;
        let key = carol_dev
            .sender_mac_key(carol_dev.identity(), &bob_identity)
            .unwrap();
        let forged = pb::LiveSealed {
            sender_user: alice.address().user.to_vec(),
            sender_device: 1,
            mac: live_mac(
                &key,
                (&alice.address().user, 1),
                (&bob.address().user, 1),
                &signal,
            )
            .to_vec(),
            signal,
        }
        .encode_to_vec();
        let forged = pb::Envelope {
            version: 1,
            body: Some(pb::envelope::Body::Live(
                sotto_core::sealed::seal(
                    bob_identity.dh_public(),
                    &forged,
                    Padding::Buckets,
                    &mut OsRng,
                )
                .unwrap(),
            )),
        }
        .encode_to_vec();
        assert_eq!(
            refusal(open_at(&mut bob, &mut replay, &forged, NOW)),
            "the MAC does not verify"
        );
        // Any changed byte is refused; nothing panics. (Sent a millisecond
        // later: the same signal at the same time is the same signal.)
        let fresh = send(&alice, &bob, NOW + 1);
        for i in 0..fresh.len() {
            let mut bad = fresh.clone();
            bad[i] ^= 0x40;
            assert!(
                open_at(&mut bob, &mut replay, &bad, NOW).is_err(),
                "byte {i}"
            );
        }
        // A durable envelope's seal is not a live one.
        let durable = pb::Envelope {
            version: 1,
            body: Some(pb::envelope::Body::Sealed(vec![0x14; 100])),
        }
        .encode_to_vec();
        assert_eq!(
            refusal(open_at(&mut bob, &mut replay, &durable, NOW)),
            "not a live envelope"
        );
        // And the genuine one still opens after all that.
        let r = open_at(&mut bob, &mut replay, &fresh, NOW);
        assert!(r.is_ok(), "{r:?}");
    }

    /// PROTOCOL.md III.14's vector (reproduced with Python's `hmac`).
    #[test]
    fn the_live_mac_matches_the_spec_vector() {
        let signal = pb::Live {
            signal: Some(online_now()),
            sent_at_ms: 1_800_000_000_000,
        }
        .encode_to_vec();
        assert_eq!(hex::encode(&signal), "120208012080a0f1c2b134");
        let key = sotto_core::keys::Secret32::from_bytes(core::array::from_fn(|i| i as u8));
        let from: [u8; 32] = core::array::from_fn(|i| 32 + i as u8);
        let to: [u8; 32] = core::array::from_fn(|i| 64 + i as u8);
        assert_eq!(
            hex::encode(live_mac(&key, (&from, 1), (&to, 2), &signal)),
            "50b515a6e2dc71b5a710016685682cbf"
        );
    }

    fn online_now() -> pb::live::Signal {
        pb::live::Signal::Presence(pb::PresenceState {
            online: true,
            last_seen_ms: 0,
        })
    }

    #[test]
    fn a_full_replay_cache_refuses_new_signals_and_forgets_nothing_fresh() {
        let mut c = ReplayCache::default();
        for i in 0..REPLAY_CACHE as u64 {
            let mut mac = [0u8; 16];
            mac[..8].copy_from_slice(&i.to_be_bytes());
            assert!(c.record(mac, 1_000, 0));
        }
        assert!(!c.record([0xff; 16], 1_000, 0), "full: refused");
        assert!(c.seen(&[0; 16]), "a fresh entry was forgotten");
        // Once the entries expire there is room again.
        assert!(c.record([0xff; 16], 2_000, 1_000));
        assert_eq!(c.0.len(), 1);
    }

    /// A signal made for one device does not open on another device of
    /// the same identity's owner, nor for another recipient: the MAC names
    /// both ends.
    #[test]
    fn a_signal_for_one_device_does_not_pass_on_another() {
        let (mut alice, mut bob) = (TestUser::new(1), TestUser::new(1));
        bob.accept(&alice);
        alice.accept(&bob);
        let mut t = target_of(&bob);
        t.device_id = 2; // made for "device 2" of Bob
        let mut keys = MacKeys::default();
        let env = seal(
            &alice.devices[0].device,
            &mut keys,
            &alice.address(),
            &t,
            online(),
            NOW,
            &mut OsRng,
        )
        .unwrap();
        let mut replay = ReplayCache::default();
        assert_eq!(
            refusal(open_at(&mut bob, &mut replay, &env, NOW)),
            "the MAC does not verify"
        );
    }
}
