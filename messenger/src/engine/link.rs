//! Linking a new device to an existing user, confirmed on both screens.
//! No secret key ever crosses: the new device keeps the identity it made,
//! and the primary device (the only one holding the account key) certifies it.
//!
//! 1. The new device N creates its mailbox key `M`, a one-off X25519 link
//!    key `L`, its own identity `IK_N` and a secret nonce `r`, connects to
//!    the user's home relay and shows a link code (text or QR):
//!    `link:` + hex(M) + hex(L) + hex(IK_N) + hex(SHA-256(label || r)).
//! 2. The primary device P reads the code, picks the next device id and an
//!    ephemeral X25519 key `E`, opens a one-off reply mailbox `T`, and sends
//!    `LinkOffer{E, device_id, T}` to `M` ([`Messenger::link_device`]).
//! 3. N answers the first valid offer, and only that one, with
//!    `LinkReveal{r}` to `T` ([`Linking::wait_offer`]); P checks `r`
//!    against the commitment in the code ([`PendingLink::wait_digits`]). Both derive the link key and six digits from the shared secret
//!    and everything above, `r` included. Because `r` was committed before
//!    any offer and is revealed only after N has taken one, no one in the
//!    middle (someone who swapped the code P read, or who writes to `M`) can
//!    choose its values to make two different runs show the same digits:
//!    a match by chance is one in a million.
//! 4. Once the user confirms on P, it signs a device list with N added
//!    (version + 1) and a certificate for `IK_N`, and sends them in
//!    `LinkGrant`, sealed with the link key.
//! 5. Once the user confirms on N, it opens the grant, checks that both
//!    name exactly its own identity, mailbox and id, creates its device,
//!    publishes its prekeys and then the signed list, so contacts only see
//!    it once it can receive.
//!
//! Junk on the way (undecodable offers, reveals that do not open the
//! commitment, grants that do not open) is skipped, never fatal. P keeps
//! durable counters of the device ids and list versions it ever issued, so
//! a grant whose device never joined leaves neither its id nor its version
//! free for anything else.
//!
//! Key derivation: `HKDF-SHA256(ikm = X25519(L, E), salt = empty, info =
//! "sotto-link/v2" || M || L_pub || E_pub || IK_N || u32be(device_id) || T ||
//! r)`, 40 bytes: a ChaCha20-Poly1305 key (32) and the digits (8, as a
//! big-endian u64 modulo 1,000,000, zero-padded to six). The grant is sealed
//! with a random 12-byte nonce and associated data
//! `"sotto-link/v2 grant" || M`.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use prost::Message as _;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use sotto_core::identity::IdentityKey;
use sotto_core::Error as CoreError;
use sotto_proto::client as pb;
use sotto_proto::relay::SignedDeviceList;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::account::DeviceCertificate;
use super::address::{parse_hex32, UserAddress};
use super::devices::DeviceList;
use crate::error::{Error, Result};

const CODE_PREFIX: &str = "link:";
const INFO: &[u8] = b"sotto-link/v2";
const GRANT_AD: &[u8] = b"sotto-link/v2 grant";
const COMMITMENT_LABEL: &[u8] = b"sotto-link/v2 commitment";

/// Link key and confirmation digits.
pub(crate) struct LinkSecret {
    pub(crate) key: Zeroizing<[u8; 32]>,
    pub(crate) digits: String,
}

/// The public values both sides bind into the link key.
pub(crate) struct Transcript<'a> {
    pub(crate) mailbox: &'a [u8; 32],
    pub(crate) link: &'a [u8; 32],
    pub(crate) eph: &'a [u8; 32],
    pub(crate) identity: &'a IdentityKey,
    pub(crate) device_id: u32,
    pub(crate) reply_to: &'a [u8; 32],
    pub(crate) nonce: &'a [u8; 32],
}

pub(crate) fn derive(shared: &[u8; 32], t: &Transcript<'_>) -> Result<LinkSecret> {
    let mut info = INFO.to_vec();
    info.extend_from_slice(t.mailbox);
    info.extend_from_slice(t.link);
    info.extend_from_slice(t.eph);
    info.extend_from_slice(t.identity.as_bytes());
    info.extend_from_slice(&t.device_id.to_be_bytes());
    info.extend_from_slice(t.reply_to);
    info.extend_from_slice(t.nonce);
    let mut okm = Zeroizing::new([0u8; 40]);
    hkdf::Hkdf::<Sha256>::new(None, shared)
        .expand(&info, okm.as_mut())
        .map_err(|_| CoreError::InvalidKey { what: "link key" })?;
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&okm[..32]);
    let mut d = [0u8; 8];
    d.copy_from_slice(&okm[32..]);
    Ok(LinkSecret {
        key,
        digits: format!("{:06}", u64::from_be_bytes(d) % 1_000_000),
    })
}

/// `SHA-256("sotto-link/v2 commitment" || nonce)`.
pub(crate) fn commitment(nonce: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(COMMITMENT_LABEL);
    h.update(nonce);
    h.finalize().into()
}

pub(crate) fn agree(secret: &StaticSecret, public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(CoreError::InvalidKey { what: "link key" }.into());
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

pub(crate) fn grant_ad(mailbox: &[u8; 32]) -> Vec<u8> {
    [GRANT_AD, mailbox.as_slice()].concat()
}

/// What a checked grant gives the new device.
pub(crate) struct Granted {
    pub(crate) account: [u8; 32],
    pub(crate) certificate: DeviceCertificate,
    pub(crate) signed: SignedDeviceList,
    pub(crate) list: DeviceList,
    pub(crate) contacts: Vec<UserAddress>,
}

/// Most accepted contacts a grant carries.
pub(crate) const MAX_GRANTED_CONTACTS: usize = 10_000;

/// What a link code names: the new device's mailbox, link key, identity and
/// nonce commitment.
pub(crate) struct Code {
    pub(crate) mailbox: [u8; 32],
    pub(crate) link: [u8; 32],
    pub(crate) identity: IdentityKey,
    pub(crate) commitment: [u8; 32],
}

/// Parses `link:` + hex(M) + hex(L) + hex(IK_N) + hex(commitment).
pub(crate) fn parse_code(code: &str) -> Result<Code> {
    let hex = code
        .trim()
        .strip_prefix(CODE_PREFIX)
        .ok_or(Error::InvalidAddress("not a link code"))?;
    if hex.len() != 320 || !hex.is_ascii() {
        return Err(Error::InvalidAddress("link code length"));
    }
    let bad = || Error::InvalidAddress("link code");
    let part = |i: usize| parse_hex32(&hex[64 * i..64 * (i + 1)]).ok_or_else(bad);
    let mut id = [0u8; 64];
    id[..32].copy_from_slice(&part(2)?);
    id[32..].copy_from_slice(&part(3)?);
    Ok(Code {
        mailbox: part(0)?,
        link: part(1)?,
        identity: IdentityKey::from_bytes(&id).map_err(|_| bad())?,
        commitment: part(4)?,
    })
}

/// The code the new device shows: `link:` + hex(M) + hex(L) + hex(IK_N) +
/// hex(commitment(r)).
pub(crate) fn code_string(
    mailbox: &[u8; 32],
    link: &StaticSecret,
    identity: &IdentityKey,
    nonce: &[u8; 32],
) -> String {
    format!(
        "{CODE_PREFIX}{}{}{}{}",
        hex::encode(mailbox),
        hex::encode(PublicKey::from(link).as_bytes()),
        hex::encode(identity.as_bytes()),
        hex::encode(commitment(nonce))
    )
}

/// True if `nonce` opens the code's commitment (constant time).
pub(crate) fn opens(code: &Code, nonce: &[u8; 32]) -> bool {
    bool::from(commitment(nonce).ct_eq(&code.commitment))
}

/// Seals a grant body under the link key, for the new device's mailbox.
pub(crate) fn seal_grant(
    key: &[u8; 32],
    mailbox: &[u8; 32],
    body: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Result<pb::LinkGrant> {
    let mut nonce = [0u8; 12];
    rng.fill_bytes(&mut nonce);
    let ciphertext = ChaCha20Poly1305::new(Key::from_slice(key))
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: body,
                aad: &grant_ad(mailbox),
            },
        )
        .map_err(|_| CoreError::InvalidKey { what: "link key" })?;
    Ok(pb::LinkGrant {
        nonce: nonce.to_vec(),
        ciphertext,
    })
}

/// Opens a grant sealed for `mailbox` under the link key; `None` if it is
/// not one for this link (junk, skipped).
pub(crate) fn open_grant(
    key: &[u8; 32],
    mailbox: &[u8; 32],
    grant: &pb::LinkGrant,
) -> Option<Zeroizing<Vec<u8>>> {
    let nonce: [u8; 12] = grant.nonce.as_slice().try_into().ok()?;
    ChaCha20Poly1305::new(Key::from_slice(key))
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &grant.ciphertext,
                aad: &grant_ad(mailbox),
            },
        )
        .ok()
        .map(Zeroizing::new)
}

/// Checks an opened (so authentic: only the primary holds the link key)
/// grant for the device `identity` was offered `device_id` with at
/// `mailbox`: anything wrong in it is an error, not junk.
pub(crate) fn check_grant(
    identity: &IdentityKey,
    device_id: u32,
    mailbox: &[u8; 32],
    plain: &[u8],
) -> Result<Granted> {
    let bad = Error::malformed;
    let body = pb::LinkGrantBody::decode(plain).map_err(|_| bad("link grant"))?;
    let account: [u8; 32] = body
        .account_key
        .as_slice()
        .try_into()
        .map_err(|_| bad("link grant account"))?;
    let certificate = body
        .certificate
        .as_ref()
        .ok_or(bad("link grant certificate"))
        .and_then(DeviceCertificate::from_pb)?;
    if !certificate.binds(&account, device_id, identity) {
        return Err(bad("link grant certificate"));
    }
    let signed = SignedDeviceList::decode(body.signed_list.as_slice())
        .map_err(|_| bad("link grant list"))?;
    let list = DeviceList::verify(&account, &signed)?;
    match list.get(device_id) {
        Some(e) if e.mailbox.0 == *mailbox && e.identity.ct_eq(identity) => {}
        _ => return Err(bad("link grant list")),
    }
    if body.contacts.len() > MAX_GRANTED_CONTACTS {
        return Err(bad("link grant contacts"));
    }
    let contacts = body
        .contacts
        .iter()
        .filter_map(|c| c.parse::<UserAddress>().ok())
        .collect();
    Ok(Granted {
        account,
        certificate,
        signed,
        list,
        contacts,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand_core::OsRng;
    use sotto_core::identity::IdentityKeyPair;

    fn vector_identity() -> IdentityKey {
        let id = IdentityKeyPair::from_secret_bytes(&[0x0b; 32], &[0x0c; 32]).unwrap();
        *id.public()
    }

    /// The vector printed in PROTOCOL.md §III.9.
    #[test]
    fn link_key_known_answer() {
        let link = StaticSecret::from([1u8; 32]);
        let eph = StaticSecret::from([2u8; 32]);
        let (lp, ep) = (PublicKey::from(&link), PublicKey::from(&eph));
        let identity = vector_identity();
        let nonce = [0x0d; 32];
        let s = derive(
            &agree(&eph, lp.as_bytes()).unwrap(),
            &Transcript {
                mailbox: &[9u8; 32],
                link: lp.as_bytes(),
                eph: ep.as_bytes(),
                identity: &identity,
                device_id: 2,
                reply_to: &[0x0e; 32],
                nonce: &nonce,
            },
        )
        .unwrap();
        let got = format!(
            "link_pub={} eph_pub={} commitment={} key={} digits={}",
            hex::encode(lp.as_bytes()),
            hex::encode(ep.as_bytes()),
            hex::encode(commitment(&nonce)),
            hex::encode(*s.key),
            s.digits
        );
        assert_eq!(got, LINK_VECTOR);
    }

    const LINK_VECTOR: &str =
        "link_pub=a4e09292b651c278b9772c569f5fa9bb13d906b46ab68c9df9dc2b4409f8a209 \
        eph_pub=ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59 \
        commitment=9c502854d53b1fae372e23bb8cb46e29063d05415abdc255c0ee78152073a073 \
        key=1a173aad0e3cbd224ee335f3d82e233b34feefee0eecbe6285aa4c4bbddb7842 digits=897168";

    #[test]
    fn both_sides_derive_the_same_key_and_digits() {
        let link = StaticSecret::random_from_rng(OsRng);
        let eph = StaticSecret::random_from_rng(OsRng);
        let (lp, ep) = (PublicKey::from(&link), PublicKey::from(&eph));
        let identity = vector_identity();
        let (mailbox, reply, nonce) = ([9u8; 32], [8u8; 32], [7u8; 32]);
        let t = |device_id, nonce| Transcript {
            mailbox: &mailbox,
            link: lp.as_bytes(),
            eph: ep.as_bytes(),
            identity: &identity,
            device_id,
            reply_to: &reply,
            nonce,
        };
        let a = derive(&agree(&link, ep.as_bytes()).unwrap(), &t(2, &nonce)).unwrap();
        let b = derive(&agree(&eph, lp.as_bytes()).unwrap(), &t(2, &nonce)).unwrap();
        assert_eq!(a.digits, b.digits);
        assert_eq!(a.digits.len(), 6);
        assert_eq!(*a.key, *b.key);
        // Another device id or nonce changes the key.
        let c = derive(&agree(&link, ep.as_bytes()).unwrap(), &t(3, &nonce)).unwrap();
        let d = derive(&agree(&link, ep.as_bytes()).unwrap(), &t(2, &[6u8; 32])).unwrap();
        assert_ne!(*a.key, *c.key);
        assert_ne!(*a.key, *d.key);
    }

    #[test]
    fn codes_round_trip_and_junk_is_refused() {
        let identity = vector_identity();
        let code = format!(
            "link:{}{}{}{}",
            hex::encode([9; 32]),
            hex::encode([1; 32]),
            hex::encode(identity.as_bytes()),
            hex::encode([5; 32])
        );
        let c = parse_code(&code).unwrap();
        assert_eq!(
            (c.mailbox, c.link, c.commitment),
            ([9; 32], [1; 32], [5; 32])
        );
        assert!(c.identity.ct_eq(&identity));
        for bad in [
            "",
            "link:",
            &code[..code.len() - 2],
            &code.replace("link:", "lnk:"),
        ] {
            assert!(parse_code(bad).is_err(), "{bad}");
        }
    }
}
