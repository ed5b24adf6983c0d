//! Attachment encryption end to end: round trips at every chunk edge, a
//! 50 MiB file streamed through without ever being in memory, every kind of
//! blob tampering a relay could try (bit flips, truncation, extension,
//! reordering, swapping in another valid blob), secret hygiene, the
//! temp-file-and-rename helper, and the known-answer vector printed in the spec.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::rc::Rc;

use proptest::prelude::*;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_core::OsRng;
use sha2::{Digest, Sha256};
use sotto_core::attachment::{
    self, ciphertext_len, decrypt, decrypt_to_path, encrypt, encrypt_with, padded_len, CHUNK_LEN,
    HEADER_LEN, POINTER_LEN, TAG_LEN,
};
use sotto_core::{AttachmentKey, AttachmentPointer, Error};

const MIB: usize = 1024 * 1024;
/// Size of one sealed chunk in the blob.
const SEALED: usize = CHUNK_LEN + TAG_LEN;

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    ChaCha20Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn enc(plaintext: &[u8]) -> (Vec<u8>, AttachmentPointer) {
    let mut blob = Vec::new();
    let ptr = encrypt(plaintext, &mut blob, &mut OsRng).unwrap();
    (blob, ptr)
}

fn dec(blob: &[u8], ptr: &AttachmentPointer) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    decrypt(blob, &mut out, ptr).map(|n| {
        assert_eq!(n, out.len() as u64);
        out
    })
}

fn is_rejection(r: &Result<Vec<u8>, Error>) -> bool {
    matches!(
        r,
        Err(Error::AttachmentCorrupt(_)) | Err(Error::AttachmentDigestMismatch)
    )
}

#[test]
fn round_trips_at_every_chunk_edge() {
    let sizes = [
        0,
        1,
        2,
        100,
        CHUNK_LEN - 1,
        CHUNK_LEN,
        CHUNK_LEN + 1,
        2 * CHUNK_LEN,
        3 * MIB + 17,
    ];
    for (i, &len) in sizes.iter().enumerate() {
        let pt = data(len, i as u64);
        let (blob, ptr) = enc(&pt);
        assert_eq!(ptr.plaintext_len, len as u64);
        assert_eq!(ptr.ciphertext_len, blob.len() as u64, "len {len}");
        assert_eq!(ciphertext_len(len as u64), blob.len() as u64, "len {len}");
        assert_eq!(ptr.digest, <[u8; 32]>::from(Sha256::digest(&blob)));
        assert!(padded_len(len as u64) >= len as u64);
        assert_eq!(dec(&blob, &ptr).unwrap(), pt, "len {len}");
    }
}

#[test]
fn blob_layout_is_header_then_sealed_chunks() {
    // 64 KiB is its own Padmé bucket: exactly one full chunk, no padding.
    let (blob, _) = enc(&data(CHUNK_LEN, 1));
    assert_eq!(blob.len(), HEADER_LEN + SEALED);
    assert_eq!(blob[0], attachment::VERSION);
    // An empty file is one empty, final chunk: just a tag.
    let (blob, _) = enc(b"");
    assert_eq!(blob.len(), HEADER_LEN + TAG_LEN);
    // A size between buckets is padded up, and the padding is hidden.
    let n = 1_000_001u64;
    assert!(padded_len(n) > n);
    let (blob, ptr) = enc(&data(n as usize, 2));
    assert_eq!(blob.len() as u64, ciphertext_len(n));
    assert_eq!(dec(&blob, &ptr).unwrap().len() as u64, n);
}

#[test]
fn two_encryptions_of_one_file_share_nothing() {
    let pt = data(1000, 3);
    let (a, pa) = enc(&pt);
    let (b, pb) = enc(&pt);
    assert_ne!(pa.key, pb.key);
    assert_ne!(a[1..HEADER_LEN], b[1..HEADER_LEN]);
    assert_ne!(a, b);
    assert_ne!(pa.digest, pb.digest);
}

/// Deterministic bytes that are never stored: SHA-256 of what was produced.
struct Generator {
    left: u64,
    state: u64,
    hash: Sha256,
    produced: Rc<Cell<u64>>,
    largest_read: usize,
}

impl Read for Generator {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.largest_read = self.largest_read.max(buf.len());
        // Odd read sizes exercise the encryptor's chunk reassembly.
        let n = (buf.len() as u64).min(self.left).min(40_000) as usize;
        for b in &mut buf[..n] {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            *b = self.state as u8;
        }
        self.hash.update(&buf[..n]);
        self.left -= n as u64;
        self.produced.set(self.produced.get() + n as u64);
        Ok(n)
    }
}

/// Hashes what is written; records the largest write and how much of the
/// input had been consumed when the first write arrived.
struct HashingSink {
    hash: Sha256,
    len: u64,
    largest_write: usize,
    input_at_first_write: Option<u64>,
    input: Rc<Cell<u64>>,
}

impl HashingSink {
    fn new(input: Rc<Cell<u64>>) -> Self {
        HashingSink {
            hash: Sha256::new(),
            len: 0,
            largest_write: 0,
            input_at_first_write: None,
            input,
        }
    }
}

impl Write for HashingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() && self.input_at_first_write.is_none() {
            self.input_at_first_write = Some(self.input.get());
        }
        self.largest_write = self.largest_write.max(buf.len());
        self.hash.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Counts bytes read through it.
struct CountingReader<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// 50 MiB from a generator, through a ciphertext file on disk, into a hashing
/// sink: no buffer ever holds more than one chunk, and output starts after
/// the first chunks of input, long before the input ends.
#[test]
fn fifty_mib_streams_with_bounded_buffers() {
    const LEN: u64 = 50 * MIB as u64;
    let dir = tempfile::tempdir().unwrap();
    let blob_path = dir.path().join("blob");

    let produced = Rc::new(Cell::new(0));
    let mut gen = Generator {
        left: LEN,
        state: 0x9E37_79B9_7F4A_7C15,
        hash: Sha256::new(),
        produced: produced.clone(),
        largest_read: 0,
    };
    let mut blob_sink = HashingSink::new(produced.clone());
    let ptr = {
        let file = std::fs::File::create(&blob_path).unwrap();
        let mut tee = TeeWriter(file, &mut blob_sink);
        encrypt(&mut gen, &mut tee, &mut OsRng).unwrap()
    };
    let plaintext_hash = gen.hash.finalize();
    assert_eq!(ptr.plaintext_len, LEN);
    assert_eq!(blob_sink.len, ptr.ciphertext_len);
    assert_eq!(<[u8; 32]>::from(blob_sink.hash.finalize()), ptr.digest);
    assert!(
        gen.largest_read <= CHUNK_LEN + 1,
        "read {}",
        gen.largest_read
    );
    assert!(
        blob_sink.largest_write <= SEALED,
        "wrote {}",
        blob_sink.largest_write
    );
    let first = blob_sink.input_at_first_write.unwrap();
    assert!(
        first <= 2 * CHUNK_LEN as u64,
        "first write after {first} bytes"
    );

    let consumed = Rc::new(Cell::new(0));
    let reader = CountingReader {
        inner: std::fs::File::open(&blob_path).unwrap(),
        count: consumed.clone(),
    };
    let mut out = HashingSink::new(consumed.clone());
    assert_eq!(decrypt(reader, &mut out, &ptr).unwrap(), LEN);
    assert_eq!(out.len, LEN);
    assert_eq!(out.hash.finalize(), plaintext_hash);
    assert!(out.largest_write <= CHUNK_LEN);
    let first = out.input_at_first_write.unwrap();
    assert!(
        first <= 2 * SEALED as u64,
        "first plaintext after {first} bytes"
    );
}

struct TeeWriter<'a>(std::fs::File, &'a mut HashingSink);

impl Write for TeeWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        self.1.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[test]
fn any_tampered_byte_is_rejected() {
    // Three full chunks and a partial fourth (padded).
    let pt = data(3 * CHUNK_LEN + 5000, 4);
    let (blob, ptr) = enc(&pt);
    let last_start = HEADER_LEN + 3 * SEALED;
    let mut positions = vec![
        0,                      // version
        1,                      // nonce prefix
        HEADER_LEN - 1,         // nonce prefix
        HEADER_LEN,             // first body byte
        HEADER_LEN + 30_000,    // mid body
        HEADER_LEN + CHUNK_LEN, // first tag byte
        HEADER_LEN + SEALED - 1,
        HEADER_LEN + SEALED + 7, // second chunk
        HEADER_LEN + 2 * SEALED + CHUNK_LEN + 3,
        last_start,
        last_start + 4000,
        blob.len() - TAG_LEN,
        blob.len() - 1,
    ];
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    positions.extend((0..20).map(|_| rng.next_u64() as usize % blob.len()));
    for pos in positions {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = blob.clone();
            bad[pos] ^= flip;
            let r = dec(&bad, &ptr);
            assert!(is_rejection(&r), "byte {pos} ^ {flip:#x}: {r:?}");
        }
    }
    assert_eq!(dec(&blob, &ptr).unwrap(), pt);
}

#[test]
fn final_chunk_is_withheld_until_the_digest_matches() {
    // A single-chunk attachment: a tampered blob yields no plaintext at all.
    let (mut blob, ptr) = enc(&data(5000, 6));
    let n = blob.len();
    blob[n - 100] ^= 1;
    let mut out = Vec::new();
    assert!(matches!(
        decrypt(&blob[..], &mut out, &ptr),
        Err(Error::AttachmentDigestMismatch)
    ));
    assert!(out.is_empty());

    // Multi-chunk: a bad final chunk leaves only the earlier chunks written.
    let (mut blob, ptr) = enc(&data(2 * CHUNK_LEN + 10, 7));
    let n = blob.len();
    blob[n - 1] ^= 1;
    let mut out = Vec::new();
    assert!(decrypt(&blob[..], &mut out, &ptr).is_err());
    assert_eq!(out.len(), 2 * CHUNK_LEN);
}

#[test]
fn truncation_at_a_chunk_boundary_is_rejected() {
    let pt = data(3 * CHUNK_LEN, 8);
    let (blob, ptr) = enc(&pt);
    for chunks in 0..3 {
        let cut = &blob[..HEADER_LEN + chunks * SEALED];
        assert!(matches!(
            dec(cut, &ptr),
            Err(Error::AttachmentCorrupt("truncated blob"))
        ));
    }
    assert!(matches!(
        dec(&blob[..blob.len() - 1], &ptr),
        Err(Error::AttachmentCorrupt("truncated blob"))
    ));

    // Even with a pointer forged to match the truncated blob (lengths and
    // digest), the last chunk was sealed as "not last": the flag catches it.
    let cut = &blob[..HEADER_LEN + SEALED];
    let forged = AttachmentPointer {
        key: ptr.key.clone(),
        digest: Sha256::digest(cut).into(),
        plaintext_len: CHUNK_LEN as u64,
        ciphertext_len: cut.len() as u64,
    };
    assert!(matches!(
        dec(cut, &forged),
        Err(Error::AttachmentCorrupt("chunk authentication failed"))
    ));
}

#[test]
fn the_blob_binds_the_exact_file_length() {
    // 1000 and 1010 share the Padmé bucket 1024, so the blob length and the
    // digest would fit both; the last chunk's AD carries the true length.
    assert_eq!(padded_len(1000), padded_len(1010));
    let mut pt = data(1000, 17);
    let (blob, ptr) = enc(&pt);
    let longer = AttachmentPointer {
        plaintext_len: 1010,
        ..ptr.clone()
    };
    assert_eq!(longer.ciphertext_len, ciphertext_len(1010));
    assert!(matches!(
        dec(&blob, &longer),
        Err(Error::AttachmentCorrupt("chunk authentication failed"))
    ));
    // Conversely a file ending in zeros cannot be shortened into its padding.
    pt.extend_from_slice(&[0; 10]);
    let (blob, ptr) = enc(&pt);
    let shorter = AttachmentPointer {
        plaintext_len: 1000,
        ..ptr
    };
    assert!(matches!(
        dec(&blob, &shorter),
        Err(Error::AttachmentCorrupt("chunk authentication failed"))
    ));
}

#[test]
fn appended_bytes_are_rejected() {
    for len in [0, 10, CHUNK_LEN, 2 * CHUNK_LEN + 1] {
        let (blob, ptr) = enc(&data(len, 9));
        for extra in [&[0u8][..], &[1, 2, 3], &blob[HEADER_LEN..]] {
            let mut long = blob.clone();
            long.extend_from_slice(extra);
            assert!(
                matches!(
                    dec(&long, &ptr),
                    Err(Error::AttachmentCorrupt(
                        "trailing data after the last chunk"
                    ))
                ),
                "len {len}"
            );
        }
    }
}

#[test]
fn swapped_or_duplicated_chunks_are_rejected() {
    let (blob, ptr) = enc(&data(4 * CHUNK_LEN, 10));
    let chunk = |i: usize| HEADER_LEN + i * SEALED..HEADER_LEN + (i + 1) * SEALED;
    let mut swapped = blob.clone();
    swapped[chunk(0)].copy_from_slice(&blob[chunk(1)]);
    swapped[chunk(1)].copy_from_slice(&blob[chunk(0)]);
    assert!(matches!(
        dec(&swapped, &ptr),
        Err(Error::AttachmentCorrupt("chunk authentication failed"))
    ));
    let mut duplicated = blob.clone();
    duplicated[chunk(2)].copy_from_slice(&blob[chunk(1)]);
    assert!(is_rejection(&dec(&duplicated, &ptr)));
}

#[test]
fn wrong_key_is_rejected() {
    for len in [0, 100, 3 * CHUNK_LEN] {
        let (blob, ptr) = enc(&data(len, 11));
        let wrong = AttachmentPointer {
            key: AttachmentKey::generate(&mut OsRng),
            ..ptr.clone()
        };
        assert!(is_rejection(&dec(&blob, &wrong)), "len {len}");
    }
}

#[test]
fn a_valid_blob_under_the_same_key_fails_the_digest() {
    // The relay swaps in another blob that is a perfectly valid encryption
    // under the pointer's key: only the digest can tell.
    let key = AttachmentKey::from_bytes([7; 32]);
    let pt = data(2 * CHUNK_LEN + 1, 12);
    let mut a = Vec::new();
    let pa = encrypt_with(key.clone(), [1; 7], &pt[..], &mut a).unwrap();
    let mut b = Vec::new();
    let pb = encrypt_with(key, [2; 7], &pt[..], &mut b).unwrap();
    assert_ne!(a, b);
    assert_eq!(dec(&b, &pb).unwrap(), pt);
    assert!(matches!(dec(&b, &pa), Err(Error::AttachmentDigestMismatch)));

    // A pointer from another encryption entirely is rejected too.
    let (_, other) = enc(&pt);
    assert!(is_rejection(&dec(&a, &other)));
}

#[test]
fn inconsistent_pointer_is_rejected_before_reading() {
    let (blob, ptr) = enc(&data(1000, 13));
    let bad = AttachmentPointer {
        ciphertext_len: ptr.ciphertext_len + 1,
        ..ptr.clone()
    };
    assert!(matches!(
        dec(&blob, &bad),
        Err(Error::AttachmentCorrupt("pointer lengths are inconsistent"))
    ));
    let huge = AttachmentPointer {
        plaintext_len: attachment::MAX_PLAINTEXT_LEN + 1,
        ciphertext_len: u64::MAX,
        ..ptr
    };
    assert!(matches!(dec(&blob, &huge), Err(Error::AttachmentTooLarge)));
}

#[test]
fn debug_never_shows_the_key() {
    let key = AttachmentKey::from_bytes([0xAB; 32]);
    let mut blob = Vec::new();
    let ptr = encrypt_with(key.clone(), [0; 7], &b"secret"[..], &mut blob).unwrap();
    for s in [format!("{key:?}"), format!("{ptr:?}"), format!("{ptr:#?}")] {
        assert!(s.contains("redacted"), "{s}");
        assert!(!s.to_lowercase().contains("abab"), "{s}");
        assert!(!s.contains("171"), "{s}");
    }
    // The public digest is shown, to help debugging.
    assert!(format!("{ptr:?}").contains(&hex::encode(ptr.digest)));
}

#[test]
fn pointer_encoding_round_trips_and_rejects_garbage() {
    let (_, ptr) = enc(&data(12345, 14));
    let bytes = ptr.to_bytes();
    assert_eq!(bytes.len(), POINTER_LEN);
    assert_eq!(AttachmentPointer::from_bytes(&bytes[..]).unwrap(), ptr);

    assert!(AttachmentPointer::from_bytes(&bytes[..POINTER_LEN - 1]).is_err());
    let mut long = bytes.to_vec();
    long.push(0);
    assert!(AttachmentPointer::from_bytes(&long).is_err());
    let mut v2 = *bytes;
    v2[0] = 2;
    assert!(matches!(
        AttachmentPointer::from_bytes(&v2),
        Err(Error::UnsupportedVersion(2))
    ));
    let mut lens = *bytes;
    lens[80] ^= 1; // ciphertext_len no longer matches plaintext_len
    assert!(matches!(
        AttachmentPointer::from_bytes(&lens),
        Err(Error::Malformed { .. })
    ));
}

#[test]
fn decrypt_to_path_keeps_only_verified_files() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("photo.jpg");
    let pt = data(3 * CHUNK_LEN + 99, 15);
    let (blob, ptr) = enc(&pt);
    let entries = || std::fs::read_dir(dir.path()).unwrap().count();

    // Failure mid-stream (second chunk) and at the final digest check.
    for pos in [HEADER_LEN + SEALED + 5, blob.len() - 1] {
        let mut bad = blob.clone();
        bad[pos] ^= 1;
        assert!(decrypt_to_path(&bad[..], &dest, &ptr).is_err());
        assert!(!dest.exists());
        assert_eq!(entries(), 0, "temporary file left behind");
    }

    assert_eq!(
        decrypt_to_path(&blob[..], &dest, &ptr).unwrap(),
        pt.len() as u64
    );
    assert_eq!(std::fs::read(&dest).unwrap(), pt);
    assert_eq!(entries(), 1);

    // A failed re-download leaves the existing good file untouched.
    assert!(decrypt_to_path(&blob[..blob.len() - 1], &dest, &ptr).is_err());
    assert_eq!(std::fs::read(&dest).unwrap(), pt);
    assert_eq!(entries(), 1);

    // No directory: a typed I/O error, nothing created.
    let missing = dir.path().join("nope").join("x");
    assert!(matches!(
        decrypt_to_path(&blob[..], &missing, &ptr),
        Err(Error::AttachmentIo(_))
    ));
}

/// Reads in tiny random pieces and interrupts itself now and then.
struct Trickle<'a> {
    data: &'a [u8],
    rng: ChaCha20Rng,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.rng.next_u32() % 5 == 0 {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = (1 + self.rng.next_u32() as usize % 3000)
            .min(buf.len())
            .min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn short_and_interrupted_reads_are_handled() {
    let pt = data(2 * CHUNK_LEN + 777, 16);
    let mut blob = Vec::new();
    let src = Trickle {
        data: &pt,
        rng: ChaCha20Rng::seed_from_u64(1),
    };
    let ptr = encrypt(src, &mut blob, &mut OsRng).unwrap();
    let mut out = Vec::new();
    let src = Trickle {
        data: &blob,
        rng: ChaCha20Rng::seed_from_u64(2),
    };
    decrypt(src, &mut out, &ptr).unwrap();
    assert_eq!(out, pt);
}

struct Broken;

impl Read for Broken {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other("disk gone"))
    }
}

impl Write for Broken {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("disk full"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn io_failures_are_typed() {
    assert!(matches!(
        encrypt(Broken, Vec::new(), &mut OsRng),
        Err(Error::AttachmentIo(_))
    ));
    assert!(matches!(
        encrypt(&b"x"[..], Broken, &mut OsRng),
        Err(Error::AttachmentIo(_))
    ));
    let (blob, ptr) = enc(b"hello");
    assert!(matches!(
        decrypt(Broken, Vec::new(), &ptr),
        Err(Error::AttachmentIo(_))
    ));
    assert!(matches!(
        decrypt(&blob[..], Broken, &ptr),
        Err(Error::AttachmentIo(_))
    ));
}

/// The vector printed in `/work/brief/attachment-protocol.md` (PROTOCOL.md).
#[test]
fn known_answer_vector() {
    let key: [u8; 32] = core::array::from_fn(|i| i as u8);
    let prefix = [0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6];
    let pt = b"Sotto attachment test vector";
    let mut blob = Vec::new();
    let ptr = encrypt_with(AttachmentKey::from_bytes(key), prefix, &pt[..], &mut blob).unwrap();
    assert_eq!(hex::encode(&blob), KAT_BLOB);
    assert_eq!(hex::encode(ptr.digest), KAT_DIGEST);
    assert_eq!(hex::encode(&ptr.to_bytes()[..]), KAT_POINTER);
    assert_eq!(dec(&blob, &ptr).unwrap(), pt);
}

/// A second vector across chunk boundaries and Padmé padding: 200000 bytes
/// `i mod 251` pad to 200704, i.e. 3 full chunks and a 4096-byte final one.
#[test]
fn known_answer_vector_multi_chunk() {
    let key: [u8; 32] = core::array::from_fn(|i| i as u8);
    let prefix = [0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6];
    let pt: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(padded_len(200_000), 200_704);
    let mut blob = Vec::new();
    let ptr = encrypt_with(AttachmentKey::from_bytes(key), prefix, &pt[..], &mut blob).unwrap();
    assert_eq!(blob.len(), 8 + 200_704 + 4 * 16);
    assert_eq!(
        hex::encode(ptr.digest),
        "ad8aca84aeae71f3726c484c6eddaf0a585a600d9b98b62ff439284a7a5d3a17"
    );
    assert_eq!(dec(&blob, &ptr).unwrap(), pt);
}

const KAT_BLOB: &str = "01a0a1a2a3a4a5a6babde7b932220c8ce31fc377f6c750b8c60d17dcb9dc406d1ddd5f102673e31e97cb3772a44433d6b3ddbbbc";
const KAT_DIGEST: &str = "9a8df29dd21774689916b7dcc7a79d12588a68aa816f37b709dd92265ef1e717";
const KAT_POINTER: &str = "01000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f9a8df29dd21774689916b7dcc7a79d12588a68aa816f37b709dd92265ef1e717000000000000001c0000000000000034";

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn any_size_round_trips_and_any_bit_flip_fails(
        len in prop_oneof![0usize..300, 0usize..(3 * CHUNK_LEN + 100)],
        seed in any::<u64>(),
        bit in any::<u64>(),
    ) {
        let pt = data(len, seed);
        let (blob, ptr) = enc(&pt);
        prop_assert_eq!(blob.len() as u64, ciphertext_len(len as u64));
        prop_assert_eq!(&dec(&blob, &ptr).unwrap(), &pt);
        let bit = (bit % (blob.len() as u64 * 8)) as usize;
        let mut bad = blob;
        bad[bit / 8] ^= 1 << (bit % 8);
        let r = dec(&bad, &ptr);
        prop_assert!(is_rejection(&r), "bit {} of {}: {:?}", bit, bad.len(), r);
    }
}
