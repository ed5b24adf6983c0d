//! PQXDH key agreement (Signal's published PQXDH specification) with X25519
//! and ML-KEM-768, as pure functions: no storage, no clocks.
//!
//! ```text
//! DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)
//! DH4 = DH(EK_A, OPK_B)   (only if a one-time prekey was served)
//! (CT, SS) = ML-KEM-768.Encaps(PQPK_B)
//! RK || CK = HKDF-SHA256(salt = 0^32, ikm = 0xFF^32 || DH1 || DH2 || DH3 [|| DH4] || SS,
//!                        info = "Sotto_v1_PQXDH_X25519_SHA-256_ML-KEM-768"
//!                               || SHA-256(PQPK_B) || SHA-256(CT), L = 64)
//! AD = IK_A || IK_B   (64-byte identity encodings, initiator first)
//! ```
//!
//! Hashing the KEM public key and ciphertext into `info` binds the session
//! to the exact KEM exchange even if ML-KEM's shared secret turned out not to
//! commit to them (re-encapsulation attacks); it costs two hashes per setup.
//!
//! `RK` becomes the Double Ratchet root key and `CK` the initiator's first
//! sending chain, whose ratchet key is `EK_A` itself: the responder's first
//! reply then performs an ordinary DH ratchet step against `EK_A`. This saves
//! the initiator a key generation and a DH per setup compared with a separate
//! first ratchet key, and keeps `EK_A`'s secret alive only until that reply.

use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::identity::{IdentityKey, IdentityKeyPair, IDENTITY_KEY_LEN};
use crate::keys::{kem_encapsulate, KemKeyPair, Secret32, X25519KeyPair};
use crate::prekeys::PrekeyBundle;
use crate::ratchet::{ChainKey, RootKey};

/// HKDF info string of the PQXDH KDF.
pub const PQXDH_INFO: &[u8] = b"Sotto_v1_PQXDH_X25519_SHA-256_ML-KEM-768";

/// The session associated data: initiator identity then responder identity.
pub(crate) fn session_ad(initiator: &IdentityKey, responder: &IdentityKey) -> [u8; 128] {
    let mut ad = [0u8; 2 * IDENTITY_KEY_LEN];
    ad[..IDENTITY_KEY_LEN].copy_from_slice(initiator.as_bytes());
    ad[IDENTITY_KEY_LEN..].copy_from_slice(responder.as_bytes());
    ad
}

/// What the initiator learns and must send.
pub(crate) struct Initiated {
    pub(crate) root_key: RootKey,
    pub(crate) chain_key: ChainKey,
    pub(crate) base: X25519KeyPair,
    pub(crate) kem_ciphertext: Vec<u8>,
}

/// The HKDF info: the label, then SHA-256 of the KEM public key and of the
/// KEM ciphertext.
pub(crate) fn kdf_info(kem_public: &[u8], kem_ciphertext: &[u8]) -> Vec<u8> {
    let mut info = Vec::with_capacity(PQXDH_INFO.len() + 64);
    info.extend_from_slice(PQXDH_INFO);
    info.extend_from_slice(&Sha256::digest(kem_public));
    info.extend_from_slice(&Sha256::digest(kem_ciphertext));
    info
}

fn kdf(dhs: &[&Secret32], kem_secret: &Secret32, info: &[u8]) -> (RootKey, ChainKey) {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * 6));
    ikm.extend_from_slice(&[0xFF; 32]);
    for dh in dhs {
        ikm.extend_from_slice(dh.as_bytes());
    }
    ikm.extend_from_slice(kem_secret.as_bytes());
    let hk = Hkdf::<Sha256>::new(Some(&[0u8; 32]), &ikm);
    let mut okm = Zeroizing::new([0u8; 64]);
    // 64 bytes never exceeds HKDF's output limit.
    let _ = hk.expand(info, &mut okm[..]);
    (
        Secret32::copy_from(&okm[..32]).into(),
        Secret32::copy_from(&okm[32..]).into(),
    )
}

/// The initiator's side: agree on keys with a verified bundle.
pub(crate) fn initiate(
    ours: &IdentityKeyPair,
    bundle: &PrekeyBundle,
    rng: &mut impl CryptoRngCore,
) -> Result<Initiated> {
    let base = X25519KeyPair::generate(rng);
    let dh1 = ours.dh().agree(&bundle.signed_prekey, "signed prekey")?;
    let dh2 = base.agree(bundle.identity.dh_public(), "remote identity key")?;
    let dh3 = base.agree(&bundle.signed_prekey, "signed prekey")?;
    let dh4 = match &bundle.one_time_prekey {
        Some((_, key)) => Some(base.agree(key, "one-time prekey")?),
        None => None,
    };
    let (kem_ciphertext, ss) = kem_encapsulate(&bundle.kem_prekey, rng)?;
    let info = kdf_info(&bundle.kem_prekey, &kem_ciphertext);
    let (root_key, chain_key) = match &dh4 {
        Some(dh4) => kdf(&[&dh1, &dh2, &dh3, dh4], &ss, &info),
        None => kdf(&[&dh1, &dh2, &dh3], &ss, &info),
    };
    Ok(Initiated {
        root_key,
        chain_key,
        base,
        kem_ciphertext,
    })
}

/// The responder's side, given the private prekeys the message named.
pub(crate) fn respond(
    ours: &IdentityKeyPair,
    their_identity: &IdentityKey,
    base_key: &[u8; 32],
    signed_prekey: &X25519KeyPair,
    one_time_prekey: Option<&X25519KeyPair>,
    kem_prekey: &KemKeyPair,
    kem_ciphertext: &[u8],
) -> Result<(RootKey, ChainKey)> {
    let dh1 = signed_prekey.agree(their_identity.dh_public(), "remote identity key")?;
    let dh2 = ours.dh().agree(base_key, "base key")?;
    let dh3 = signed_prekey.agree(base_key, "base key")?;
    let dh4 = match one_time_prekey {
        Some(k) => Some(k.agree(base_key, "base key")?),
        None => None,
    };
    let ss = kem_prekey.decapsulate(kem_ciphertext)?;
    let info = kdf_info(kem_prekey.public(), kem_ciphertext);
    Ok(match &dh4 {
        Some(dh4) => kdf(&[&dh1, &dh2, &dh3, dh4], &ss, &info),
        None => kdf(&[&dh1, &dh2, &dh3], &ss, &info),
    })
}

/// Checks a 32-byte public key field.
pub(crate) fn key32(bytes: &[u8], what: &'static str) -> Result<[u8; 32]> {
    bytes.try_into().map_err(|_| Error::Malformed { what })
}
