//! Length-delimited protobuf framing, independent of QUIC (sans-IO core plus
//! thin async helpers over any `AsyncRead`/`AsyncWrite`).
//!
//! A frame is a 4-byte big-endian length `n` followed by `n` bytes of a
//! protobuf `ClientFrame` or `ServerFrame`. The length is checked against a
//! limit *before* any allocation so a hostile prefix cannot exhaust memory.

use prost::Message;
use sotto_proto::relay::{client_frame, server_frame, ClientFrame, Error, ErrorCode, ServerFrame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{RelayError, Result};

/// The only protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// TLS ALPN identifier of the relay protocol.
pub const ALPN: &[u8] = b"sotto-relay/1";
/// Size of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Encodes one message as a length-prefixed frame.
pub fn encode<M: Message>(msg: &M) -> Vec<u8> {
    let len = msg.encoded_len();
    let mut out = Vec::with_capacity(LEN_PREFIX + len);
    // Frames are bounded far below 4 GiB by every limit in this crate.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    msg.encode_raw(&mut out);
    out
}

/// Parses a frame length prefix and checks it against `max`.
pub fn check_len(prefix: [u8; LEN_PREFIX], max: usize) -> Result<usize> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(RelayError::FrameTooLarge { len, max });
    }
    Ok(len)
}

/// Decodes a device frame body, checking the version and that a body is set.
pub fn decode_client(bytes: &[u8]) -> Result<(u64, client_frame::Body)> {
    let f = ClientFrame::decode(bytes).map_err(|_| RelayError::Malformed("not a ClientFrame"))?;
    if f.version != PROTOCOL_VERSION {
        return Err(RelayError::UnsupportedVersion(f.version));
    }
    let body = f.body.ok_or(RelayError::Malformed("frame has no body"))?;
    Ok((f.request_id, body))
}

/// The request id of a client frame that [`decode_client`] refused (wrong
/// version, no known body), so the error reply can echo it; 0 when the
/// bytes are not a `ClientFrame` at all.
pub fn request_id(bytes: &[u8]) -> u64 {
    ClientFrame::decode(bytes).map_or(0, |f| f.request_id)
}

/// Decodes a relay frame; a relay `Error` body becomes [`RelayError::Remote`].
pub fn decode_server(bytes: &[u8]) -> Result<(u64, server_frame::Body)> {
    let f = ServerFrame::decode(bytes).map_err(|_| RelayError::Malformed("not a ServerFrame"))?;
    if f.version != PROTOCOL_VERSION {
        return Err(RelayError::UnsupportedVersion(f.version));
    }
    match f.body {
        Some(server_frame::Body::Error(e)) => Err(remote_error(&e)),
        Some(b) => Ok((f.request_id, b)),
        None => Err(RelayError::Malformed("frame has no body")),
    }
}

/// Converts a wire `Error` to the typed error.
pub fn remote_error(e: &Error) -> RelayError {
    RelayError::Remote {
        code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
        detail: e.detail.clone(),
    }
}

/// Builds a device frame.
pub fn client_frame(request_id: u64, body: client_frame::Body) -> ClientFrame {
    ClientFrame {
        version: PROTOCOL_VERSION,
        request_id,
        body: Some(body),
    }
}

/// Builds a relay frame.
pub fn server_frame(request_id: u64, body: server_frame::Body) -> ServerFrame {
    ServerFrame {
        version: PROTOCOL_VERSION,
        request_id,
        body: Some(body),
    }
}

/// Builds a relay error frame.
pub fn error_frame(request_id: u64, code: ErrorCode, detail: &str) -> ServerFrame {
    server_frame(
        request_id,
        server_frame::Body::Error(Error {
            code: code as i32,
            detail: detail.to_owned(),
        }),
    )
}

/// The largest piece of a frame read (and allocated) at a time. Pieces start
/// at [`FIRST_CHUNK`] and double up to this as bytes keep arriving, so a
/// length prefix alone never makes a reader allocate the length it
/// announces, and a frame that stalls holds little.
pub const READ_CHUNK: usize = 64 * 1024;
/// The first piece of a frame's body read (and allocated).
pub const FIRST_CHUNK: usize = 4 * 1024;

/// Where a reader takes the memory for a frame's body from, chunk by chunk
/// (a budget may hold the reader back, or refuse).
pub trait Reserve {
    /// Called before `bytes` more of the body are taken in.
    fn reserve(&mut self, bytes: usize) -> impl std::future::Future<Output = Result<()>> + Send;
}

/// No budget: the frame limit alone bounds a frame.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unbounded;

impl Reserve for Unbounded {
    async fn reserve(&mut self, _bytes: usize) -> Result<()> {
        Ok(())
    }
}

/// Reads one frame. `Ok(None)` on a clean end of stream before any byte.
/// The buffer grows as bytes arrive, [`READ_CHUNK`] at a time.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>> {
    read_frame_with(r, max, &mut Unbounded).await
}

/// Like [`read_frame`], reserving each chunk of the body from `budget`
/// before taking it in.
pub async fn read_frame_with<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    budget: &mut impl Reserve,
) -> Result<Option<Vec<u8>>> {
    let mut prefix = [0u8; LEN_PREFIX];
    let mut got = 0;
    while got < LEN_PREFIX {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(RelayError::Truncated)
            };
        }
        got += n;
    }
    let len = check_len(prefix, max)?;
    let mut body = Vec::new();
    let mut piece = FIRST_CHUNK;
    while body.len() < len {
        let chunk = (len - body.len()).min(piece);
        budget.reserve(chunk).await?;
        body.reserve_exact(chunk);
        let end = body.len() + chunk;
        // Into spare capacity: nothing is written before it arrives.
        while body.len() < end {
            let mut limited = (&mut *r).take((end - body.len()) as u64);
            if limited.read_buf(&mut body).await? == 0 {
                return Err(RelayError::Truncated);
            }
        }
        piece = (piece * 2).min(READ_CHUNK);
    }
    Ok(Some(body))
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, M: Message>(w: &mut W, msg: &M) -> Result<()> {
    w.write_all(&encode(msg)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;
    use sotto_proto::relay::Fetch;

    #[tokio::test]
    async fn round_trip_and_clean_eof() {
        let f = client_frame(
            7,
            client_frame::Body::Fetch(Fetch {
                after: vec![],
                limit: 3,
            }),
        );
        let bytes = encode(&f);
        let mut r = &bytes[..];
        let body = read_frame(&mut r, 1024).await.unwrap().unwrap();
        let (id, b) = decode_client(&body).unwrap();
        assert_eq!(id, 7);
        assert!(matches!(
            b,
            client_frame::Body::Fetch(Fetch { limit: 3, .. })
        ));
        assert!(read_frame(&mut r, 1024).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversize_prefix_is_refused_before_allocation() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 1, 2];
        let mut r = &bytes[..];
        assert!(matches!(
            read_frame(&mut r, 1024).await,
            Err(RelayError::FrameTooLarge {
                len: 0xffff_ffff,
                max: 1024
            })
        ));
    }

    #[tokio::test]
    async fn truncated_prefix_and_body_are_errors() {
        let mut r = &[0u8, 0][..];
        assert!(matches!(
            read_frame(&mut r, 10).await,
            Err(RelayError::Truncated)
        ));
        let mut r = &[0u8, 0, 0, 5, 1][..];
        assert!(matches!(
            read_frame(&mut r, 10).await,
            Err(RelayError::Truncated)
        ));
    }

    #[test]
    fn version_and_body_are_checked() {
        let mut f = client_frame(1, client_frame::Body::Fetch(Fetch::default()));
        f.version = 2;
        let b = f.encode_to_vec();
        assert!(matches!(
            decode_client(&b),
            Err(RelayError::UnsupportedVersion(2))
        ));
        let empty = ClientFrame {
            version: 1,
            request_id: 1,
            body: None,
        }
        .encode_to_vec();
        assert!(matches!(
            decode_client(&empty),
            Err(RelayError::Malformed(_))
        ));
        let e = encode(&error_frame(4, ErrorCode::RateLimited, "slow down"));
        match decode_server(&e[4..]) {
            Err(RelayError::Remote {
                code: ErrorCode::RateLimited,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        /// Arbitrary bytes never panic the decoders.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_client(&bytes);
            let _ = decode_server(&bytes);
        }
    }
}
