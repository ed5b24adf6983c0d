//! What the client tells the app: received messages, receipts, delivery
//! progress and the typed problems (a message that could not be decrypted,
//! a reset session, a changed identity, a new device).
//!
//! Events wait in a durable queue (in the same store, committed with the
//! ratchet step that produced them) until the app acknowledges them with
//! [`crate::Messenger::ack_event`], so a crash of the app between receiving and
//! storing a message replays the event instead of losing it. Each event has
//! a stable `seq`, so an app that stores events itself can drop a replay.

use sotto_core::Error as CoreError;
use sotto_proto::client as pb;

use super::address::UserAddress;
use super::group::state::GroupId;
use crate::error::{Error, Result};

/// A message id: 16 random bytes chosen by the sender.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    pub(crate) fn from_slice(b: &[u8]) -> Result<Self> {
        b.try_into()
            .map(MessageId)
            .map_err(|_| Error::malformed("message id"))
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageId({})", hex::encode(self.0))
    }
}

/// An attachment a message refers to (download it with
/// [`crate::Messenger::download_attachment`]).
#[derive(Clone)]
pub struct AttachmentRef {
    /// The relay blob holding the ciphertext (on the sender's home relay).
    pub blob_id: [u8; 32],
    /// Encoded attachment pointer (key, digest, sizes): secret.
    pub(crate) pointer: Vec<u8>,
    /// The file name the sender gave, made safe to show and to use as the
    /// last component of a path (see [`sanitize_file_name`]). Still the
    /// sender's choice: never trust its extension.
    pub file_name: String,
    /// Plaintext size in bytes.
    pub size: u64,
}

impl PartialEq for AttachmentRef {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        // The pointer holds the attachment key: compared in constant time.
        self.blob_id == other.blob_id
            && self.file_name == other.file_name
            && self.size == other.size
            && self.pointer.len() == other.pointer.len()
            && bool::from(self.pointer.ct_eq(&other.pointer))
    }
}

impl Eq for AttachmentRef {}

/// Most attachments one message may carry.
pub const MAX_ATTACHMENTS: usize = 32;
/// Longest file name kept, in bytes (longer names are cut at a character boundary).
pub const MAX_FILE_NAME_BYTES: usize = 255;

/// Makes a sender's file name safe to show and to use as one path component:
/// only the part after the last `/` or `\`, control and bidirectional-override
/// characters removed, leading dots and spaces stripped (no `..`, no hidden
/// files), at most [`MAX_FILE_NAME_BYTES`] bytes; `attachment` if nothing is left.
pub fn sanitize_file_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut out = String::with_capacity(last.len().min(MAX_FILE_NAME_BYTES));
    for c in last.chars() {
        let bidi = matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}');
        if c.is_control() || bidi {
            continue;
        }
        if out.len() + c.len_utf8() > MAX_FILE_NAME_BYTES {
            break;
        }
        out.push(c);
    }
    let trimmed = out.trim_start_matches(['.', ' ']).trim_end();
    if trimmed.is_empty() {
        "attachment".to_string()
    } else {
        trimmed.to_string()
    }
}

impl std::fmt::Debug for AttachmentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachmentRef")
            .field("file_name", &self.file_name)
            .field("size", &self.size)
            .field("pointer", &"<redacted>")
            .finish()
    }
}

impl AttachmentRef {
    /// Serialises the reference, its secret key included, so an app can keep
    /// it (e.g. to download later, after the event was acknowledged). Store
    /// it as carefully as message content.
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        use prost::Message as _;
        zeroize::Zeroizing::new(
            pb::AttachmentRef {
                blob_id: self.blob_id.to_vec(),
                pointer: self.pointer.clone(),
                file_name: self.file_name.clone(),
            }
            .encode_to_vec(),
        )
    }

    /// Parses what [`AttachmentRef::to_bytes`] produced.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        use prost::Message as _;
        let mut r = pb::AttachmentRef::decode(bytes)
            .map_err(|_| Error::malformed("attachment reference"))?;
        let out = attachment_from_pb(&r);
        zeroize::Zeroize::zeroize(&mut r.pointer);
        out
    }
}

fn attachment_from_pb(a: &pb::AttachmentRef) -> Result<AttachmentRef> {
    let blob_id: [u8; 32] = a
        .blob_id
        .as_slice()
        .try_into()
        .map_err(|_| Error::malformed("attachment blob id"))?;
    let size = sotto_core::attachment::AttachmentPointer::from_bytes(&a.pointer)?.plaintext_len;
    Ok(AttachmentRef {
        blob_id,
        pointer: a.pointer.clone(),
        file_name: sanitize_file_name(&a.file_name),
        size,
    })
}

impl Drop for AttachmentRef {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.pointer);
    }
}

/// A received (or synced) chat message.
#[derive(Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The sender's id for the message (receipts refer to it).
    pub id: MessageId,
    /// Sender's clock, milliseconds since 1970.
    pub sent_at_ms: u64,
    /// The text.
    pub text: String,
    /// Attached files.
    pub attachments: Vec<AttachmentRef>,
}

impl std::fmt::Debug for ReceivedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Message content never goes to logs.
        f.debug_struct("ReceivedMessage")
            .field("id", &self.id)
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .field("attachments", &self.attachments.len())
            .finish()
    }
}

/// Kinds of receipts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReceiptKind {
    /// The recipient device has the message.
    Delivered,
    /// The recipient read it.
    Read,
}

/// How far a sent message got with one recipient device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeliveryState {
    /// The recipient's relay accepted it (durably).
    Sent,
    /// The device decrypted and stored it.
    Delivered,
    /// The user read it.
    Read,
}

impl DeliveryState {
    /// From its stored value (PROTOCOL.md III: 1 sent, 2 delivered, 3 read;
    /// 0 is a recipient device recorded before the message left).
    pub(crate) fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Sent),
            2 => Some(Self::Delivered),
            3 => Some(Self::Read),
            _ => None,
        }
    }

    /// Its stored value; `None` (a recipient device, nothing yet) is 0.
    pub(crate) fn stored(state: Option<Self>) -> u32 {
        match state {
            None => 0,
            Some(Self::Sent) => 1,
            Some(Self::Delivered) => 2,
            Some(Self::Read) => 3,
        }
    }
}

/// The one way to make the stored form of an event (`pb::ClientEvent`):
/// who it is about, then what happened.
#[derive(Debug, Default)]
pub(crate) struct EventBuilder(pb::ClientEvent);

impl EventBuilder {
    /// About `peer` (a user address), or nobody.
    pub(crate) fn about(peer: Option<&UserAddress>) -> Self {
        Self::named(&peer.map(|p| p.to_string()).unwrap_or_default())
    }

    /// About a peer named by its address text, as an outbox item keeps it.
    pub(crate) fn named(peer: &str) -> Self {
        EventBuilder(pb::ClientEvent {
            peer: peer.to_owned(),
            ..Default::default()
        })
    }

    /// About one device of the peer.
    pub(crate) fn device(mut self, device_id: u32) -> Self {
        self.0.peer_device = device_id;
        self
    }

    /// In a group.
    pub(crate) fn group(mut self, id: &GroupId) -> Self {
        self.0.group_id = id.0.to_vec();
        self
    }

    /// About one message (16-byte id).
    pub(crate) fn message_id(mut self, id: &[u8]) -> Self {
        self.0.message_id = id.to_vec();
        self
    }

    /// What happened.
    pub(crate) fn kind(mut self, kind: pb::client_event::Kind) -> pb::ClientEvent {
        self.0.kind = Some(kind);
        self.0
    }

    /// A recipient device reached `state` for this message.
    pub(crate) fn delivery(
        self,
        user: &[u8],
        device_id: u32,
        state: DeliveryState,
    ) -> pb::ClientEvent {
        self.kind(pb::client_event::Kind::Delivery(pb::DeviceDelivery {
            user: user.to_vec(),
            device_id,
            state: DeliveryState::stored(Some(state)),
        }))
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// A message from the peer.
    Message(ReceivedMessage),
    /// A message from a user this user has not accepted yet (a stranger):
    /// no receipt was sent, the sender's relay was not contacted, and its
    /// attachments cannot be downloaded until [`crate::Messenger::accept_request`].
    MessageRequest(ReceivedMessage),
    /// A receipt for messages this user sent.
    Receipt {
        /// Delivered or read.
        kind: ReceiptKind,
        /// The messages it covers.
        message_ids: Vec<MessageId>,
    },
    /// A message from this user's other device to `to`.
    SentFromOtherDevice {
        /// Its recipient.
        to: UserAddress,
        /// The message.
        message: ReceivedMessage,
    },
    /// A peer device's message could not be decrypted; it was acknowledged
    /// (it never blocks the mailbox) and a retry was requested.
    DecryptFailed {
        /// Why (no secrets, no content).
        reason: String,
    },
    /// The session with this peer device was set up afresh (repair).
    SessionReset,
    /// The peer's identity key is not the one recorded; nothing from it is
    /// accepted until the user decides.
    IdentityChanged,
    /// The peer added a device.
    NewDevice,
    /// The peer removed a device.
    DeviceRemoved,
    /// A sent message progressed with one recipient device.
    Delivery {
        /// The message.
        message_id: MessageId,
        /// Its new state.
        state: DeliveryState,
    },
    /// A queued message could not be sent (e.g. the recipient has no devices).
    SendFailed {
        /// The message.
        message_id: MessageId,
        /// Why.
        reason: String,
    },
    /// A group changed (the event's `group` names it; `peer` is the admin
    /// who changed it).
    GroupChanged {
        /// The group's version after the change.
        version: u64,
        /// What changed.
        changes: Vec<GroupChange>,
        /// What it means for this device.
        effect: GroupEffect,
    },
    /// A queued event could not be read back (a damaged row): acknowledge it
    /// like any other; the queue never stalls on it.
    Unreadable {
        /// Why (no content).
        reason: String,
    },
}

/// One change of a group's membership or look.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupChange {
    /// A member joined (was added).
    Added {
        /// Who.
        member: UserAddress,
        /// As an admin.
        admin: bool,
    },
    /// A member left or was removed (its user id).
    Removed([u8; 32]),
    /// A member became an admin.
    Promoted([u8; 32]),
    /// An admin became an ordinary member.
    Demoted([u8; 32]),
    /// The group's new name.
    Renamed(String),
    /// The avatar changed (read it with `Messenger::group_avatar`).
    AvatarChanged,
}

impl std::fmt::Debug for GroupChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A group's name is content: never in logs.
        match self {
            Self::Added { member, admin } => f
                .debug_struct("Added")
                .field("member", member)
                .field("admin", admin)
                .finish(),
            Self::Removed(u) => write!(f, "Removed({})", hex::encode(&u[..8])),
            Self::Promoted(u) => write!(f, "Promoted({})", hex::encode(&u[..8])),
            Self::Demoted(u) => write!(f, "Demoted({})", hex::encode(&u[..8])),
            Self::Renamed(n) => write!(f, "Renamed(<{} bytes>)", n.len()),
            Self::AvatarChanged => f.write_str("AvatarChanged"),
        }
    }
}

/// What a group change means for this device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupEffect {
    /// An ordinary change of a group this device is in.
    Applied,
    /// An invitation from a user this user has not accepted: the group is a
    /// request (accept it with `Messenger::accept_group`).
    Invitation,
    /// This user is no longer a member.
    RemovedYou,
}

/// One event for the app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Position in the durable event queue; pass to `ack_event`.
    pub seq: u64,
    /// The other party, when known.
    pub peer: Option<UserAddress>,
    /// The other party's device, when relevant.
    pub peer_device: u32,
    /// The group it happened in (group messages, their receipts, changes).
    pub group: Option<GroupId>,
    /// What happened.
    pub kind: EventKind,
}

pub(crate) fn message_from_pb(m: &pb::Message) -> Result<ReceivedMessage> {
    if m.attachments.len() > MAX_ATTACHMENTS {
        return Err(Error::malformed("message (too many attachments)"));
    }
    let attachments = m
        .attachments
        .iter()
        .map(attachment_from_pb)
        .collect::<Result<Vec<_>>>()?;
    Ok(ReceivedMessage {
        id: MessageId::from_slice(&m.id)?,
        sent_at_ms: m.sent_at_ms,
        text: m.text.clone(),
        attachments,
    })
}

/// Most message ids one receipt may name.
pub const MAX_RECEIPT_IDS: usize = 1_000;

impl Event {
    /// A stored event as the app sees it: a row that cannot be decoded
    /// becomes [`EventKind::Unreadable`] with its sequence number, so the app
    /// acknowledges it and the queue moves on.
    pub(crate) fn from_stored(seq: u64, stored: Result<pb::ClientEvent>) -> Self {
        match stored.and_then(|e| Self::from_pb(&e)) {
            Ok(e) => e,
            Err(e) => Event {
                seq,
                peer: None,
                peer_device: 0,
                group: None,
                kind: EventKind::Unreadable {
                    reason: e.to_string(),
                },
            },
        }
    }

    pub(crate) fn from_pb(e: &pb::ClientEvent) -> Result<Self> {
        use pb::client_event::Kind as K;
        let peer = if e.peer.is_empty() {
            None
        } else {
            Some(e.peer.parse()?)
        };
        let corrupt = CoreError::CorruptRecord { table: "app" };
        let kind = match e.kind.as_ref().ok_or(corrupt)? {
            K::Message(m) => EventKind::Message(message_from_pb(m)?),
            K::MessageRequest(m) => EventKind::MessageRequest(message_from_pb(m)?),
            K::Receipt(r) => EventKind::Receipt {
                kind: if r.kind == pb::receipt::Kind::Read as i32 {
                    ReceiptKind::Read
                } else {
                    ReceiptKind::Delivered
                },
                message_ids: r
                    .message_ids
                    .iter()
                    .map(|i| MessageId::from_slice(i))
                    .collect::<Result<_>>()?,
            },
            K::DecryptFailed(reason) => EventKind::DecryptFailed {
                reason: reason.clone(),
            },
            K::SessionReset(_) => EventKind::SessionReset,
            K::IdentityChanged(_) => EventKind::IdentityChanged,
            K::SentSync(s) => EventKind::SentFromOtherDevice {
                to: s.recipient.parse()?,
                message: message_from_pb(
                    s.message
                        .as_ref()
                        .ok_or(CoreError::Malformed { what: "sent sync" })?,
                )?,
            },
            K::NewDevice(_) => EventKind::NewDevice,
            K::DeviceRemoved(_) => EventKind::DeviceRemoved,
            K::Delivery(d) => EventKind::Delivery {
                message_id: MessageId::from_slice(&e.message_id)?,
                state: DeliveryState::from_u32(d.state)
                    .ok_or(CoreError::CorruptRecord { table: "app" })?,
            },
            K::SendFailed(reason) => EventKind::SendFailed {
                message_id: MessageId::from_slice(&e.message_id)?,
                reason: reason.clone(),
            },
            K::Group(g) => EventKind::GroupChanged {
                version: g.version,
                changes: g.actions.iter().map(group_change).collect::<Result<_>>()?,
                effect: match g.kind {
                    1 => GroupEffect::Invitation,
                    2 => GroupEffect::RemovedYou,
                    _ => GroupEffect::Applied,
                },
            },
        };
        let group = match e.group_id.len() {
            0 => None,
            _ => Some(GroupId::from_slice(&e.group_id).map_err(|_| corrupt_app())?),
        };
        Ok(Event {
            seq: e.seq,
            peer,
            peer_device: e.peer_device,
            group,
            kind,
        })
    }
}

fn corrupt_app() -> Error {
    Error::corrupt("app")
}

fn group_change(a: &pb::GroupAction) -> Result<GroupChange> {
    use pb::group_action::Action as A;
    let id = |u: &Vec<u8>| <[u8; 32]>::try_from(u.as_slice()).map_err(|_| corrupt_app());
    Ok(match a.action.as_ref().ok_or_else(corrupt_app)? {
        A::Add(m) => GroupChange::Added {
            member: m.address.parse()?,
            admin: m.admin,
        },
        A::Remove(u) => GroupChange::Removed(id(u)?),
        A::Promote(u) => GroupChange::Promoted(id(u)?),
        A::Demote(u) => GroupChange::Demoted(id(u)?),
        A::Rename(n) => GroupChange::Renamed(n.clone()),
        A::Avatar(_) => GroupChange::AvatarChanged,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn debug_hides_content_and_keys() {
        let pointer =
            sotto_core::attachment::encrypt(&b"secret file"[..], Vec::new(), &mut rand_core::OsRng)
                .unwrap()
                .to_bytes()
                .to_vec();
        let att = AttachmentRef {
            blob_id: [1; 32],
            pointer: pointer.clone(),
            file_name: "a.txt".into(),
            size: 11,
        };
        let m = ReceivedMessage {
            id: MessageId([2; 16]),
            sent_at_ms: 0,
            text: "attack at dawn".into(),
            attachments: vec![att.clone()],
        };
        let shown = format!("{m:?} {att:?}");
        assert!(!shown.contains("attack"), "{shown}");
        let key_hex = hex::encode(&pointer[1..33]);
        assert!(!shown.contains(&key_hex[..16]), "{shown}");
        // And the serialised form round-trips.
        assert_eq!(AttachmentRef::from_bytes(&att.to_bytes()).unwrap(), att);
        assert!(AttachmentRef::from_bytes(b"garbage").is_err());
    }
}
