//! The crate's single error type, shared by the client and the server.
//!
//! Remote refusals keep the relay's precise [`ErrorCode`] so callers can react
//! (back off on `RateLimited`, replenish on `QuotaExceeded`...). No variant
//! ever carries key material or payload bytes.

use sotto_proto::relay::ErrorCode;

/// Everything that can go wrong talking to, or running, a relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The relay answered with a typed refusal.
    #[error("relay refused: {} ({detail})", code.as_str_name())]
    Remote {
        /// Stable error code from the protocol.
        code: ErrorCode,
        /// Short content-free explanation.
        detail: String,
    },
    /// A length prefix announced more bytes than the frame limit allows.
    #[error("frame of {len} bytes exceeds limit {max}")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream truncated inside a frame")]
    Truncated,
    /// The bytes are not a valid frame of the expected kind.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// The frame's protocol version is not one this build speaks.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u32),
    /// The peer answered with a frame that does not fit the request.
    #[error("unexpected reply from relay")]
    UnexpectedReply,
    /// A field value was rejected locally before sending.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The relay presented another certificate than the address pins: a
    /// wrong or outdated address (the relay's certificate changed), or
    /// someone in between.
    #[error("certificate fingerprint mismatch: the address pins {pinned}, but {presented}")]
    FingerprintMismatch {
        /// The pinned SHA-256 (hex).
        pinned: String,
        /// What the relay presented instead.
        presented: String,
    },
    /// Called outside a Tokio runtime: the client runs on Tokio (QUIC
    /// sockets and timers).
    #[error("no Tokio runtime: call the Sotto client from within one (e.g. #[tokio::main])")]
    NoRuntime,
    /// QUIC connection setup failed.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The QUIC connection was lost or closed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to a QUIC stream failed.
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    /// TLS configuration failed.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// Exporting keying material for the auth binding failed.
    #[error("tls exporter unavailable")]
    Exporter,
    /// Local I/O (files, sockets, streams).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// I/O on a named file, directory or address.
    #[error("{at}: {source}")]
    IoAt {
        /// The path or socket address.
        at: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The durable store failed; nothing was accepted.
    #[error("storage: {0}")]
    Storage(String),
    /// Configuration could not be loaded or is inconsistent.
    #[error("config: {0}")]
    Config(String),
}

impl RelayError {
    /// The protocol code this error maps to when reported to a peer.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Remote { code, .. } => *code,
            Self::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::Truncated | Self::Malformed(_) | Self::UnexpectedReply => ErrorCode::Malformed,
            Self::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::Storage(_) => ErrorCode::Storage,
            _ => ErrorCode::Unspecified,
        }
    }

    /// A typed refusal to send to the peer.
    pub fn refusal(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::Remote {
            code,
            detail: detail.into(),
        }
    }

    /// The remote error code, when this is a relay refusal.
    pub fn remote_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Names the path or address of an I/O error.
#[cfg(feature = "server")]
pub(crate) fn io_at(at: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> RelayError {
    move |source| RelayError::IoAt {
        at: at.to_string(),
        source,
    }
}

impl From<quinn::ReadExactError> for RelayError {
    fn from(e: quinn::ReadExactError) -> Self {
        match e {
            quinn::ReadExactError::FinishedEarly(_) => Self::Truncated,
            quinn::ReadExactError::ReadError(e) => Self::Io(e.into()),
        }
    }
}

impl From<quinn::ReadError> for RelayError {
    fn from(e: quinn::ReadError) -> Self {
        Self::Io(e.into())
    }
}

impl From<quinn::ClosedStream> for RelayError {
    fn from(e: quinn::ClosedStream) -> Self {
        Self::Io(e.into())
    }
}

/// Result alias for this crate.
pub type Result<T, E = RelayError> = std::result::Result<T, E>;
