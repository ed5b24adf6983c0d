//! The engine: the messenger's decisions, with no I/O. Time and randomness
//! are passed in, state lives in the store, and every step is one store
//! transaction, so each piece is tested without a network (as quinn-proto
//! is) and a crash between steps loses nothing.
//!
//! - [`address`]: `user@host:port/fingerprint` addresses;
//! - [`account`]: the account key and device certificates;
//! - [`devices`]: signed device lists and the rules that pin them;
//! - [`envelope`]: the sealed envelope's sender MAC;
//! - `link`: linking a new device, its protocol and cryptography;
//! - `records`: the messenger's durable rows, committed with ratchet state;
//! - `inbound`: one envelope in, one atomic commit;
//! - `outbound`: the outbox planner, one step and one commit at a time;
//! - [`prekeys`]: when to rotate and how many prekeys to upload;
//! - [`events`]: what the app is told;
//! - [`group`]: groups: signed membership changes, sender keys, group messages;
//! - [`live`]: presence and typing, in memory only;
//! - `live_wire`: sealing and opening live signals.

pub mod account;
pub mod address;
pub mod devices;
pub mod envelope;
pub mod events;
pub(crate) mod fragments;
pub mod group;
pub(crate) mod inbound;
pub(crate) mod link;
pub mod live;
pub(crate) mod live_wire;
pub(crate) mod outbound;
pub(crate) mod packed;
pub mod prekeys;
pub(crate) mod records;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod testkit;

/// How long sent-log entries (for retry requests) and processed-envelope
/// marks are kept: past the relay's 30-day envelope TTL.
pub const RECORD_RETENTION_MS: u64 = 45 * 24 * 3600 * 1000;
