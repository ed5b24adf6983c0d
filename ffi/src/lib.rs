//! Sotto for Kotlin and Swift: the UniFFI interface (proc macros, library
//! mode) over Sotto's Rust crates.
//!
//! This crate adds no cryptography or protocol logic of its own; it turns
//! Rust types into foreign objects, errors into typed exceptions, futures
//! into `suspend`/`async` functions, and the event queue into listener
//! callbacks. The modules:
//! - [`client`] — `SottoClient`, the messenger (register, send text and
//!   files, receive events, receipts, safety numbers, devices).
//! - [`events`] — `Event`, `EventKind`, `ReceivedMessage`, `Attachment`,
//!   `DeliveryState`: what the client reports.
//! - [`groups`] — group chats on `SottoClient`: create, change, leave,
//!   send, `GroupInfo`.
//! - [`listener`] — the `EventListener` callback and `EventSubscription`.
//! - [`live`] — presence and typing on `SottoClient`, `LiveEvent`.
//! - [`link`] — `Linking` / `PendingLink`: linking a new device.
//! - [`device`] — `Device`, the low-level crypto surface (identity,
//!   prekeys, sessions) for apps bringing their own transport.
//! - [`identity`] — `SafetyNumber`.
//! - [`error`] — `SottoError`, the one error type every export returns.
//! - `runtime` — the one tokio runtime all async exports and listener
//!   tasks share, and how foreign cancellation drops Rust futures.
//! - `consumer` — the one-reader-at-a-time rule of the event queue.
//!
//! Bindings are generated from the compiled cdylib by the pinned
//! `uniffi-bindgen` of `ffi/bindgen` (`scripts/gen-bindings`).

uniffi::setup_scaffolding!("sotto");

pub mod client;
pub(crate) mod consumer;
pub mod device;
pub mod error;
pub mod events;
pub mod groups;
pub mod identity;
pub mod link;
pub mod listener;
pub mod live;
pub(crate) mod runtime;

pub use client::SottoClient;
pub use device::{Device, OneTimePrekeys, PeerAddress, PrekeyBundle, PrekeyUpload, Verification};
pub use error::SottoError;
pub use events::{
    Attachment, DeliveryState, DeviceDelivery, Event, EventKind, GroupChange, GroupEffect,
    ReceiptKind, ReceivedMessage,
};
pub use groups::{GroupInfo, GroupMember, GroupStatus, UserDelivery};
pub use identity::SafetyNumber;
pub use link::{Linking, PendingLink};
pub use listener::{EventListener, EventSubscription};
pub use live::{LiveEvent, Presence};

/// The library's version, to log next to the app's own.
#[uniffi::export]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}
