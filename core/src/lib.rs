//! # sotto-core: Sotto's end-to-end cryptography
//!
//! Identities, prekey bundles, PQXDH session setup (X25519 + ML-KEM-768), the
//! Double Ratchet, and durable, encrypted, crash-atomic session storage. The
//! exact protocol (keys, KDF inputs, byte layouts, limits) is specified in
//! `PROTOCOL.md` Part I at the repository root.
//!
//! Layers, bottom up:
//! - [`keys`], [`identity`], [`prekeys`]: key types, safety numbers, bundles;
//! - [`pqxdh`], [`ratchet`], [`padding`]: the pure cryptographic protocol;
//! - [`sender_key`]: group chains (one encryption per group message);
//! - [`session`]: the sans-IO session state machine ([`session::Session`] is
//!   the self-contained in-memory form);
//! - [`store`]: the transactional store trait, [`store::memory::MemoryStore`]
//!   and the encrypted [`store::sqlite::SqliteStore`];
//! - [`trust`]: trust on first use and verification;
//! - [`device`]: the API an app calls ([`Device`]).
//!
//! ```
//! use rand_core::OsRng;
//! use sotto_core::{Device, DeviceAddress, MemoryStore, PrekeyBundle};
//!
//! # fn main() -> Result<(), sotto_core::Error> {
//! let now = 1_700_000_000;
//! let mut alice = Device::create(MemoryStore::new(), 1, now, &mut OsRng)?;
//! let mut bob = Device::create(MemoryStore::new(), 7, now, &mut OsRng)?;
//!
//! // Bob publishes his bundle and one-time prekeys (normally via the relay).
//! let blob = bob.signed_bundle()?;
//! let (ec, kem) = bob.generate_one_time_prekeys(1, 1, now, &mut OsRng)?;
//! let bundle = PrekeyBundle::assemble(&blob, Some(&ec[0].bytes), Some(&kem[0].bytes))?;
//!
//! // Alice starts a session and sends; Bob answers.
//! let bob_addr = DeviceAddress::new(b"bob".to_vec(), 7);
//! let alice_addr = DeviceAddress::new(b"alice".to_vec(), 1);
//! alice.process_bundle(&bob_addr, &bundle, now, &mut OsRng)?;
//! let hello = alice.encrypt(&bob_addr, b"hello Bob", &mut OsRng)?;
//! assert_eq!(bob.decrypt(&alice_addr, &hello.bytes, now)?, b"hello Bob");
//!
//! let reply = bob.encrypt(&alice_addr, b"hi Alice", &mut OsRng)?;
//! assert_eq!(alice.decrypt(&bob_addr, &reply.bytes, now)?, b"hi Alice");
//!
//! // Replays are typed errors, never a second delivery.
//! assert!(matches!(
//!     bob.decrypt(&alice_addr, &hello.bytes, now),
//!     Err(sotto_core::Error::DuplicateMessage { .. })
//! ));
//! # Ok(())
//! # }
//! ```

pub mod attachment;
pub mod device;
pub mod error;
pub mod identity;
pub mod keys;
pub mod padding;
pub mod pqxdh;
pub mod prekeys;
pub mod ratchet;
pub mod sealed;
pub mod sender_key;
pub mod session;
mod session_cache;
pub mod store;
pub mod trust;

pub use attachment::{AttachmentKey, AttachmentPointer};
pub use device::{Device, DeviceAddress};
pub use error::{Error, Fault, Result};
pub use identity::{IdentityKey, IdentityKeyPair, SafetyNumber};
pub use padding::Padding;
pub use prekeys::{PrekeyBundle, UploadItem};
pub use session::{MessageKind, OutgoingMessage, Session, SessionState};
pub use store::memory::MemoryStore;
pub use store::sqlite::{SqliteStore, StorageKey};
pub use store::{Store, Table, Txn};
pub use trust::{Contact, Verification};
