//! Sotto's blind store-and-forward relay and its client.
//!
//! The relay stores opaque ciphertext envelopes per mailbox (a mailbox is a
//! device's Ed25519 public key), pushes them to connected devices, and deletes
//! them on acknowledgement. It also hosts the prekey directory, signed device
//! lists and encrypted attachment blobs. It never sees plaintext.
//!
//! Layout: protocol pieces shared by both sides ([`frame`], [`auth`], [`ids`],
//! [`limits`], [`udp`]), the [`client`], and behind the default `server` feature the
//! relay itself ([`server`] and its storage and operations modules).
//! The wire protocol is specified in `PROTOCOL.md` Part II.

pub mod addr_file;
pub mod auth;
pub mod client;
pub mod error;
pub mod frame;
pub mod ids;
pub mod limits;
pub mod udp;

#[cfg(feature = "server")]
pub mod server;

/// Generated protobuf types of the relay protocol.
pub use sotto_proto::relay as wire;

pub use client::{
    FetchPage, FetchedBundle, Pushed, ReceivedEnvelope, RelayClient, StreamAcks, Subscription,
};
pub use error::{RelayError, Result};
pub use ids::{BlobId, EnvelopeId, MailboxId};
