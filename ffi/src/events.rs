//! What the messenger client tells the app, as foreign records and enums:
//! sotto-core's `Event`/`EventKind` with addresses as text and message ids as
//! 16-byte arrays.
//!
//! An attachment stays an opaque object ([`Attachment`]): its pointer holds
//! the file's key, so it never crosses the boundary as bytes the app could
//! log or store carelessly; the app passes the object back to
//! `SottoClient.downloadAttachment` and Rust wipes the key when it is freed.

use std::fmt;
use std::sync::Arc;

use sotto_messenger as core;

use crate::error::{Result, SottoError};

/// A 16-byte message id from foreign bytes.
pub(crate) fn message_id(bytes: &[u8]) -> Result<core::MessageId> {
    bytes
        .try_into()
        .map(core::MessageId)
        .map_err(|_| SottoError::InvalidInput {
            reason: "a message id is 16 bytes".to_owned(),
        })
}

/// A file attached to a received message. Opaque: it carries the file's
/// decryption key, which never leaves Rust; download it with
/// `SottoClient.downloadAttachment`.
#[derive(uniffi::Object)]
pub struct Attachment(pub(crate) core::AttachmentRef);

#[uniffi::export]
impl Attachment {
    /// The file name the sender gave (untrusted: sanitise before using it
    /// as a path).
    pub fn file_name(&self) -> String {
        self.0.file_name.clone()
    }

    /// Plaintext size in bytes (from the authenticated pointer).
    pub fn size(&self) -> u64 {
        self.0.size
    }

    /// The relay blob id (public), e.g. as a cache key.
    pub fn blob_id(&self) -> Vec<u8> {
        self.0.blob_id.to_vec()
    }
}

impl fmt::Debug for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The core type redacts the pointer.
        self.0.fmt(f)
    }
}

/// A received (or synced from another own device) chat message.
#[derive(Clone, uniffi::Record)]
pub struct ReceivedMessage {
    /// The sender's 16-byte id for it (receipts and `markRead` use it).
    pub id: Vec<u8>,
    /// Sender's clock, milliseconds since 1970.
    pub sent_at_ms: u64,
    /// The text. Once across the boundary it is the app's memory.
    pub text: String,
    /// Attached files.
    pub attachments: Vec<Arc<Attachment>>,
}

impl fmt::Debug for ReceivedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Message content never goes to logs.
        f.debug_struct("ReceivedMessage")
            .field("id", &self.id)
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .field("attachments", &self.attachments.len())
            .finish()
    }
}

impl From<core::ReceivedMessage> for ReceivedMessage {
    fn from(m: core::ReceivedMessage) -> Self {
        Self {
            id: m.id.0.to_vec(),
            sent_at_ms: m.sent_at_ms,
            text: m.text,
            attachments: m
                .attachments
                .into_iter()
                .map(|a| Arc::new(Attachment(a)))
                .collect(),
        }
    }
}

/// Kinds of receipts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ReceiptKind {
    /// The recipient device has the message.
    Delivered,
    /// The recipient read it.
    Read,
}

/// How far a sent message got with one recipient device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, uniffi::Enum)]
pub enum DeliveryState {
    /// The recipient's relay accepted it (durably).
    Sent,
    /// The device decrypted and stored it.
    Delivered,
    /// The user read it.
    Read,
}

impl From<core::DeliveryState> for DeliveryState {
    fn from(s: core::DeliveryState) -> Self {
        match s {
            core::DeliveryState::Sent => Self::Sent,
            core::DeliveryState::Delivered => Self::Delivered,
            core::DeliveryState::Read => Self::Read,
        }
    }
}

/// The delivery state of a sent message at one recipient device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct DeviceDelivery {
    /// The recipient's device id.
    pub device_id: u32,
    /// How far the message got there.
    pub state: DeliveryState,
}

/// What happened.
#[derive(Debug, Clone, uniffi::Enum)]
pub enum EventKind {
    /// A message from the peer.
    Message {
        /// The message.
        message: ReceivedMessage,
    },
    /// A message from a user not accepted yet (a stranger): no receipt was
    /// sent and its relay was not contacted. `acceptRequest(peer)` or
    /// `block(peer)`.
    MessageRequest {
        /// The message.
        message: ReceivedMessage,
    },
    /// A receipt for messages this user sent.
    Receipt {
        /// Delivered or read.
        kind: ReceiptKind,
        /// The 16-byte ids of the messages it covers.
        message_ids: Vec<Vec<u8>>,
    },
    /// A message this user sent from another of their devices.
    SentFromOtherDevice {
        /// Its recipient's address.
        to: String,
        /// The message.
        message: ReceivedMessage,
    },
    /// A message from the peer device could not be decrypted or used (the
    /// claimed sender is not authenticated: show it as such).
    DecryptFailed {
        /// Why (no secrets, no content).
        reason: String,
    },
    /// The session with the peer device was set up afresh (repair).
    SessionReset,
    /// The peer's identity key is not the recorded one: nothing from it is
    /// accepted until the user decides. Show it prominently.
    IdentityChanged,
    /// The peer added a device (`peerDevice`).
    NewDevice,
    /// The peer removed a device (`peerDevice`).
    DeviceRemoved,
    /// A sent message progressed with one recipient device (`peerDevice`).
    Delivery {
        /// The 16-byte message id.
        message_id: Vec<u8>,
        /// Its new state.
        state: DeliveryState,
    },
    /// A queued message could not be sent (e.g. the recipient has no devices).
    SendFailed {
        /// The 16-byte message id.
        message_id: Vec<u8>,
        /// Why.
        reason: String,
    },
    /// A group changed (`groupId`; `peer` is the admin who changed it).
    GroupChanged {
        /// The group's version after the change.
        version: u64,
        /// What changed.
        changes: Vec<GroupChange>,
        /// What it means for this device.
        effect: GroupEffect,
    },
    /// A stored event could not be read back: acknowledge it; the queue
    /// never stalls on it.
    Unreadable {
        /// Why.
        reason: String,
    },
    /// An event kind this version of the bindings does not know yet.
    Other {
        /// Its debug name.
        description: String,
    },
}

/// One change of a group.
#[derive(Clone, PartialEq, Eq, uniffi::Enum)]
pub enum GroupChange {
    /// A member joined.
    Added {
        /// Its user address.
        member: String,
        /// As an admin.
        admin: bool,
    },
    /// A member left or was removed (its 32-byte user id).
    Removed {
        /// The user id.
        user: Vec<u8>,
    },
    /// A member became an admin.
    Promoted {
        /// The user id.
        user: Vec<u8>,
    },
    /// An admin became an ordinary member.
    Demoted {
        /// The user id.
        user: Vec<u8>,
    },
    /// The group's new name.
    Renamed {
        /// The name.
        name: String,
    },
    /// The avatar changed.
    AvatarChanged,
}

impl fmt::Debug for GroupChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A group's name is content: never in logs.
        match self {
            Self::Added { admin, .. } => write!(f, "Added {{ admin: {admin} }}"),
            Self::Removed { .. } => f.write_str("Removed"),
            Self::Promoted { .. } => f.write_str("Promoted"),
            Self::Demoted { .. } => f.write_str("Demoted"),
            Self::Renamed { name } => write!(f, "Renamed(<{} bytes>)", name.len()),
            Self::AvatarChanged => f.write_str("AvatarChanged"),
        }
    }
}

impl From<core::GroupChange> for GroupChange {
    fn from(c: core::GroupChange) -> Self {
        match c {
            core::GroupChange::Added { member, admin } => Self::Added {
                member: member.to_string(),
                admin,
            },
            core::GroupChange::Removed(u) => Self::Removed { user: u.to_vec() },
            core::GroupChange::Promoted(u) => Self::Promoted { user: u.to_vec() },
            core::GroupChange::Demoted(u) => Self::Demoted { user: u.to_vec() },
            core::GroupChange::Renamed(name) => Self::Renamed { name },
            // The core enum is non-exhaustive.
            _ => Self::AvatarChanged,
        }
    }
}

/// What a group change means for this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum GroupEffect {
    /// An ordinary change of a group this device is in.
    Applied,
    /// An invitation from a user this user has not accepted: a request
    /// (`acceptGroup`).
    Invitation,
    /// This user is no longer a member.
    RemovedYou,
}

/// One event for the app. Acknowledge it (`ackEvent(seq)`) once handled;
/// until then it is delivered again, also after a restart.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Event {
    /// Position in the durable event queue; stable across replays.
    pub seq: u64,
    /// The other party's address, when known.
    pub peer: Option<String>,
    /// The other party's device, when relevant (0 otherwise).
    pub peer_device: u32,
    /// The 32-byte id of the group it happened in (group messages, their
    /// delivery, group changes), if any.
    pub group_id: Option<Vec<u8>>,
    /// What happened.
    pub kind: EventKind,
}

fn ids(v: Vec<core::MessageId>) -> Vec<Vec<u8>> {
    v.into_iter().map(|i| i.0.to_vec()).collect()
}

impl From<core::Event> for Event {
    fn from(e: core::Event) -> Self {
        use core::EventKind as K;
        let kind = match e.kind {
            K::Message(m) => EventKind::Message { message: m.into() },
            K::MessageRequest(m) => EventKind::MessageRequest { message: m.into() },
            K::Unreadable { reason } => EventKind::Unreadable { reason },
            K::Receipt { kind, message_ids } => EventKind::Receipt {
                kind: match kind {
                    core::ReceiptKind::Delivered => ReceiptKind::Delivered,
                    core::ReceiptKind::Read => ReceiptKind::Read,
                },
                message_ids: ids(message_ids),
            },
            K::SentFromOtherDevice { to, message } => EventKind::SentFromOtherDevice {
                to: to.to_string(),
                message: message.into(),
            },
            K::DecryptFailed { reason } => EventKind::DecryptFailed { reason },
            K::SessionReset => EventKind::SessionReset,
            K::IdentityChanged => EventKind::IdentityChanged,
            K::NewDevice => EventKind::NewDevice,
            K::DeviceRemoved => EventKind::DeviceRemoved,
            K::Delivery { message_id, state } => EventKind::Delivery {
                message_id: message_id.0.to_vec(),
                state: state.into(),
            },
            K::SendFailed { message_id, reason } => EventKind::SendFailed {
                message_id: message_id.0.to_vec(),
                reason,
            },
            K::GroupChanged {
                version,
                changes,
                effect,
            } => EventKind::GroupChanged {
                version,
                changes: changes.into_iter().map(Into::into).collect(),
                effect: match effect {
                    core::GroupEffect::Invitation => GroupEffect::Invitation,
                    core::GroupEffect::RemovedYou => GroupEffect::RemovedYou,
                    _ => GroupEffect::Applied,
                },
            },
            // The core enum is non-exhaustive.
            other => EventKind::Other {
                description: format!("{other:?}"),
            },
        };
        Self {
            seq: e.seq,
            peer: e.peer.map(|p| p.to_string()),
            peer_device: e.peer_device,
            group_id: e.group.map(|g| g.0.to_vec()),
            kind,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn message_text_is_redacted_in_debug() {
        let m = ReceivedMessage {
            id: vec![1; 16],
            sent_at_ms: 1,
            text: "attack at dawn".into(),
            attachments: Vec::new(),
        };
        let shown = format!("{m:?}");
        assert!(!shown.contains("attack"), "{shown}");
        assert!(shown.contains("<14 bytes>"), "{shown}");
    }

    #[test]
    fn message_ids_must_be_16_bytes() {
        assert!(message_id(&[0; 16]).is_ok());
        assert!(matches!(
            message_id(&[0; 15]),
            Err(SottoError::InvalidInput { .. })
        ));
    }
}
