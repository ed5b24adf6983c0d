//! Building blocks of Sotto's runnable examples.
//!
//! Both binaries are apps on the messenger (`sotto_messenger::Messenger`);
//! this library holds what they share (the demo starts its relay with the
//! end-to-end tests' harness, `sotto_e2e::RelayProcess`):
//!
//! - [`wiretap`]: a counting UDP forwarder between clients and the relay, so
//!   the demo can show exactly how many encrypted bytes crossed the wire;
//! - [`profile`]: the terminal chat's data directory (storage key file,
//!   address book, registration marker);
//! - [`display`]: how addresses and safety numbers are shown to people.

pub mod display;
pub mod profile;
pub mod wiretap;

/// Everything that can fail in the examples.
#[derive(Debug, thiserror::Error)]
pub enum ExampleError {
    /// The messenger refused something (its own error, or the core's or a
    /// relay's inside it).
    #[error("messenger: {0}")]
    Messenger(#[from] sotto_messenger::Error),
    /// Local I/O (temp dirs, the relay process, the chat's files).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A file of the chat's data directory is not in the expected format.
    #[error("data directory: {0}")]
    Profile(String),
    /// A command typed into the chat that cannot be carried out as typed.
    #[error("{0}")]
    Usage(String),
    /// Something the demo checks did not happen as it should.
    #[error("unexpected: {0}")]
    Unexpected(String),
}

impl From<sotto_core::Error> for ExampleError {
    fn from(e: sotto_core::Error) -> Self {
        ExampleError::Messenger(e.into())
    }
}

/// Result alias of the examples.
pub type Result<T> = std::result::Result<T, ExampleError>;
