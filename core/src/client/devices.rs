//! A user's device list: which devices (and mailboxes) belong to the user,
//! signed by the user's identity key so neither a relay nor anyone else can
//! add a device that would then receive the user's messages.
//!
//! The relay stores the signed list under the user's key and only accepts a
//! strictly higher version, so a relay also cannot roll back a removal
//! without the client noticing the version go backwards.

use prost::Message as _;
use sotto_proto::client as pb;
use sotto_proto::relay::SignedDeviceList;
use sotto_relay::ids::MailboxId;

use crate::error::{Error, Result};
use crate::identity::IdentityKeyPair;

/// One device of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceEntry {
    /// The device id, unique within the user.
    pub device_id: u32,
    /// The device's mailbox on the user's home relay.
    pub mailbox: MailboxId,
}

/// A verified device list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceList {
    /// Monotonic version (each change publishes version + 1).
    pub version: u64,
    /// The devices, sorted by id.
    pub devices: Vec<DeviceEntry>,
}

/// Most devices a list may name (Signal allows 5 linked devices plus the
/// primary; we allow a few more, and bound the work a list can cause).
pub const MAX_DEVICES: usize = 16;

impl DeviceList {
    /// Signs this list with the user's identity key for publication.
    pub fn sign(&self, identity: &IdentityKeyPair) -> SignedDeviceList {
        let body = pb::DeviceListBody {
            devices: self
                .devices
                .iter()
                .map(|d| pb::DeviceEntry {
                    device_id: d.device_id,
                    mailbox: d.mailbox.0.to_vec(),
                })
                .collect(),
        }
        .encode_to_vec();
        let mut user_key = [0u8; 32];
        user_key.copy_from_slice(&identity.public().as_bytes()[..32]);
        let transcript = sotto_relay::auth::device_list_transcript(&user_key, self.version, &body);
        SignedDeviceList {
            user_key: user_key.to_vec(),
            version: self.version,
            signature: identity.sign(&transcript).to_vec(),
            body,
        }
    }

    /// Verifies a list fetched from a relay for `user` (its Ed25519 key).
    pub fn verify(user: &[u8; 32], signed: &SignedDeviceList) -> Result<Self> {
        if signed.user_key.as_slice() != user.as_slice()
            || !sotto_relay::auth::verify_device_list(
                user,
                signed.version,
                &signed.body,
                &signed.signature,
            )
        {
            return Err(Error::BadSignature {
                what: "device list",
            });
        }
        let body =
            pb::DeviceListBody::decode(signed.body.as_slice()).map_err(|_| Error::Malformed {
                what: "device list",
            })?;
        Self::from_entries(signed.version, &body.devices)
    }

    /// Builds a list from stored entries, checking bounds and uniqueness.
    pub(crate) fn from_entries(version: u64, entries: &[pb::DeviceEntry]) -> Result<Self> {
        if entries.len() > MAX_DEVICES {
            return Err(Error::Malformed {
                what: "device list (too many devices)",
            });
        }
        let mut devices = Vec::with_capacity(entries.len());
        for e in entries {
            let mailbox: [u8; 32] =
                e.mailbox
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::Malformed {
                        what: "device list mailbox",
                    })?;
            devices.push(DeviceEntry {
                device_id: e.device_id,
                mailbox: MailboxId(mailbox),
            });
        }
        devices.sort_by_key(|d| d.device_id);
        if devices.windows(2).any(|w| w[0].device_id == w[1].device_id) {
            return Err(Error::Malformed {
                what: "device list (duplicate device id)",
            });
        }
        Ok(DeviceList { version, devices })
    }

    /// The stored form of the entries.
    pub(crate) fn entries(&self) -> Vec<pb::DeviceEntry> {
        self.devices
            .iter()
            .map(|d| pb::DeviceEntry {
                device_id: d.device_id,
                mailbox: d.mailbox.0.to_vec(),
            })
            .collect()
    }

    /// The device with `id`, if listed.
    pub fn get(&self, id: u32) -> Option<&DeviceEntry> {
        self.devices.iter().find(|d| d.device_id == id)
    }
}
