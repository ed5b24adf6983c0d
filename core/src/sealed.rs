//! Sealed sender (PROTOCOL.md I.14): the layer around what the relay
//! stores for a device, so that it learns the recipient mailbox, a padded
//! size and a time, and not who sent it nor which session it belongs to.
//!
//! - [`seal`] is for one device: one ephemeral X25519 key per envelope,
//!   agreed with the recipient device's identity key (one agreement on each
//!   side; Signal's v1 pays two), and ChaCha20-Poly1305 under a key HKDF
//!   makes of it. Whoever can seal to a device is not authenticated here:
//!   the sealed bytes carry the sender's claim, and the inner session proves
//!   it (the caller refuses a claim the session does not confirm).
//! - [`seal_shared`] is for many devices holding one 32-byte key (a group's
//!   members): one random-nonce XChaCha20-Poly1305 encryption, so a group
//!   message keeps its one-upload cost (no agreement per recipient).
//!
//! Both pad to [`Padding::Buckets`] by default.

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce, Tag, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::CryptoRngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::identity::IdentityKeyPair;
use crate::keys::X25519KeyPair;
use crate::padding::{self, Padding};

/// First byte of a message sealed to one device: version 1, type 4.
pub const SEALED_TYPE: u8 = 0x14;
/// First byte of a message sealed under a shared key: version 1, type 5.
pub const SEALED_SHARED_TYPE: u8 = 0x15;
/// HKDF info of the one-device seal key.
pub const SEALED_INFO: &[u8] = b"Sotto_v1_SealedSender";
const TAG_LEN: usize = 16;
const XNONCE_LEN: usize = 24;
/// Bytes a one-device seal adds before padding: type, ephemeral key, tag.
pub const SEALED_OVERHEAD: usize = 1 + 32 + TAG_LEN;
/// Bytes of a shared seal's key hint.
pub const HINT_LEN: usize = 4;
/// Domain of the key hint.
pub const HINT_DOMAIN: &[u8] = b"Sotto_v1_SealHint";
/// Bytes a shared seal adds before padding: type, nonce, hint, tag.
pub const SEALED_SHARED_OVERHEAD: usize = 1 + XNONCE_LEN + HINT_LEN + TAG_LEN;

/// `HMAC-SHA256(key, "Sotto_v1_SealHint" || nonce)`, of which a shared seal
/// carries the first [`HINT_LEN`] bytes: a receiver holding many keys finds
/// the one to try without an AEAD pass per key, and the relay, which sees a
/// fresh nonce each time, links nothing.
fn hint_mac(key: &[u8; 32], nonce: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length: construction cannot fail (a defined
    // value rather than a panic if it ever did).
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => <Hmac<Sha256> as KeyInit>::new(&Default::default()),
    };
    mac.update(HINT_DOMAIN);
    mac.update(nonce);
    mac
}

/// The one-device key: `HKDF-SHA256(salt = none, ikm = X25519(e, IK_r),
/// info = "Sotto_v1_SealedSender" || e_pub || IK_r)`.
fn seal_key(
    shared: &[u8; 32],
    e_pub: &[u8; 32],
    recipient: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>> {
    let hk = Hkdf::<Sha256>::new(None, shared);
    let mut info = Vec::with_capacity(SEALED_INFO.len() + 64);
    info.extend_from_slice(SEALED_INFO);
    info.extend_from_slice(e_pub);
    info.extend_from_slice(recipient);
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(&info, key.as_mut())
        .map_err(|_| Error::Malformed {
            what: "seal key length",
        })?;
    Ok(key)
}

/// Seals `inner` for the device whose identity X25519 key is `recipient`:
/// `0x14 || e_pub (32) || ChaCha20-Poly1305(key, nonce = 12 x 0x00,
/// aad = 0x14 || e_pub || recipient, padded inner) || tag`.
pub fn seal(
    recipient: &[u8; 32],
    inner: &[u8],
    padding: Padding,
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<u8>> {
    seal_with(&X25519KeyPair::generate(rng), recipient, inner, padding)
}

/// [`seal`] with a given ephemeral key (the test vector).
pub(crate) fn seal_with(
    ephemeral: &X25519KeyPair,
    recipient: &[u8; 32],
    inner: &[u8],
    padding: Padding,
) -> Result<Vec<u8>> {
    let shared = ephemeral.agree(recipient, "recipient identity key")?;
    let e_pub = *ephemeral.public();
    let key = seal_key(shared.as_bytes(), &e_pub, recipient)?;
    let mut out = Vec::with_capacity(SEALED_OVERHEAD + padding::padded_len(inner.len(), padding));
    out.push(SEALED_TYPE);
    out.extend_from_slice(&e_pub);
    let mut body = Vec::with_capacity(padding::padded_len(inner.len(), padding) + TAG_LEN);
    padding::pad_into(&mut body, inner, padding);
    let mut aad = [0u8; 65];
    aad[0] = SEALED_TYPE;
    aad[1..33].copy_from_slice(&e_pub);
    aad[33..].copy_from_slice(recipient);
    let tag = ChaCha20Poly1305::new(Key::from_slice(key.as_ref()))
        .encrypt_in_place_detached(&Nonce::default(), &aad, &mut body)
        .map_err(|_| Error::Malformed {
            what: "sealed message",
        })?;
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens a message sealed to `identity`'s device; the inner bytes. Any
/// failure is `DecryptFailed` (or malformed for a wrong length or type):
/// nothing about the sender is known before it succeeds.
pub fn open(identity: &IdentityKeyPair, sealed: &[u8]) -> Result<Vec<u8>> {
    if sealed.len() < SEALED_OVERHEAD + 1 {
        return Err(Error::Malformed {
            what: "sealed message",
        });
    }
    if sealed[0] != SEALED_TYPE {
        return Err(version_error(sealed[0]));
    }
    let mut e_pub = [0u8; 32];
    e_pub.copy_from_slice(&sealed[1..33]);
    let recipient = *identity.public().dh_public();
    let shared = identity.dh().agree(&e_pub, "sealed ephemeral key")?;
    let key = seal_key(shared.as_bytes(), &e_pub, &recipient)?;
    let (body, tag) = sealed[33..].split_at(sealed.len() - 33 - TAG_LEN);
    let mut aad = [0u8; 65];
    aad[0] = SEALED_TYPE;
    aad[1..33].copy_from_slice(&e_pub);
    aad[33..].copy_from_slice(&recipient);
    let mut buf = body.to_vec();
    ChaCha20Poly1305::new(Key::from_slice(key.as_ref()))
        .decrypt_in_place_detached(&Nonce::default(), &aad, &mut buf, Tag::from_slice(tag))
        .map_err(|_| Error::DecryptFailed)?;
    padding::unpad(&mut buf)?;
    Ok(buf)
}

/// Seals `inner` under a key many devices hold: `0x15 || nonce (24, random)
/// || hint (4) || XChaCha20-Poly1305(key, nonce, aad = 0x15, padded inner)
/// || tag`.
pub fn seal_shared(
    key: &[u8; 32],
    inner: &[u8],
    padding: Padding,
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<u8>> {
    let mut nonce = [0u8; XNONCE_LEN];
    rng.fill_bytes(&mut nonce);
    seal_shared_with(key, &nonce, inner, padding)
}

/// [`seal_shared`] with a nonce drawn by the caller (24 random bytes, never
/// used twice with one key), for a caller that seals inside a transaction.
pub fn seal_shared_with(
    key: &[u8; 32],
    nonce: &[u8; XNONCE_LEN],
    inner: &[u8],
    padding: Padding,
) -> Result<Vec<u8>> {
    let mut out =
        Vec::with_capacity(SEALED_SHARED_OVERHEAD + padding::padded_len(inner.len(), padding));
    out.push(SEALED_SHARED_TYPE);
    out.extend_from_slice(nonce);
    out.extend_from_slice(&hint_mac(key, nonce).finalize().into_bytes()[..HINT_LEN]);
    let mut body = Vec::with_capacity(padding::padded_len(inner.len(), padding) + TAG_LEN);
    padding::pad_into(&mut body, inner, padding);
    let tag = XChaCha20Poly1305::new(Key::from_slice(key))
        .encrypt_in_place_detached(XNonce::from_slice(nonce), &[SEALED_SHARED_TYPE], &mut body)
        .map_err(|_| Error::Malformed {
            what: "sealed message",
        })?;
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens a message sealed under `key`; `DecryptFailed` if it was not (the
/// caller may try each key it holds).
pub fn open_shared(key: &[u8; 32], sealed: &[u8]) -> Result<Vec<u8>> {
    if sealed.len() < SEALED_SHARED_OVERHEAD + 1 {
        return Err(Error::Malformed {
            what: "sealed message",
        });
    }
    if sealed[0] != SEALED_SHARED_TYPE {
        return Err(version_error(sealed[0]));
    }
    let nonce = XNonce::from_slice(&sealed[1..1 + XNONCE_LEN]);
    let hint = &sealed[1 + XNONCE_LEN..1 + XNONCE_LEN + HINT_LEN];
    if hint_mac(key, nonce).verify_truncated_left(hint).is_err() {
        return Err(Error::DecryptFailed);
    }
    let start = 1 + XNONCE_LEN + HINT_LEN;
    let (body, tag) = sealed[start..].split_at(sealed.len() - start - TAG_LEN);
    let mut buf = body.to_vec();
    XChaCha20Poly1305::new(Key::from_slice(key))
        .decrypt_in_place_detached(nonce, &[SEALED_SHARED_TYPE], &mut buf, Tag::from_slice(tag))
        .map_err(|_| Error::DecryptFailed)?;
    padding::unpad(&mut buf)?;
    Ok(buf)
}

fn version_error(first: u8) -> Error {
    if first >> 4 != 1 {
        Error::UnsupportedVersion(first >> 4)
    } else {
        Error::Malformed {
            what: "sealed message type",
        }
    }
}

#[cfg(test)]
mod tests;
