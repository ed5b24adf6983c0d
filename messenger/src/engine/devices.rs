//! A user's device list: which devices belong to the user, each with its
//! mailbox and its Part I identity, signed by the user's account key
//! ([`super::account`]). Only the primary device holds that key, so neither a
//! relay, nor a stranger, nor a removed device can add a device that would
//! then receive the user's messages.
//!
//! Lists are versioned and pinned: a client remembers the highest version it
//! has seen of every user (its own included) and refuses anything older, an
//! equal version with another body, or a list that re-uses a device id.
//! (The relay caps each published version step, so no one can freeze a
//! list at `u64::MAX`; clients do not, so one offline through many changes
//! is never stuck.) Device ids are
//! assigned in increasing order and never reused (`next_device_id`), so an id
//! below `next_device_id` that a list does not name was removed: messages
//! claiming it are refused without asking anyone.

use prost::Message as _;
use sha2::{Digest, Sha256};
use sotto_core::Error as CoreError;
use sotto_proto::client as pb;
use sotto_proto::relay::SignedDeviceList;
use sotto_relay::ids::MailboxId;

use super::account::{verify_account_signature, AccountKeyPair};
use crate::error::{Error, Result};
use sotto_core::identity::IdentityKey;

/// One device of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceEntry {
    /// The device id, unique within the user and never reused.
    pub device_id: u32,
    /// The device's mailbox on the user's home relay.
    pub mailbox: MailboxId,
    /// The device's Part I identity (what its sessions and bundles use).
    pub identity: IdentityKey,
}

/// A verified device list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceList {
    /// Monotonic version (each change publishes version + 1).
    pub version: u64,
    /// The devices, sorted by id.
    pub devices: Vec<DeviceEntry>,
    /// Every id below this was assigned once.
    pub next_device_id: u32,
}

/// Most devices a list may name (Signal allows 5 linked devices plus the
/// primary; we allow a few more, and bound the work a list can cause).
pub const MAX_DEVICES: usize = 16;

/// What a newly seen list changes against the pinned one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ListChange {
    /// The list is newer than the pinned one (or the first seen): store it.
    pub(crate) newer: bool,
    /// Device ids listed now and not before (empty for a first list).
    pub(crate) added: Vec<u32>,
    /// Device ids listed before and not now: revoked.
    pub(crate) removed: Vec<u32>,
}

impl DeviceList {
    /// The body that is signed and published.
    pub(crate) fn body(&self) -> pb::DeviceListBody {
        pb::DeviceListBody {
            devices: self.entries(),
            next_device_id: self.next_device_id,
        }
    }

    /// Signs this list with the account key for publication.
    pub fn sign(&self, account: &AccountKeyPair) -> SignedDeviceList {
        let body = self.body().encode_to_vec();
        SignedDeviceList {
            user_key: account.public().to_vec(),
            version: self.version,
            signature: sotto_relay::auth::sign_device_list(
                account.signing_key(),
                self.version,
                &body,
            )
            .to_vec(),
            body,
        }
    }

    /// Verifies a list fetched from a relay (or carried in a message) for
    /// `user` (its account key): the signature, then every bound of the body.
    pub fn verify(user: &[u8; 32], signed: &SignedDeviceList) -> Result<Self> {
        let transcript =
            sotto_relay::auth::device_list_transcript(user, signed.version, &signed.body);
        if signed.user_key.as_slice() != user.as_slice()
            || !verify_account_signature(user, &transcript, &signed.signature)
        {
            return Err(CoreError::BadSignature {
                what: "device list",
            }
            .into());
        }
        let body = pb::DeviceListBody::decode(signed.body.as_slice())
            .map_err(|_| Error::malformed("device list"))?;
        Self::from_body(signed.version, &body)
    }

    /// Builds a list from a decoded body, checking every bound: at most
    /// [`MAX_DEVICES`], distinct ids below `next_device_id`, distinct
    /// mailboxes and identities, valid keys.
    pub(crate) fn from_body(version: u64, body: &pb::DeviceListBody) -> Result<Self> {
        let bad = |what| Err(CoreError::Malformed { what }.into());
        if body.devices.len() > MAX_DEVICES {
            return bad("device list (too many devices)");
        }
        let mut devices = Vec::with_capacity(body.devices.len());
        for e in &body.devices {
            let mailbox: [u8; 32] = e
                .mailbox
                .as_slice()
                .try_into()
                .map_err(|_| Error::malformed("device list mailbox"))?;
            if e.device_id >= body.next_device_id {
                return bad("device list (id not below next_device_id)");
            }
            devices.push(DeviceEntry {
                device_id: e.device_id,
                mailbox: MailboxId(mailbox),
                identity: IdentityKey::from_bytes(&e.identity_key)?,
            });
        }
        devices.sort_by_key(|d| d.device_id);
        for (i, a) in devices.iter().enumerate() {
            for b in &devices[i + 1..] {
                if a.device_id == b.device_id {
                    return bad("device list (duplicate device id)");
                }
                if a.mailbox == b.mailbox || a.identity.ct_eq(&b.identity) {
                    return bad("device list (duplicate device)");
                }
            }
        }
        Ok(DeviceList {
            version,
            devices,
            next_device_id: body.next_device_id,
        })
    }

    /// The stored form of the entries.
    pub(crate) fn entries(&self) -> Vec<pb::DeviceEntry> {
        self.devices
            .iter()
            .map(|d| pb::DeviceEntry {
                device_id: d.device_id,
                mailbox: d.mailbox.0.to_vec(),
                identity_key: d.identity.as_bytes().to_vec(),
            })
            .collect()
    }

    /// SHA-256 of the canonical body (what a pin remembers).
    pub(crate) fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.body().encode_to_vec()).into()
    }

    /// The device with `id`, if listed.
    pub fn get(&self, id: u32) -> Option<&DeviceEntry> {
        self.devices.iter().find(|d| d.device_id == id)
    }

    /// True if device `id` was assigned once and is no longer listed.
    pub fn is_revoked(&self, id: u32) -> bool {
        id < self.next_device_id && self.get(id).is_none()
    }

    /// Compares this (verified) list with the pinned one. Refuses a rollback,
    /// an equivocation (same version, other body), a lower `next_device_id`,
    /// a device id re-used or re-added, or a device whose identity or
    /// mailbox changed.
    pub(crate) fn against(&self, pinned: Option<&DeviceList>) -> Result<ListChange> {
        let Some(old) = pinned else {
            return Ok(ListChange {
                newer: true,
                ..ListChange::default()
            });
        };
        let refuse = |why| Err(Error::DeviceListRejected(why));
        if self.version < old.version {
            return refuse("older than the version already seen (rolled back)");
        }
        if self.version == old.version {
            return if self.hash() == old.hash() {
                Ok(ListChange::default())
            } else {
                refuse("another list with the version already seen")
            };
        }
        if self.next_device_id < old.next_device_id {
            return refuse("device ids go backwards");
        }
        let mut change = ListChange {
            newer: true,
            ..ListChange::default()
        };
        for d in &self.devices {
            match old.get(d.device_id) {
                Some(o) if o.identity.ct_eq(&d.identity) && o.mailbox == d.mailbox => {}
                Some(_) => return refuse("a device changed its identity or mailbox"),
                None if d.device_id < old.next_device_id => {
                    return refuse("a removed device id came back")
                }
                None => change.added.push(d.device_id),
            }
        }
        for o in &old.devices {
            if self.get(o.device_id).is_none() {
                change.removed.push(o.device_id);
            }
        }
        Ok(change)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand_core::OsRng;
    use sotto_core::identity::IdentityKeyPair;

    fn entry(id: u32) -> DeviceEntry {
        DeviceEntry {
            device_id: id,
            mailbox: MailboxId([id as u8; 32]),
            identity: *IdentityKeyPair::generate(&mut OsRng).public(),
        }
    }

    fn list(version: u64, devices: Vec<DeviceEntry>, next: u32) -> DeviceList {
        DeviceList {
            version,
            devices,
            next_device_id: next,
        }
    }

    #[test]
    fn only_the_account_key_signs_a_list() {
        let account = AccountKeyPair::generate(&mut OsRng);
        let l = list(1, vec![entry(1)], 2);
        let signed = l.sign(&account);
        assert_eq!(DeviceList::verify(&account.public(), &signed).unwrap(), l);
        let other = AccountKeyPair::generate(&mut OsRng);
        let forged = l.sign(&other);
        assert!(DeviceList::verify(&account.public(), &forged).is_err());
        let mut tampered = signed.clone();
        tampered.version = 2;
        assert!(DeviceList::verify(&account.public(), &tampered).is_err());
    }

    #[test]
    fn pins_refuse_rollback_equivocation_and_reused_ids() {
        let (a, b, c) = (entry(1), entry(2), entry(3));
        let v5 = list(5, vec![a.clone(), b.clone()], 3);
        let refused =
            |l: &DeviceList| matches!(l.against(Some(&v5)), Err(Error::DeviceListRejected(_)));
        assert!(refused(&list(4, vec![a.clone(), b.clone()], 3)), "rollback");
        assert!(refused(&list(5, vec![a.clone()], 3)), "equivocation");
        assert!(refused(&list(6, vec![a.clone()], 2)), "ids backwards");
        let mut b2 = entry(2);
        b2.mailbox = b.mailbox;
        assert!(
            refused(&list(6, vec![a.clone(), b2], 3)),
            "new identity, same id"
        );
        // Remove 2, then bring it back: refused.
        let v6 = list(6, vec![a.clone()], 3);
        assert!(matches!(
            list(7, vec![a.clone(), b.clone()], 3).against(Some(&v6)),
            Err(Error::DeviceListRejected(_))
        ));
        // The honest path: same list, removal, addition.
        assert_eq!(v5.against(Some(&v5)).unwrap(), ListChange::default());
        let change = v6.against(Some(&v5)).unwrap();
        assert_eq!(change.removed, vec![2]);
        assert!(v6.is_revoked(2) && !v6.is_revoked(1) && !v6.is_revoked(3));
        let v7 = list(7, vec![a, c], 4);
        assert_eq!(v7.against(Some(&v6)).unwrap().added, vec![3]);
    }

    #[test]
    fn bodies_with_duplicates_or_ids_past_next_are_malformed() {
        let a = entry(1);
        let mut dup = entry(2);
        dup.identity = a.identity;
        for (devices, next) in [(vec![a.clone(), dup], 3), (vec![a.clone()], 1)] {
            let body = list(1, devices, next).body();
            assert!(DeviceList::from_body(1, &body).is_err());
        }
    }
}
