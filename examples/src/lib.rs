//! Building blocks of Sotto's runnable examples and end-to-end tests.
//!
//! - [`relay_process`]: start a real `sotto-relay` process on a temp data dir
//!   and read the address and certificate fingerprint it publishes;
//! - [`scripted`]: a scripted user (one device) that publishes prekeys, sets up
//!   PQXDH sessions from relay-served bundles and exchanges ratchet messages
//!   through the relay.
//!
//! This is deliberately a thin layer over `sotto-core` and
//! `sotto_relay::client`: it shows how the two fit together. The envelope
//! framing used here (see [`scripted::DemoEnvelope`]) is an example format,
//! not part of the protocol.

pub mod relay_process;
pub mod scripted;

/// Everything that can fail in the examples.
#[derive(Debug, thiserror::Error)]
pub enum ExampleError {
    /// The cryptographic core refused something.
    #[error("core: {0}")]
    Core(#[from] sotto_core::Error),
    /// The relay or the connection to it failed.
    #[error("relay: {0}")]
    Relay(#[from] sotto_relay::error::RelayError),
    /// Local I/O (temp dirs, the relay process).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The relay process did not start or published an unreadable address.
    #[error("relay process: {0}")]
    RelayProcess(String),
    /// An envelope that is not in the example framing.
    #[error("malformed envelope: {0}")]
    Envelope(&'static str),
}

/// Result alias of the examples.
pub type Result<T> = std::result::Result<T, ExampleError>;
