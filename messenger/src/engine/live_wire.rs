//! Live signals on the wire (PROTOCOL.md III.14): who they may go to, how
//! one is sealed for a device, and the checks one must pass when it
//! arrives. A live signal is an ordinary pairwise message (Part I, over the
//! session) in an ordinary sealed envelope, carried by the relay's
//! ephemeral path instead of the mailbox: so it hides the sender from the
//! relay exactly as a durable message does, and costs the receiver one
//! ratchet step. Only established sessions carry one (a lost PreKey
//! message would leave the peer without the session), and only accepted
//! contacts' listed devices may send one.

use prost::Message as _;
use rand_core::CryptoRngCore;
use sotto_core::device::{Device, DeviceAddress};
use sotto_core::padding::Padding;
use sotto_core::session::MessageKind;
use sotto_core::store::Store;
use sotto_proto::client as pb;
use sotto_relay::MailboxId;

use super::address::{RelayAddress, UserAddress};
use super::envelope::{sender_mac, MacKeys};
use super::records::{self, ACCEPTED};
use crate::error::{Error, Result};

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

/// The devices of `user` (one, with `device`) a live signal can reach: an
/// accepted contact's pinned devices that gave this device a delivery
/// token (the relay takes no live signal without one). Never this user.
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

/// Seals `signal` for `t` over the established session with it; `None`
/// when there is none (nothing sent, nothing changed).
pub(crate) fn seal<S: Store>(
    device: &mut Device<S>,
    mac_keys: &mut MacKeys,
    me: &UserAddress,
    t: &LiveTarget,
    signal: pb::live::Signal,
    rng: &mut impl CryptoRngCore,
) -> Result<Option<Vec<u8>>> {
    let addr = DeviceAddress::new(t.user.to_vec(), t.device_id);
    // The session must belong to the identity the pinned list certifies.
    if !device
        .session_identity(&addr)?
        .is_some_and(|id| id.ct_eq(&t.identity))
    {
        return Ok(None);
    }
    let content = pb::Content {
        sender_relay: String::new(),
        body: Some(pb::content::Body::Live(pb::Live {
            signal: Some(signal),
        })),
        delivery_token: Vec::new(),
    }
    .encode_to_vec();
    let Some(message) = device.encrypt_established(&addr, &content, rng)? else {
        return Ok(None);
    };
    let my_id = device.device_id();
    let mac_key = mac_keys.get(device, &t.identity)?;
    let mac = sender_mac(&mac_key, &me.user, my_id, &message.bytes);
    let inner = pb::Sealed {
        sender_user: me.user.to_vec(),
        sender_device: my_id,
        sender_certificate: None,
        message: message.bytes,
        sender_mac: mac.to_vec(),
    }
    .encode_to_vec();
    let sealed = sotto_core::sealed::seal(t.identity.dh_public(), &inner, Padding::Buckets, rng)?;
    Ok(Some(
        pb::Envelope {
            version: 1,
            body: Some(pb::envelope::Body::Sealed(sealed)),
        }
        .encode_to_vec(),
    ))
}

/// A live signal that passed every check.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) user: [u8; 32],
    pub(crate) device: u32,
    pub(crate) signal: pb::live::Signal,
    /// The user hides its presence from this contact.
    pub(crate) hidden: bool,
}

/// Opens an ephemeral payload. Everything is checked before the session
/// moves: a sealed pairwise envelope, from an accepted contact (never this
/// user, never a blocked one or a stranger), from a device its pinned list
/// names (with the listed identity), a non-PreKey message over the session
/// with it, holding a `Live` content and nothing else. The ratchet step
/// commits only when all of that holds. There is no envelope id and no
/// processed mark: a replay is the session's duplicate.
pub(crate) fn open<S: Store>(
    device: &mut Device<S>,
    me: &UserAddress,
    payload: &[u8],
    now_ms: u64,
) -> Result<Opened> {
    let refused = |why| Err(Error::LiveRefused(why));
    let sealed = match pb::Envelope::decode(payload) {
        Ok(pb::Envelope {
            version: 1,
            body: Some(pb::envelope::Body::Sealed(bytes)),
        }) => bytes,
        _ => return refused("not a sealed pairwise envelope"),
    };
    let Ok(inner) = device.unseal(&sealed) else {
        return refused("the seal does not open");
    };
    let Ok(s) = pb::Sealed::decode(inner.as_slice()) else {
        return refused("malformed sealed content");
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
    if !matches!(MessageKind::of(&s.message), Ok(MessageKind::Ratchet)) {
        return refused("not a message over an established session");
    }
    let addr = DeviceAddress::new(user.to_vec(), s.sender_device);
    let (_, signal) = device.decrypt_then(&addr, &s.message, now_ms / 1000, |_, dec| {
        if !listed.ct_eq(dec.remote_identity) {
            return Err(Error::LiveRefused(
                "the session's identity is not the listed one",
            ));
        }
        match pb::Content::decode(dec.plaintext) {
            Ok(pb::Content {
                body:
                    Some(pb::content::Body::Live(pb::Live {
                        signal: Some(signal),
                    })),
                ..
            }) => Ok(signal),
            _ => Err(Error::LiveRefused("not a live signal")),
        }
    })?;
    Ok(Opened {
        user,
        device: s.sender_device,
        signal,
        hidden: contact.presence_hidden,
    })
}
