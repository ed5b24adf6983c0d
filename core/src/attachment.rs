//! Streaming encryption of attachments (files sent alongside messages).
//!
//! A file is encrypted under a fresh random [`AttachmentKey`], the ciphertext
//! blob is uploaded to the relay as opaque bytes, and the message carries an
//! [`AttachmentPointer`] (key, SHA-256 digest of the blob, lengths). The
//! receiver downloads the blob, and [`decrypt`] checks and decrypts it.
//!
//! Files can be large, so everything streams over [`std::io::Read`] /
//! [`std::io::Write`] in 64 KiB chunks: memory use is one chunk buffer,
//! whatever the file size. The construction is the STREAM online AEAD of
//! Hoang, Reyhanitabar, Rogaway and Vizár (the `StreamBE32` flavour of the
//! RustCrypto `aead::stream` module) over ChaCha20-Poly1305: each chunk is
//! sealed under the nonce `prefix (7) || u32be(index) || last-flag (1)`, so
//! chunks cannot be reordered, dropped, duplicated, or the stream truncated or
//! extended without a tag failure; the last chunk's associated data also
//! carries the file length. The plaintext is padded with zeros to its Padmé
//! length so the relay learns only a size bucket, and the whole blob is pinned
//! by the SHA-256 digest in the pointer (a relay cannot swap blobs).
//!
//! Byte layouts, the key schedule and a test vector are in
//! `PROTOCOL.md` ("Attachments").

use core::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use hkdf::Hkdf;
use rand_core::{CryptoRngCore, OsRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};
use crate::keys::Hex;

/// Format version, the first byte of every blob and of every encoded pointer.
pub const VERSION: u8 = 1;
/// Length of the random nonce prefix in the blob header.
pub const NONCE_PREFIX_LEN: usize = 7;
/// Blob header: `VERSION || nonce prefix`.
pub const HEADER_LEN: usize = 1 + NONCE_PREFIX_LEN;
/// Plaintext bytes per chunk (every chunk but the last is exactly this long).
pub const CHUNK_LEN: usize = 64 * 1024;
/// Poly1305 tag appended to every chunk.
pub const TAG_LEN: usize = 16;
/// Largest plaintext accepted (1 TiB): far below the 2^32-chunk limit of the
/// nonce counter, and small enough that no length computation can overflow.
pub const MAX_PLAINTEXT_LEN: u64 = 1 << 40;
/// Length of [`AttachmentPointer::to_bytes`].
pub const POINTER_LEN: usize = 1 + 32 + 32 + 8 + 8;

/// HKDF info for the chunk AEAD key (salt = the blob header).
const CHUNK_KEY_INFO: &[u8] = b"Sotto_v1_Attachment_ChunkKey";

/// The 32-byte secret an attachment is encrypted under; fresh for every file.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct AttachmentKey([u8; 32]);

impl AttachmentKey {
    /// A fresh random key.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut key = AttachmentKey([0u8; 32]);
        rng.fill_bytes(&mut key.0);
        key
    }

    /// Wraps raw bytes (a received pointer, test vectors).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        AttachmentKey(bytes)
    }

    /// The raw bytes (to persist or send the pointer).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for AttachmentKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for AttachmentKey {}

impl fmt::Debug for AttachmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AttachmentKey(<redacted>)")
    }
}

/// Everything a receiver needs to fetch-verify-decrypt one attachment; sent
/// inside an end-to-end encrypted message (the relay never sees it). The
/// client adds the relay's blob id next to it.
#[derive(Clone, PartialEq, Eq)]
pub struct AttachmentPointer {
    /// The attachment's secret key.
    pub key: AttachmentKey,
    /// SHA-256 of the whole ciphertext blob exactly as uploaded.
    pub digest: [u8; 32],
    /// Length of the file (before padding).
    pub plaintext_len: u64,
    /// Length of the blob: always [`ciphertext_len`]`(plaintext_len)`.
    pub ciphertext_len: u64,
}

impl fmt::Debug for AttachmentPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachmentPointer")
            .field("key", &self.key)
            .field("digest", &Hex(&self.digest))
            .field("plaintext_len", &self.plaintext_len)
            .field("ciphertext_len", &self.ciphertext_len)
            .finish()
    }
}

impl AttachmentPointer {
    /// Canonical fixed layout: `VERSION (1) || key (32) || digest (32) ||
    /// u64be(plaintext_len) || u64be(ciphertext_len)`, [`POINTER_LEN`] bytes.
    /// Holds the key, so it is zeroized on drop.
    pub fn to_bytes(&self) -> Zeroizing<[u8; POINTER_LEN]> {
        let mut out = Zeroizing::new([0u8; POINTER_LEN]);
        out[0] = VERSION;
        out[1..33].copy_from_slice(&self.key.0);
        out[33..65].copy_from_slice(&self.digest);
        out[65..73].copy_from_slice(&self.plaintext_len.to_be_bytes());
        out[73..81].copy_from_slice(&self.ciphertext_len.to_be_bytes());
        out
    }

    /// Parses [`Self::to_bytes`]; rejects any other length, an unknown version,
    /// a size above [`MAX_PLAINTEXT_LEN`] or inconsistent lengths.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let malformed = Error::Malformed {
            what: "attachment pointer",
        };
        if bytes.len() != POINTER_LEN {
            return Err(malformed);
        }
        if bytes[0] != VERSION {
            return Err(Error::UnsupportedVersion(bytes[0]));
        }
        let mut key = AttachmentKey([0u8; 32]);
        key.0.copy_from_slice(&bytes[1..33]);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&bytes[33..65]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[65..73]);
        let plaintext_len = u64::from_be_bytes(len);
        len.copy_from_slice(&bytes[73..81]);
        let ciphertext_len = u64::from_be_bytes(len);
        let pointer = AttachmentPointer {
            key,
            digest,
            plaintext_len,
            ciphertext_len,
        };
        pointer.check_lengths().map_err(|_| malformed)?;
        Ok(pointer)
    }

    /// The lengths a decryptor trusts to parse the blob must be self-consistent.
    fn check_lengths(&self) -> Result<()> {
        if self.plaintext_len > MAX_PLAINTEXT_LEN {
            return Err(Error::AttachmentTooLarge);
        }
        if self.ciphertext_len != ciphertext_len(self.plaintext_len) {
            return Err(Error::AttachmentCorrupt("pointer lengths are inconsistent"));
        }
        Ok(())
    }
}

/// The Padmé length a plaintext of `plaintext_len` bytes is padded to before
/// encryption (at most ~12% larger; reveals O(log log n) bits of the size).
/// Same rule as [`crate::padding`], on `u64` and without a minimum.
pub fn padded_len(plaintext_len: u64) -> u64 {
    if plaintext_len > MAX_PLAINTEXT_LEN {
        return u64::MAX;
    }
    let l = plaintext_len;
    if l < 2 {
        return l;
    }
    let e = u64::BITS - 1 - l.leading_zeros(); // floor(log2 L)
    let s = u32::BITS - e.leading_zeros(); // floor(log2 E) + 1
    let mask = (1u64 << e.saturating_sub(s)) - 1;
    (l + mask) & !mask
}

/// Number of chunks for a padded length: at least one (an empty file is one
/// empty final chunk).
fn chunk_count(padded: u64) -> u64 {
    padded.div_ceil(CHUNK_LEN as u64).max(1)
}

/// The exact blob length for a file of `plaintext_len` bytes, so an upload
/// can announce its length before encrypting. Saturates to `u64::MAX` above
/// [`MAX_PLAINTEXT_LEN`] (such files cannot be encrypted).
pub fn ciphertext_len(plaintext_len: u64) -> u64 {
    if plaintext_len > MAX_PLAINTEXT_LEN {
        return u64::MAX;
    }
    let padded = padded_len(plaintext_len);
    HEADER_LEN as u64 + padded + TAG_LEN as u64 * chunk_count(padded)
}

/// The per-blob ChaCha20-Poly1305 instance and the STREAM nonce schedule.
struct ChunkCipher {
    aead: ChaCha20Poly1305,
    header: [u8; HEADER_LEN],
}

impl ChunkCipher {
    /// `AEAD key = HKDF-SHA256(salt = header, ikm = key, info)`: a key reused by
    /// mistake still gives unrelated chunk keys under a new nonce prefix.
    fn new(key: &AttachmentKey, header: [u8; HEADER_LEN]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(&header), &key.0);
        let mut okm = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit: cannot fail.
        let _ = hk.expand(CHUNK_KEY_INFO, &mut okm[..]);
        let aead = ChaCha20Poly1305::new(Key::from_slice(&okm[..]));
        ChunkCipher { aead, header }
    }

    /// `prefix (7) || u32be(index) || last (0x00 or 0x01)`, as `aead::stream::StreamBE32`.
    fn nonce(&self, index: u32, last: bool) -> Nonce {
        let mut nonce = Nonce::default();
        nonce[..NONCE_PREFIX_LEN].copy_from_slice(&self.header[1..]);
        nonce[NONCE_PREFIX_LEN..NONCE_PREFIX_LEN + 4].copy_from_slice(&index.to_be_bytes());
        nonce[NONCE_PREFIX_LEN + 4] = u8::from(last);
        nonce
    }

    /// Associated data: the header, and for the last chunk also
    /// `u64be(plaintext_len)`, so a blob decrypts to exactly one file length.
    fn ad(&self, last: Option<u64>) -> ([u8; HEADER_LEN + 8], usize) {
        let mut ad = [0u8; HEADER_LEN + 8];
        ad[..HEADER_LEN].copy_from_slice(&self.header);
        match last {
            Some(len) => {
                ad[HEADER_LEN..].copy_from_slice(&len.to_be_bytes());
                (ad, HEADER_LEN + 8)
            }
            None => (ad, HEADER_LEN),
        }
    }

    /// Encrypts chunk `index` in place; `last` is `Some(plaintext_len)` for
    /// the final chunk.
    fn seal(&self, index: u32, last: Option<u64>, buf: &mut [u8]) -> Result<Tag> {
        let (ad, ad_len) = self.ad(last);
        self.aead
            .encrypt_in_place_detached(&self.nonce(index, last.is_some()), &ad[..ad_len], buf)
            .map_err(|_| Error::AttachmentTooLarge)
    }

    fn open(&self, index: u32, last: Option<u64>, buf: &mut [u8], tag: &[u8]) -> Result<()> {
        let (ad, ad_len) = self.ad(last);
        self.aead
            .decrypt_in_place_detached(
                &self.nonce(index, last.is_some()),
                &ad[..ad_len],
                buf,
                Tag::from_slice(tag),
            )
            .map_err(|_| Error::AttachmentCorrupt("chunk authentication failed"))
    }
}

/// Encrypts everything `src` yields into `dst` under a fresh key and nonce
/// prefix, one 64 KiB chunk at a time, and returns the pointer to send.
///
/// `src` is read to its end. `dst` receives exactly
/// [`ciphertext_len`]`(plaintext_len)` bytes (check that against the relay's
/// blob limit before encrypting); upload them as they are. On error `dst`
/// holds a useless prefix: discard it.
pub fn encrypt(
    src: impl Read,
    dst: impl Write,
    rng: &mut impl CryptoRngCore,
) -> Result<AttachmentPointer> {
    let key = AttachmentKey::generate(rng);
    let mut prefix = [0u8; NONCE_PREFIX_LEN];
    rng.fill_bytes(&mut prefix);
    encrypt_with(key, prefix, src, dst)
}

/// [`encrypt`] with a caller-chosen key and nonce prefix, for known-answer
/// tests only. Never reuse a (key, prefix) pair: use [`encrypt`].
#[doc(hidden)]
pub fn encrypt_with(
    key: AttachmentKey,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    src: impl Read,
    mut dst: impl Write,
) -> Result<AttachmentPointer> {
    let mut header = [0u8; HEADER_LEN];
    header[0] = VERSION;
    header[1..].copy_from_slice(&nonce_prefix);
    let cipher = ChunkCipher::new(&key, header);
    let mut hasher = Sha256::new();
    let mut written = HEADER_LEN as u64;
    dst.write_all(&header).map_err(Error::AttachmentIo)?;
    hasher.update(header);

    let mut src = PaddedSource::new(src);
    // One chunk, one byte of look-ahead (to know whether this chunk is the
    // last without an empty trailing chunk), room for the tag.
    let mut buf = Zeroizing::new(vec![0u8; CHUNK_LEN + TAG_LEN]);
    let mut have = 0usize;
    let mut index: u32 = 0;
    loop {
        have += read_full(&mut src, &mut buf[have..=CHUNK_LEN])?;
        if src.data_len > MAX_PLAINTEXT_LEN {
            return Err(Error::AttachmentTooLarge);
        }
        let last = have <= CHUNK_LEN;
        let len = have.min(CHUNK_LEN);
        let carry = buf[CHUNK_LEN];
        // A last chunk means the source reported EOF: its length is final.
        let tag = cipher.seal(index, last.then_some(src.data_len), &mut buf[..len])?;
        buf[len..len + TAG_LEN].copy_from_slice(&tag);
        let sealed = &buf[..len + TAG_LEN];
        dst.write_all(sealed).map_err(Error::AttachmentIo)?;
        hasher.update(sealed);
        written += sealed.len() as u64;
        if last {
            break;
        }
        buf[0] = carry;
        have = 1;
        index = index.checked_add(1).ok_or(Error::AttachmentTooLarge)?;
    }
    dst.flush().map_err(Error::AttachmentIo)?;

    let plaintext_len = src.data_len;
    if written != ciphertext_len(plaintext_len) {
        // Unreachable by construction; refuse rather than send a pointer the
        // receiver would reject.
        return Err(Error::AttachmentCorrupt("encryptor length mismatch"));
    }
    Ok(AttachmentPointer {
        key,
        digest: hasher.finalize().into(),
        plaintext_len,
        ciphertext_len: written,
    })
}

/// Streams `src` (the downloaded blob) through verification and decryption
/// into `dst`; returns the number of plaintext bytes written
/// (`pointer.plaintext_len`).
///
/// Checks, in stream order: the pointer's lengths, the header version, every
/// chunk's tag under its index and last-chunk flag (the last one also under
/// the file length), that the blob ends
/// exactly where `ciphertext_len` says (no truncation, no extension), the
/// SHA-256 digest of the whole blob, and that the padding is all zeros.
///
/// **`dst` may already hold plaintext of earlier chunks when an error is
/// returned**: each chunk is authenticated on its own and the digest is only
/// known at the end (the final chunk is held back until the digest matched).
/// Write to a temporary file and keep it only on `Ok`, which
/// [`decrypt_to_path`] does for you.
pub fn decrypt(
    mut src: impl Read,
    mut dst: impl Write,
    pointer: &AttachmentPointer,
) -> Result<u64> {
    pointer.check_lengths()?;
    let padded = padded_len(pointer.plaintext_len);
    let chunks = chunk_count(padded);
    let mut hasher = Sha256::new();

    let mut header = [0u8; HEADER_LEN];
    read_exact_blob(&mut src, &mut header)?;
    hasher.update(header);
    if header[0] != VERSION {
        return Err(Error::AttachmentCorrupt("unknown blob version"));
    }
    let cipher = ChunkCipher::new(&pointer.key, header);

    let mut buf = Zeroizing::new(vec![0u8; CHUNK_LEN + TAG_LEN]);
    let mut data_left = pointer.plaintext_len;
    let mut padded_left = padded;
    for index in 0..chunks {
        let last = index + 1 == chunks;
        // In range by `check_lengths`: at most `CHUNK_LEN`, and index < 2^32.
        let len = padded_left.min(CHUNK_LEN as u64) as usize;
        let index = u32::try_from(index).map_err(|_| Error::AttachmentTooLarge)?;
        let sealed = &mut buf[..len + TAG_LEN];
        read_exact_blob(&mut src, sealed)?;
        hasher.update(&*sealed);
        if last {
            let mut probe = [0u8; 1];
            if read_full(&mut src, &mut probe)? != 0 {
                return Err(Error::AttachmentCorrupt(
                    "trailing data after the last chunk",
                ));
            }
            let digest: [u8; 32] = hasher.clone().finalize().into();
            if !bool::from(digest.ct_eq(&pointer.digest)) {
                return Err(Error::AttachmentDigestMismatch);
            }
        }
        let (body, tag) = sealed.split_at_mut(len);
        cipher.open(index, last.then_some(pointer.plaintext_len), body, tag)?;
        let data = data_left.min(len as u64) as usize;
        if body[data..].iter().any(|b| *b != 0) {
            return Err(Error::AttachmentCorrupt("nonzero padding"));
        }
        dst.write_all(&body[..data]).map_err(Error::AttachmentIo)?;
        data_left -= data as u64;
        padded_left -= len as u64;
    }
    dst.flush().map_err(Error::AttachmentIo)?;
    Ok(pointer.plaintext_len)
}

/// [`decrypt`] into a file at `dest`, which exists afterwards only if the
/// whole attachment verified: the plaintext goes to a temporary file in the
/// same directory (mode 0600 on Unix), which is fsynced and atomically
/// renamed onto `dest` (replacing any file there) on success, and removed on
/// any failure. The final directory fsync is best effort.
pub fn decrypt_to_path(src: impl Read, dest: &Path, pointer: &AttachmentPointer) -> Result<u64> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if dest.file_name().is_none() {
        return Err(Error::AttachmentIo(io::Error::new(
            io::ErrorKind::InvalidInput,
            "attachment destination has no file name",
        )));
    }
    let (mut file, temp) = create_temp(dir)?;
    let n = decrypt(src, &mut file, pointer)?;
    file.sync_all().map_err(Error::AttachmentIo)?;
    drop(file);
    fs::rename(temp.path(), dest).map_err(Error::AttachmentIo)?;
    temp.disarm();
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(n)
}

/// Removes the temporary file on drop (error or panic) unless disarmed.
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// A new, exclusively created `.sotto-attachment-<random>.part` in `dir`.
fn create_temp(dir: &Path) -> Result<(File, TempFile)> {
    let mut last_err = None;
    for _ in 0..8 {
        let mut rnd = [0u8; 8];
        OsRng
            .try_fill_bytes(&mut rnd)
            .map_err(|_| Error::AttachmentIo(io::Error::other("OS random source failed")))?;
        let path = dir.join(format!(
            ".sotto-attachment-{:016x}.part",
            u64::from_be_bytes(rnd)
        ));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&path) {
            Ok(file) => return Ok((file, TempFile(Some(path)))),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(Error::AttachmentIo(e)),
        }
    }
    Err(Error::AttachmentIo(last_err.unwrap_or_else(|| {
        io::Error::other("could not create a temporary attachment file")
    })))
}

/// Yields the source, then the Padmé zeros once the source is exhausted.
struct PaddedSource<R> {
    inner: R,
    /// Bytes the source produced so far.
    data_len: u64,
    /// Padding zeros still to yield, once the source hit EOF.
    zeros_left: Option<u64>,
}

impl<R: Read> PaddedSource<R> {
    fn new(inner: R) -> Self {
        PaddedSource {
            inner,
            data_len: 0,
            zeros_left: None,
        }
    }
}

impl<R: Read> Read for PaddedSource<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let zeros = match self.zeros_left {
            Some(z) => z,
            None => {
                let n = self.inner.read(buf)?;
                if n > 0 {
                    self.data_len += n as u64;
                    return Ok(n);
                }
                // Above the maximum `padded_len` saturates: yield no zeros
                // (the encryptor fails with `AttachmentTooLarge` anyway).
                let z = match self.data_len {
                    n if n > MAX_PLAINTEXT_LEN => 0,
                    n => padded_len(n) - n,
                };
                self.zeros_left = Some(z);
                z
            }
        };
        let n = zeros.min(buf.len() as u64) as usize;
        buf[..n].fill(0);
        self.zeros_left = Some(zeros - n as u64);
        Ok(n)
    }
}

/// Reads until `buf` is full or EOF; returns how many bytes were read.
fn read_full(src: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::AttachmentIo(e)),
        }
    }
    Ok(filled)
}

/// Fills `buf` from the blob; a short blob is corrupt (truncated), not an I/O error.
fn read_exact_blob(src: &mut impl Read, buf: &mut [u8]) -> Result<()> {
    if read_full(src, buf)? != buf.len() {
        return Err(Error::AttachmentCorrupt("truncated blob"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn padme_matches_the_message_padding_rule() {
        // crate::padding frames `len + 1` with a 64-byte minimum; on the same
        // input the two Padmé implementations must agree.
        for l in 64u64..5000 {
            let framed = crate::padding::padded_len(l as usize - 1, crate::Padding::Padme);
            assert_eq!(padded_len(l), framed as u64, "l = {l}");
        }
        assert_eq!(padded_len(0), 0);
        assert_eq!(padded_len(1), 1);
        assert!(padded_len(MAX_PLAINTEXT_LEN) >= MAX_PLAINTEXT_LEN);
    }

    #[test]
    fn padme_overhead_is_bounded() {
        let mut l = 1u64;
        while l <= MAX_PLAINTEXT_LEN {
            for d in [0, 1, 7, 1000] {
                let n = l + d;
                let p = padded_len(n);
                assert!(p >= n && p - n <= n / 8 + 1, "n = {n}, p = {p}");
            }
            l *= 3;
        }
    }

    #[test]
    fn lengths_at_the_limits() {
        assert_eq!(ciphertext_len(0), (HEADER_LEN + TAG_LEN) as u64);
        let max = ciphertext_len(MAX_PLAINTEXT_LEN);
        assert_eq!(max, 8 + (1 << 40) + 16 * (1 << 24));
        assert_eq!(ciphertext_len(MAX_PLAINTEXT_LEN + 1), u64::MAX);
        assert_eq!(ciphertext_len(u64::MAX), u64::MAX);
        let mut prev = 0;
        for n in (0..3 * CHUNK_LEN as u64).step_by(97) {
            let c = ciphertext_len(n);
            assert!(c >= prev && c > n);
            prev = c;
        }
    }

    #[test]
    fn nonce_layout_is_stream_be32() {
        let mut header = [0u8; HEADER_LEN];
        header[0] = VERSION;
        header[1..].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7]);
        let c = ChunkCipher::new(&AttachmentKey::from_bytes([9; 32]), header);
        assert_eq!(
            c.nonce(0x0102_0304, true).as_slice(),
            &[1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 1]
        );
        assert_eq!(
            c.nonce(0, false).as_slice(),
            &[1, 2, 3, 4, 5, 6, 7, 0, 0, 0, 0, 0]
        );
    }
}
