//! Account-free authentication: a device proves it holds the private key of
//! its mailbox by signing a fresh relay challenge bound to this TLS session.
//!
//! Transcript signed with Ed25519 (`verify_strict` on the relay):
//! `AUTH_CONTEXT || exporter(32) || nonce(32) || device_key(32)` where
//! `exporter` is the TLS 1.3 exporter (RFC 8446 §7.5) with label
//! [`EXPORTER_LABEL`] and context = nonce. A signature made on one connection
//! is worthless on any other (different exporter), and each nonce is consumed
//! once, so challenges can be neither relayed nor replayed.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::error::{RelayError, Result};

/// Domain separation for the auth transcript.
pub const AUTH_CONTEXT: &[u8] = b"sotto-relay/v1 auth";
/// TLS exporter label binding auth to the connection.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-sotto-relay-auth";
/// Domain separation for device-list signatures.
pub const DEVICE_LIST_CONTEXT: &[u8] = b"sotto-relay/v1 device-list";

/// Domain separation for delivery-token verifiers.
pub const DELIVERY_TOKEN_CONTEXT: &[u8] = b"sotto-delivery-token-v1";

/// The verifier a mailbox owner registers for the delivery token it hands
/// its contacts: `SHA-256(DELIVERY_TOKEN_CONTEXT || token)`. The relay keeps
/// only this, so its database does not let anyone send as a contact.
pub fn delivery_verifier(token: &[u8; 32]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(DELIVERY_TOKEN_CONTEXT);
    h.update(token);
    h.finalize().into()
}

/// Exports the 32-byte channel binding for `nonce` from a QUIC connection.
pub fn channel_binding(conn: &quinn::Connection, nonce: &[u8; 32]) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, nonce)
        .map_err(|_| RelayError::Exporter)?;
    Ok(out)
}

/// The bytes a device signs to authenticate.
pub fn transcript(binding: &[u8; 32], nonce: &[u8; 32], device_key: &[u8; 32]) -> Vec<u8> {
    let mut t = Vec::with_capacity(AUTH_CONTEXT.len() + 96);
    t.extend_from_slice(AUTH_CONTEXT);
    t.extend_from_slice(binding);
    t.extend_from_slice(nonce);
    t.extend_from_slice(device_key);
    t
}

/// Signs the auth transcript (device side).
pub fn sign(key: &SigningKey, binding: &[u8; 32], nonce: &[u8; 32]) -> [u8; 64] {
    let pk = key.verifying_key().to_bytes();
    key.sign(&transcript(binding, nonce, &pk)).to_bytes()
}

/// Verifies an auth proof (relay side).
pub fn verify(
    binding: &[u8; 32],
    nonce: &[u8; 32],
    device_key: &[u8],
    sig: &[u8],
) -> Result<[u8; 32]> {
    let pk: [u8; 32] = device_key
        .try_into()
        .map_err(|_| RelayError::Malformed("device key must be 32 bytes"))?;
    let sig = Signature::from_slice(sig)
        .map_err(|_| RelayError::Malformed("signature must be 64 bytes"))?;
    let vk = VerifyingKey::from_bytes(&pk).map_err(|_| auth_failed())?;
    vk.verify_strict(&transcript(binding, nonce, &pk), &sig)
        .map_err(|_| auth_failed())?;
    Ok(pk)
}

fn auth_failed() -> RelayError {
    RelayError::refusal(
        sotto_proto::relay::ErrorCode::AuthFailed,
        "authentication failed",
    )
}

/// The bytes a user's identity key signs to publish a device list.
pub fn device_list_transcript(user_key: &[u8; 32], version: u64, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(DEVICE_LIST_CONTEXT.len() + 40 + body.len());
    t.extend_from_slice(DEVICE_LIST_CONTEXT);
    t.extend_from_slice(user_key);
    t.extend_from_slice(&version.to_be_bytes());
    t.extend_from_slice(body);
    t
}

/// Signs a device list with the user's identity key (client side).
pub fn sign_device_list(identity: &SigningKey, version: u64, body: &[u8]) -> [u8; 64] {
    let uk = identity.verifying_key().to_bytes();
    identity
        .sign(&device_list_transcript(&uk, version, body))
        .to_bytes()
}

/// Verifies a device-list signature (relay side).
pub fn verify_device_list(user_key: &[u8; 32], version: u64, body: &[u8], sig: &[u8]) -> bool {
    let Ok(sig) = Signature::from_slice(sig) else {
        return false;
    };
    let Ok(vk) = VerifyingKey::from_bytes(user_key) else {
        return false;
    };
    vk.verify_strict(&device_list_transcript(user_key, version, body), &sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// The vector in PROTOCOL.md Part II section 4.
    #[test]
    fn delivery_verifier_matches_the_spec_vector() {
        let token: [u8; 32] = core::array::from_fn(|i| i as u8);
        assert_eq!(
            hex::encode(delivery_verifier(&token)),
            "89aaecc7e46f6df3865a8c9f3b77997ef930c8663cc3fa865ee66582ba9d479e"
        );
    }

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    #[test]
    fn proof_binds_connection_and_nonce() {
        let k = key(1);
        let pk = k.verifying_key().to_bytes();
        let (bind, nonce) = ([3u8; 32], [4u8; 32]);
        let sig = sign(&k, &bind, &nonce);
        assert_eq!(verify(&bind, &nonce, &pk, &sig).unwrap(), pk);
        // another connection (binding) or nonce: refused
        assert!(verify(&[5u8; 32], &nonce, &pk, &sig).is_err());
        assert!(verify(&bind, &[6u8; 32], &pk, &sig).is_err());
        // someone else's key: refused
        let other = key(2).verifying_key().to_bytes();
        assert!(verify(&bind, &nonce, &other, &sig).is_err());
        assert!(verify(&bind, &nonce, &pk[..31], &sig).is_err());
    }

    #[test]
    fn device_list_signature_covers_version_and_body() {
        let id = key(9);
        let uk = id.verifying_key().to_bytes();
        let sig = sign_device_list(&id, 3, b"devices");
        assert!(verify_device_list(&uk, 3, b"devices", &sig));
        assert!(!verify_device_list(&uk, 4, b"devices", &sig));
        assert!(!verify_device_list(&uk, 3, b"devicez", &sig));
        assert!(!verify_device_list(&uk, 3, b"devices", &sig[..63]));
    }
}
