//! Long-term identity keys and safety numbers.
//!
//! An identity is two independent key pairs: Ed25519 to sign prekeys and
//! X25519 for the PQXDH identity Diffie-Hellman. We keep them separate rather
//! than converting one curve form into the other (XEdDSA, or Ed25519-to-X25519
//! conversion): both dalek crates then do exactly what they were audited for,
//! no key is used in two algorithms, and nothing cryptographic is hand-rolled.
//! The public identity is the 64-byte concatenation `Ed25519 || X25519`, so
//! the safety number covers both halves and a substituted X25519 key changes it.

use core::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::keys::{Hex, X25519KeyPair};

/// Length of an encoded [`IdentityKey`].
pub const IDENTITY_KEY_LEN: usize = 64;

/// A user's public identity: Ed25519 verifying key and X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentityKey {
    bytes: [u8; IDENTITY_KEY_LEN],
    verifying: VerifyingKey,
}

impl IdentityKey {
    /// Parses the 64-byte encoding, rejecting an invalid Ed25519 point.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; IDENTITY_KEY_LEN] = bytes.try_into().map_err(|_| Error::Malformed {
            what: "identity key",
        })?;
        let mut ed = [0u8; 32];
        ed.copy_from_slice(&arr[..32]);
        let verifying = VerifyingKey::from_bytes(&ed).map_err(|_| Error::InvalidKey {
            what: "identity key",
        })?;
        // Small-order keys and non-canonical encodings (y >= p) are refused:
        // one identity has exactly one encoding, as other libraries expect.
        if verifying.is_weak() || verifying.to_edwards().compress().to_bytes() != ed {
            return Err(Error::InvalidKey {
                what: "identity key",
            });
        }
        Ok(IdentityKey {
            bytes: arr,
            verifying,
        })
    }

    /// The 64-byte encoding `Ed25519 public || X25519 public`.
    pub fn as_bytes(&self) -> &[u8; IDENTITY_KEY_LEN] {
        &self.bytes
    }

    /// The X25519 half.
    pub fn dh_public(&self) -> &[u8; 32] {
        // The slice is exactly 32 bytes by construction.
        self.bytes[32..].try_into().unwrap_or(&[0u8; 32])
    }

    /// Verifies an Ed25519 signature made by this identity (strict: rejects
    /// malleable signatures and small-order keys).
    pub fn verify(&self, message: &[u8], signature: &[u8], what: &'static str) -> Result<()> {
        let sig = Signature::from_slice(signature).map_err(|_| Error::BadSignature { what })?;
        self.verifying
            .verify_strict(message, &sig)
            .map_err(|_| Error::BadSignature { what })
    }

    /// Constant-time equality (identity keys gate trust decisions).
    pub fn ct_eq(&self, other: &IdentityKey) -> bool {
        self.bytes.ct_eq(&other.bytes).into()
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey({:?})", Hex(&self.bytes[..8]))
    }
}

/// This device's identity key pair. Zeroized on drop (both dalek secret types
/// zeroize themselves); never printed.
#[derive(Clone)]
pub struct IdentityKeyPair {
    signing: SigningKey,
    dh: X25519KeyPair,
    public: IdentityKey,
}

impl IdentityKeyPair {
    /// A fresh random identity.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let signing = SigningKey::generate(rng);
        let dh = X25519KeyPair::generate(rng);
        Self::from_parts(signing, dh)
    }

    fn from_parts(signing: SigningKey, dh: X25519KeyPair) -> Self {
        let mut bytes = [0u8; IDENTITY_KEY_LEN];
        bytes[..32].copy_from_slice(signing.verifying_key().as_bytes());
        bytes[32..].copy_from_slice(dh.public());
        let public = IdentityKey {
            bytes,
            verifying: signing.verifying_key(),
        };
        IdentityKeyPair {
            signing,
            dh,
            public,
        }
    }

    /// An attacker's key pair for tests: its public identity claims
    /// `ed_public` (someone else's Ed25519 half, whose secret it lacks) with
    /// its own X25519 half. PQXDH's initiator never signs, so such a pair can
    /// start sessions: exactly the forgery certificates must stop.
    #[cfg(any(test, feature = "fuzzing"))]
    #[doc(hidden)]
    pub fn forged(ed_public: &[u8; 32], rng: &mut impl CryptoRngCore) -> Self {
        let mut pair = Self::generate(rng);
        pair.public.bytes[..32].copy_from_slice(ed_public);
        if let Ok(v) = VerifyingKey::from_bytes(ed_public) {
            pair.public.verifying = v;
        }
        pair
    }

    /// Rebuilds from persisted (or linked) secrets.
    pub fn from_secret_bytes(signing: &[u8], dh: &[u8]) -> Result<Self> {
        let seed: Zeroizing<[u8; 32]> =
            Zeroizing::new(signing.try_into().map_err(|_| Error::Malformed {
                what: "identity signing secret",
            })?);
        let signing = SigningKey::from_bytes(&seed);
        let dh = X25519KeyPair::from_slice(dh, "identity DH secret")?;
        Ok(Self::from_parts(signing, dh))
    }

    /// The Ed25519 seed, for persistence only: a device identity never
    /// leaves its device.
    pub(crate) fn signing_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    pub(crate) fn dh(&self) -> &X25519KeyPair {
        &self.dh
    }

    /// The public identity.
    pub fn public(&self) -> &IdentityKey {
        &self.public
    }

    /// Signs `message` with the Ed25519 identity key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

impl fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKeyPair")
            .field("public", &self.public)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Iterations of SHA-512 per fingerprint half (as Signal's safety numbers).
pub const SAFETY_NUMBER_ITERATIONS: u32 = 5200;
/// Version byte of the scannable (QR) payload.
pub const SAFETY_NUMBER_QR_VERSION: u8 = 1;

/// A safety number for two identities: 60 digits both sides compute
/// identically, plus a QR payload whose comparison is order-independent.
#[derive(Clone, PartialEq, Eq)]
pub struct SafetyNumber {
    digits: String,
    scannable: Vec<u8>,
}

impl SafetyNumber {
    /// Computes the safety number of `a` and `b` (argument order does not matter).
    pub fn compute(a: &IdentityKey, b: &IdentityKey) -> Self {
        Self::of_keys(a.as_bytes(), b.as_bytes())
    }

    /// The same over any two public keys: the messenger compares users'
    /// 32-byte account keys, Part I compares 64-byte device identities.
    pub fn of_keys(a: &[u8], b: &[u8]) -> Self {
        let fa = fingerprint_half(a);
        let fb = fingerprint_half(b);
        let (lo, hi) = if fa <= fb { (fa, fb) } else { (fb, fa) };
        let mut digits = String::with_capacity(60);
        digits.push_str(&digits_of(&lo));
        digits.push_str(&digits_of(&hi));
        let mut scannable = Vec::with_capacity(65);
        scannable.push(SAFETY_NUMBER_QR_VERSION);
        scannable.extend_from_slice(&lo);
        scannable.extend_from_slice(&hi);
        SafetyNumber { digits, scannable }
    }

    /// The 60 digits, to be shown as 12 groups of 5.
    pub fn digits(&self) -> &str {
        &self.digits
    }

    /// The QR payload: version byte, then the two 32-byte halves in sorted order.
    pub fn scannable(&self) -> &[u8] {
        &self.scannable
    }

    /// Compares a scanned payload with ours in constant time.
    pub fn matches_scanned(&self, scanned: &[u8]) -> bool {
        self.scannable.len() == scanned.len() && bool::from(self.scannable.ct_eq(scanned))
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyNumber({})", self.digits)
    }
}

/// `H_0 = SHA-512(0x0000 || "Sotto_SafetyNumber_v1" || key)`,
/// `H_i = SHA-512(H_{i-1} || key)`; the half is the first 32 bytes of `H_5200`.
fn fingerprint_half(key: &[u8]) -> [u8; 32] {
    let mut h = Sha512::new();
    h.update([0u8, 0u8]);
    h.update(b"Sotto_SafetyNumber_v1");
    h.update(key);
    let mut out = h.finalize();
    for _ in 0..SAFETY_NUMBER_ITERATIONS {
        let mut h = Sha512::new();
        h.update(out);
        h.update(key);
        out = h.finalize();
    }
    let mut half = [0u8; 32];
    half.copy_from_slice(&out[..32]);
    half
}

/// 30 digits: six 5-byte big-endian chunks, each mod 100000, zero-padded.
fn digits_of(half: &[u8; 32]) -> String {
    let mut s = String::with_capacity(30);
    for chunk in half[..30].chunks(5) {
        let v = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        s.push_str(&format!("{:05}", v % 100_000));
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_non_canonical_or_small_order_identity_is_refused_at_parse_time() {
        // y + p for the few y below 19 is a second encoding of a point.
        let p_le = {
            let mut p = [0xFFu8; 32];
            p[0] = 0xED;
            p[31] = 0x7F;
            p
        };
        let mut refused = 0;
        for y in 0u8..19 {
            let mut enc = p_le;
            let (sum, carry) = enc[0].overflowing_add(y);
            enc[0] = sum;
            assert!(!carry || y > 18);
            let mut key = [0u8; 64];
            key[..32].copy_from_slice(&enc);
            key[32..].copy_from_slice(&[9u8; 32]);
            if VerifyingKey::from_bytes(&enc).is_ok() {
                assert!(IdentityKey::from_bytes(&key).is_err(), "y = {y}");
                refused += 1;
            }
        }
        assert!(refused > 0);
        // The identity point (y = 1) is small order.
        let mut small = [0u8; 64];
        small[0] = 1;
        assert!(IdentityKey::from_bytes(&small).is_err());
    }
}
