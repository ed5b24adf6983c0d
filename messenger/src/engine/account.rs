//! The user's account key and the certificates it issues to devices.
//!
//! A user is its **account key** (Ed25519): the address names it, safety
//! numbers compare it, and it signs the device list. Only the primary device
//! (the one that created the user) holds its secret. Every device has its own
//! Part I identity (Ed25519 + X25519, [`IdentityKey`]) generated on the device
//! and never copied; the account key certifies it with a
//! [`DeviceCertificate`] binding all 64 bytes of it to a device id. So a
//! stranger cannot pose as a user's device (the certificate covers the X25519
//! half that PQXDH authenticates), and a removed device holds nothing that
//! could add itself back or sign a list (unlinking is revocation).

use core::fmt;
use sotto_core::Error as CoreError;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use sotto_proto::client as pb;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use sotto_core::identity::IdentityKey;

/// Signature context of a device certificate.
pub const DEVICE_CERTIFICATE_CONTEXT: &[u8] = b"Sotto_v1_DeviceCertificate";

/// The account key pair (primary device only). Zeroized on drop (dalek's
/// signing key zeroizes itself); never printed.
#[derive(Clone)]
pub struct AccountKeyPair {
    signing: SigningKey,
}

impl AccountKeyPair {
    /// A fresh account.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        AccountKeyPair {
            signing: SigningKey::generate(rng),
        }
    }

    /// Rebuilds from the persisted 32-byte seed.
    pub fn from_seed(seed: &[u8]) -> Result<Self> {
        let seed: Zeroizing<[u8; 32]> =
            Zeroizing::new(seed.try_into().map_err(|_| Error::corrupt("app"))?);
        Ok(AccountKeyPair {
            signing: SigningKey::from_bytes(&seed),
        })
    }

    /// The seed, for persistence only.
    pub(crate) fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The public account key: the user id.
    pub fn public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// Signs `message` (a device list transcript or a certificate statement).
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// The signing key, for the relay's device-list transcript helper.
    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// Certifies a device identity as device `device_id` of this account.
    pub fn certify(&self, device_id: u32, identity: &IdentityKey) -> DeviceCertificate {
        let account = self.public();
        let signature = self.sign(&certificate_statement(&account, device_id, identity));
        DeviceCertificate {
            account,
            device_id,
            identity: *identity,
            signature,
        }
    }
}

impl fmt::Debug for AccountKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountKeyPair")
            .field("public", &hex::encode(&self.public()[..8]))
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn certificate_statement(account: &[u8; 32], device_id: u32, identity: &IdentityKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(DEVICE_CERTIFICATE_CONTEXT.len() + 100);
    m.extend_from_slice(DEVICE_CERTIFICATE_CONTEXT);
    m.extend_from_slice(account);
    m.extend_from_slice(&device_id.to_be_bytes());
    m.extend_from_slice(identity.as_bytes());
    m
}

/// Verifies an Ed25519 signature by an account key (strict: no malleable
/// signatures, no small-order keys).
pub(crate) fn verify_account_signature(
    account: &[u8; 32],
    message: &[u8],
    signature: &[u8],
) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(account) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(signature) else {
        return false;
    };
    // Small-order and non-canonically encoded keys are refused.
    !key.is_weak()
        && key.to_edwards().compress().to_bytes() == *account
        && key.verify_strict(message, &sig).is_ok()
}

/// "Device `device_id` of account `account` has identity `identity`",
/// signed by the account key. Verified on decode: a value of this type
/// always carries a valid signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DeviceCertificate {
    /// The account (user id).
    pub account: [u8; 32],
    /// The device id it certifies.
    pub device_id: u32,
    /// The device's Part I identity, all 64 bytes.
    pub identity: IdentityKey,
    signature: [u8; 64],
}

impl DeviceCertificate {
    /// Decodes and verifies a certificate.
    pub fn from_pb(c: &pb::DeviceCertificate) -> Result<Self> {
        let bad = || {
            Error::from(CoreError::BadSignature {
                what: "device certificate",
            })
        };
        let account: [u8; 32] = c
            .account_key
            .as_slice()
            .try_into()
            .map_err(|_| Error::malformed("device certificate"))?;
        let identity = IdentityKey::from_bytes(&c.identity_key)?;
        let signature: [u8; 64] = c.signature.as_slice().try_into().map_err(|_| bad())?;
        if !verify_account_signature(
            &account,
            &certificate_statement(&account, c.device_id, &identity),
            &signature,
        ) {
            return Err(bad());
        }
        Ok(DeviceCertificate {
            account,
            device_id: c.device_id,
            identity,
            signature,
        })
    }

    /// The wire form.
    pub fn to_pb(&self) -> pb::DeviceCertificate {
        pb::DeviceCertificate {
            account_key: self.account.to_vec(),
            device_id: self.device_id,
            identity_key: self.identity.as_bytes().to_vec(),
            signature: self.signature.to_vec(),
        }
    }

    /// True if this certifies exactly `identity` as device `device_id` of
    /// `account` (the identity compared in constant time).
    pub fn binds(&self, account: &[u8; 32], device_id: u32, identity: &IdentityKey) -> bool {
        &self.account == account && self.device_id == device_id && self.identity.ct_eq(identity)
    }
}

impl fmt::Debug for DeviceCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCertificate")
            .field("account", &hex::encode(&self.account[..8]))
            .field("device_id", &self.device_id)
            .field("identity", &self.identity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand_core::OsRng;
    use sotto_core::identity::IdentityKeyPair;

    #[test]
    fn a_certificate_binds_all_64_bytes_of_the_identity() {
        let account = AccountKeyPair::generate(&mut OsRng);
        let device = IdentityKeyPair::generate(&mut OsRng);
        let cert = account.certify(3, device.public());
        let back = DeviceCertificate::from_pb(&cert.to_pb()).unwrap();
        assert!(back.binds(&account.public(), 3, device.public()));

        // The attack of the issue: the genuine Ed25519 half with another
        // X25519 half. The certificate no longer verifies.
        let mallory = IdentityKeyPair::generate(&mut OsRng);
        let mut forged = cert.to_pb();
        forged.identity_key[32..].copy_from_slice(&mallory.public().as_bytes()[32..]);
        assert!(matches!(
            DeviceCertificate::from_pb(&forged),
            Err(Error::Core(CoreError::BadSignature { .. }))
        ));
        // Another device id, another account: refused too.
        let mut other_id = cert.to_pb();
        other_id.device_id = 4;
        assert!(DeviceCertificate::from_pb(&other_id).is_err());
        let stranger = AccountKeyPair::generate(&mut OsRng);
        let mut other_account = cert.to_pb();
        other_account.account_key = stranger.public().to_vec();
        assert!(DeviceCertificate::from_pb(&other_account).is_err());
    }

    #[test]
    fn debug_hides_the_account_secret() {
        let account = AccountKeyPair::generate(&mut OsRng);
        let seed = account.seed();
        let shown = format!("{account:?}");
        assert!(shown.contains("redacted"));
        assert!(!shown.contains(&hex::encode(&seed[..8])));
    }
}

#[cfg(test)]
mod vectors {
    //! The known-answer values printed in PROTOCOL.md III.2.
    #![allow(clippy::unwrap_used)]
    use prost::Message as _;

    use super::*;
    use crate::engine::devices::{DeviceEntry, DeviceList};
    use crate::engine::envelope::sender_mac;
    use sotto_core::identity::IdentityKeyPair;
    use sotto_core::keys::Secret32;

    pub(crate) fn vector() -> String {
        let account = AccountKeyPair::from_seed(&[0x21; 32]).unwrap();
        let device = IdentityKeyPair::from_secret_bytes(&[0x0b; 32], &[0x0c; 32]).unwrap();
        let cert = account.certify(2, device.public());
        let list = DeviceList {
            version: 3,
            devices: vec![DeviceEntry {
                device_id: 2,
                mailbox: sotto_relay::MailboxId([0x09; 32]),
                identity: *device.public(),
            }],
            next_device_id: 3,
        };
        let signed = list.sign(&account);
        let mac = sender_mac(
            &Secret32::from_bytes([0x44; 32]),
            &account.public(),
            2,
            b"message",
        );
        format!(
            "account={} certificate.signature={} list.body={} list.signature={} mac={}",
            hex::encode(account.public()),
            hex::encode(&cert.to_pb().signature),
            hex::encode(list.body().encode_to_vec()),
            hex::encode(&signed.signature),
            hex::encode(mac),
        )
    }

    #[test]
    fn certificate_list_and_mac_known_answer() {
        assert_eq!(vector(), VECTOR);
    }

    const VECTOR: &str =
        "account=884b8857f4eaa1613c61504db34d4beaf346517a0e31de3cddd4d9b4201d9d0b \
        certificate.signature=21d2d2ff1a04cebba4a99cc67d1c5db36a00ede3ae9ef14c176ac1c7bf770653\
        b86dae3317a422be908e1075b1badcf0d99db9e3e37dbe6024af4bd58254ee07 \
        list.body=0a660802122009090909090909090909090909090909090909090909090909090909090909091a40\
        66be7e332c7a453332bd9d0a7f7db055f5c5ef1a06ada66d98b39fb6810c473a97c3b10b4d6c133a\
        78ea5dcc1cf6421d3f81ae37b1f628ce14ca6fce7730f3331003 \
        list.signature=109854c842e267617209586ba8c243978568eb482d55c3385c0d5ee724d6a794\
        b80ba10bbac838b0b5c01e84fd9d2d5d827ab622c5b6022f0559a58b90d5ef06 \
        mac=861a6e18d622ce5ccd9554601e30c40a";
}
