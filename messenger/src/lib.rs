//! # sotto-messenger: what an app calls
//!
//! One device of one user: its account, its linked devices, its contacts,
//! and the messages it sends and receives through the relays, on
//! [`sotto_core`]'s sessions and durable store. It sends, receives and
//! never loses a message.
//!
//! Two rooms, as quinn is built (ARCHITECTURE.md at the repository root
//! says which room holds which decision):
//! - [`engine`]: the decisions, with no I/O: addresses, accounts, device
//!   lists, records, one envelope in and one commit out, events;
//! - [`driver`]: sockets, timers and tasks: relay connections, the send
//!   and receive loops, the network half of linking. It runs what the
//!   engine decides and feeds back what happened.
//!
//! Delivery guarantees: a message is queued durably before `send_*` returns
//! and goes out when a relay is reachable; a received envelope is
//! acknowledged to the relay only after its effects (and its event) are
//! committed; events stay queued until [`Messenger::ack_event`].

pub mod driver;
pub mod engine;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod harness;

pub use driver::link::{Linking, PendingLink, LINK_REVEAL_TIMEOUT};
pub use driver::live::{LiveEvent, LiveEvents};
pub use driver::relays::{BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT};
pub use driver::Messenger;
pub use engine::account::{AccountKeyPair, DeviceCertificate};
pub use engine::address::{RelayAddress, UserAddress};
pub use engine::devices::{DeviceEntry, DeviceList};
pub use engine::events::{
    AttachmentRef, DeliveryState, Event, EventKind, GroupChange, GroupEffect, MessageId,
    ReceiptKind, ReceivedMessage,
};
pub use engine::group::state::{GroupId, GroupState, Member, MAX_GROUP_MEMBERS};
pub use engine::group::{GroupInfo, GroupStatus};
pub use engine::inbound::{MAX_HELD_PER_REQUEST, MAX_STRANGERS};
pub use engine::live::Presence;
pub use engine::prekeys::ONE_TIME_PREKEY_BATCH;
pub use engine::RECORD_RETENTION_MS;
pub use error::{Error, Fault, Result};
