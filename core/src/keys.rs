//! Small key types shared by every layer: an X25519 key pair that caches its
//! public key (so no code path recomputes a base-point multiplication), and an
//! ML-KEM-768 key pair kept as its canonical 64-byte FIPS 203 seed.
//!
//! Secrets live only in zeroize-on-drop types and never appear in `Debug`.

use core::fmt;

use ml_kem::kem::Decapsulate;
use ml_kem::{EncapsulateDeterministic, EncodedSizeUser, KemCore, MlKem768, B32};
use rand_core::CryptoRngCore;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};

/// Length of an ML-KEM-768 encapsulation key.
pub const KEM_PUBLIC_LEN: usize = 1184;
/// Length of an ML-KEM-768 ciphertext.
pub const KEM_CIPHERTEXT_LEN: usize = 1088;

/// A 32-byte symmetric secret (root key, chain key, message key) zeroized on
/// drop. It has no `PartialEq`: code that must compare secrets says so with
/// [`Secret32::ct_eq`], which takes constant time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret32(pub(crate) [u8; 32]);

impl Secret32 {
    /// Wraps raw bytes (test vectors, interop).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Secret32(bytes)
    }

    /// The raw bytes (for persistence).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &Secret32) -> bool {
        subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]).into()
    }

    pub(crate) fn from_slice(bytes: &[u8], what: &'static str) -> Result<Self> {
        let mut out = Secret32([0u8; 32]);
        if bytes.len() != 32 {
            return Err(Error::Malformed { what });
        }
        out.0.copy_from_slice(bytes);
        Ok(out)
    }

    /// Copies the first 32 bytes of `bytes` (at least 32 long) into a new
    /// secret, so callers can zeroize their own buffer afterwards.
    pub(crate) fn copy_from(bytes: &[u8]) -> Self {
        let mut out = Secret32([0u8; 32]);
        out.0.copy_from_slice(&bytes[..32]);
        out
    }
}

impl fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret32(<redacted>)")
    }
}

/// An X25519 key pair whose public half is computed once, at creation.
#[derive(Clone)]
pub struct X25519KeyPair {
    secret: StaticSecret,
    public: PublicKey,
}

impl X25519KeyPair {
    /// A fresh random key pair.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let secret = StaticSecret::random_from_rng(rng);
        let public = PublicKey::from(&secret);
        X25519KeyPair { secret, public }
    }

    /// Rebuilds a key pair from its 32 secret bytes (as persisted).
    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        X25519KeyPair { secret, public }
    }

    /// Rebuilds from persisted bytes, checking the length.
    pub(crate) fn from_slice(bytes: &[u8], what: &'static str) -> Result<Self> {
        let mut arr: [u8; 32] = bytes.try_into().map_err(|_| Error::Malformed { what })?;
        let kp = Self::from_secret_bytes(arr);
        arr.zeroize();
        Ok(kp)
    }

    /// The public key bytes.
    pub fn public(&self) -> &[u8; 32] {
        self.public.as_bytes()
    }

    /// The secret bytes, for persistence only.
    pub(crate) fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// X25519 agreement; rejects a non-contributory (all-zero) result, which
    /// only a malicious low-order public key can produce.
    pub(crate) fn agree(&self, their_public: &[u8; 32], what: &'static str) -> Result<Secret32> {
        // `SharedSecret` zeroizes itself on drop; copy out of it, not via a
        // stack array that would outlive the call.
        let shared = self.secret.diffie_hellman(&PublicKey::from(*their_public));
        if !shared.was_contributory() {
            return Err(Error::InvalidKey { what });
        }
        Ok(Secret32::copy_from(shared.as_bytes()))
    }
}

impl fmt::Debug for X25519KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X25519KeyPair")
            .field("public", &Hex(self.public.as_bytes()))
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// An ML-KEM-768 key pair, stored as its 64-byte seed `d || z`.
///
/// The seed is the canonical FIPS 203 private key form: unlike an expanded
/// decapsulation key it cannot differ between implementations or backends.
/// The expanded decapsulation key is cached (it zeroizes itself on drop) so
/// decapsulation does not redo key generation.
#[derive(Clone)]
pub struct KemKeyPair {
    seed: Zeroizing<[u8; 64]>,
    public: Box<[u8; KEM_PUBLIC_LEN]>,
    dk: Box<<MlKem768 as KemCore>::DecapsulationKey>,
}

impl KemKeyPair {
    /// A fresh random key pair.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut seed = Zeroizing::new([0u8; 64]);
        rng.fill_bytes(&mut seed[..]);
        Self::from_seed(seed)
    }

    /// Rebuilds from the persisted seed.
    pub(crate) fn from_seed(seed: Zeroizing<[u8; 64]>) -> Self {
        let (dk, ek) = Self::expand(&seed);
        let mut public = Box::new([0u8; KEM_PUBLIC_LEN]);
        public.copy_from_slice(ek.as_bytes().as_slice());
        KemKeyPair {
            seed,
            public,
            dk: Box::new(dk),
        }
    }

    pub(crate) fn from_seed_slice(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; 64] = bytes.try_into().map_err(|_| Error::Malformed {
            what: "ML-KEM seed",
        })?;
        Ok(Self::from_seed(Zeroizing::new(arr)))
    }

    fn expand(
        seed: &[u8; 64],
    ) -> (
        <MlKem768 as KemCore>::DecapsulationKey,
        <MlKem768 as KemCore>::EncapsulationKey,
    ) {
        let mut d = B32::default();
        let mut z = B32::default();
        d.copy_from_slice(&seed[..32]);
        z.copy_from_slice(&seed[32..]);
        let pair = MlKem768::generate_deterministic(&d, &z);
        d.zeroize();
        z.zeroize();
        pair
    }

    /// The 1184-byte encapsulation key.
    pub fn public(&self) -> &[u8; KEM_PUBLIC_LEN] {
        &self.public
    }

    pub(crate) fn seed(&self) -> &[u8; 64] {
        &self.seed
    }

    /// Decapsulates a ciphertext. ML-KEM decapsulation never fails outright
    /// (implicit rejection yields a pseudorandom secret), so a forged
    /// ciphertext is caught later by the AEAD of the first message.
    pub(crate) fn decapsulate(&self, ciphertext: &[u8]) -> Result<Secret32> {
        if ciphertext.len() != KEM_CIPHERTEXT_LEN {
            return Err(Error::Malformed {
                what: "ML-KEM ciphertext",
            });
        }
        let ct =
            ml_kem::Ciphertext::<MlKem768>::try_from(ciphertext).map_err(|_| Error::Malformed {
                what: "ML-KEM ciphertext",
            })?;
        let mut ss = self.dk.decapsulate(&ct).map_err(|_| Error::DecryptFailed)?;
        let out = Secret32::copy_from(ss.as_slice());
        ss.as_mut_slice().zeroize();
        Ok(out)
    }
}

/// Parses an ML-KEM-768 encapsulation key with FIPS 203's input check
/// (7.2, "modulus check"): every coefficient must already be reduced, i.e.
/// decoding then re-encoding gives the same bytes. ml-kem 0.2 decodes
/// without it, so a key another implementation refuses would be used here.
pub(crate) fn kem_public_key(public: &[u8]) -> Result<<MlKem768 as KemCore>::EncapsulationKey> {
    let bad = || Error::InvalidKey {
        what: "ML-KEM prekey",
    };
    let enc = ml_kem::Encoded::<<MlKem768 as KemCore>::EncapsulationKey>::try_from(public)
        .map_err(|_| bad())?;
    let ek = <MlKem768 as KemCore>::EncapsulationKey::from_bytes(&enc);
    if ek.as_bytes().as_slice() != public {
        return Err(bad());
    }
    Ok(ek)
}

/// Encapsulates to a peer's ML-KEM-768 key; the 32-byte message `m` is drawn
/// from `rng` so that test vectors can fix it.
pub(crate) fn kem_encapsulate(
    public: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Result<(Vec<u8>, Secret32)> {
    let ek = kem_public_key(public)?;
    let mut m = B32::default();
    rng.fill_bytes(m.as_mut_slice());
    let result = ek.encapsulate_deterministic(&m);
    m.zeroize();
    let (ct, mut ss) = result.map_err(|_| Error::InvalidKey {
        what: "ML-KEM prekey",
    })?;
    let out = Secret32::copy_from(ss.as_slice());
    ss.as_mut_slice().zeroize();
    Ok((ct.as_slice().to_vec(), out))
}

impl fmt::Debug for KemKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KemKeyPair")
            .field("public", &Hex(&self.public[..8]))
            .field("seed", &"<redacted>")
            .finish()
    }
}

/// Lowercase hex for `Debug` of public values (the crate's one hex
/// formatter, on the `hex` crate).
pub(crate) struct Hex<'a>(pub(crate) &'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn an_unreduced_ml_kem_key_is_refused_before_use() {
        let kp = KemKeyPair::generate(&mut OsRng);
        assert!(kem_public_key(kp.public()).is_ok());
        // The first 12-bit coefficient set to 4095 (>= q = 3329).
        let mut bad = *kp.public();
        bad[0] = 0xFF;
        bad[1] |= 0x0F;
        assert!(kem_public_key(&bad).is_err());
        assert!(kem_encapsulate(&bad, &mut OsRng).is_err());
    }
}
