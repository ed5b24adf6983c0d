//! Linking a new device to an existing user, confirmed on both screens.
//!
//! 1. The new device creates its mailbox key and a one-off X25519 link key,
//!    connects to the user's home relay and shows a link code (text or QR):
//!    `link:` + mailbox key hex + link public key hex.
//! 2. The existing device reads the code, picks an ephemeral X25519 key,
//!    sends `LinkOffer{ephemeral}` to the new device's mailbox, and both
//!    derive the link key and six confirmation digits from the shared secret.
//!    Both screens show the digits; a swapped code gives different digits.
//! 3. Once the user confirms on the existing device, it sends `LinkGrant`:
//!    the identity secrets and the new device id, sealed with the link key.
//! 4. Once the user confirms on the new device, it opens the grant, creates
//!    its device with the shared identity, publishes its prekeys and then
//!    the user's device list with itself added (signed by the identity key),
//!    so contacts only see it once it can receive.
//!
//! Key derivation: `HKDF-SHA256(ikm = X25519(link, ephemeral), salt = empty,
//! info = "sotto-link/v1" || mailbox || link public || ephemeral public)`,
//! 40 bytes: a ChaCha20-Poly1305 key (32) and the digits (8, as a big-endian
//! u64 modulo 1,000,000, zero-padded to six).

use std::sync::Arc;
use std::time::Duration;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::SigningKey;
use prost::Message as _;
use rand_core::{OsRng, RngCore};
use sha2::Sha256;
use sotto_proto::client as pb;
use sotto_relay::{MailboxId, Pushed, RelayClient};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use super::address::{hex_lower, parse_hex32, RelayAddress};
use super::devices::DeviceEntry;
use super::{outbound, Client};
use crate::device::{unix_now, Device};
use crate::error::{Error, Result};
use crate::identity::IdentityKeyPair;
use crate::store::Store;

const CODE_PREFIX: &str = "link:";
const INFO: &[u8] = b"sotto-link/v1";

/// Link key and confirmation digits.
struct LinkSecret {
    key: Zeroizing<[u8; 32]>,
    digits: String,
}

fn derive(
    shared: &[u8; 32],
    mailbox: &[u8; 32],
    link: &[u8; 32],
    eph: &[u8; 32],
) -> Result<LinkSecret> {
    let mut info = INFO.to_vec();
    info.extend_from_slice(mailbox);
    info.extend_from_slice(link);
    info.extend_from_slice(eph);
    let mut okm = Zeroizing::new([0u8; 40]);
    hkdf::Hkdf::<Sha256>::new(None, shared)
        .expand(&info, okm.as_mut())
        .map_err(|_| Error::InvalidKey { what: "link key" })?;
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&okm[..32]);
    let mut d = [0u8; 8];
    d.copy_from_slice(&okm[32..]);
    Ok(LinkSecret {
        key,
        digits: format!("{:06}", u64::from_be_bytes(d) % 1_000_000),
    })
}

fn agree(secret: &StaticSecret, public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(Error::InvalidKey { what: "link key" });
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// A device being linked (the new device's side).
pub struct Linking<S: Store + Send + 'static> {
    store: Option<S>,
    home: RelayAddress,
    mailbox: SigningKey,
    link: StaticSecret,
    conn: Arc<RelayClient>,
    secret: Option<LinkSecret>,
    subscription: Option<sotto_relay::Subscription>,
}

impl<S: Store + Send + 'static> std::fmt::Debug for Linking<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linking")
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

impl<S: Store + Send + 'static> Linking<S> {
    /// Step 1: prepares the new device (empty `store`) on the user's home relay.
    pub async fn start(store: S, home: RelayAddress) -> Result<Self> {
        let mailbox = SigningKey::generate(&mut OsRng);
        let link = StaticSecret::random_from_rng(OsRng);
        let conn = super::relays::Relays::new(mailbox.clone())
            .get(&home)
            .await?;
        Ok(Linking {
            store: Some(store),
            home,
            mailbox,
            link,
            conn,
            secret: None,
            subscription: None,
        })
    }

    /// The code to show (as text or QR) to the existing device.
    pub fn code(&self) -> String {
        format!(
            "{CODE_PREFIX}{}{}",
            hex_lower(self.mailbox.verifying_key().as_bytes()),
            hex_lower(PublicKey::from(&self.link).as_bytes())
        )
    }

    async fn next_link_body(&mut self, timeout: Duration) -> Result<pb::envelope::Body> {
        if self.subscription.is_none() {
            self.subscription = Some(self.conn.subscribe().await?);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let sub = self.subscription.as_mut().ok_or(Error::Timeout)?;
            let push = tokio::time::timeout_at(deadline, sub.next())
                .await
                .map_err(|_| Error::Timeout)??;
            match push {
                None => return Err(Error::Timeout),
                Some(Pushed::Envelope(e)) => {
                    if let Ok(pb::Envelope {
                        version: 1,
                        body:
                            Some(
                                body @ (pb::envelope::Body::LinkOffer(_)
                                | pb::envelope::Body::LinkGrant(_)),
                            ),
                    }) = pb::Envelope::decode(e.payload.as_slice())
                    {
                        self.conn.ack(&[e.id]).await?;
                        return Ok(body);
                    }
                    // Anything else waits for the linked client (not acked).
                }
                Some(_) => {}
            }
        }
    }

    /// Step 2: waits for the existing device's offer; returns the six digits
    /// to compare with the ones it shows.
    pub async fn wait_offer(&mut self, timeout: Duration) -> Result<String> {
        loop {
            if let pb::envelope::Body::LinkOffer(o) = self.next_link_body(timeout).await? {
                let eph = <[u8; 32]>::try_from(o.ephemeral.as_slice())
                    .map_err(|_| Error::Malformed { what: "link offer" })?;
                let shared = agree(&self.link, &eph)?;
                let secret = derive(
                    &shared,
                    self.mailbox.verifying_key().as_bytes(),
                    PublicKey::from(&self.link).as_bytes(),
                    &eph,
                )?;
                let digits = secret.digits.clone();
                self.secret = Some(secret);
                return Ok(digits);
            }
        }
    }

    /// Step 4: the user confirmed the digits here; waits for the grant and
    /// becomes a full client of the user.
    pub async fn finish(mut self, timeout: Duration) -> Result<Client<S>> {
        let secret = self
            .secret
            .take()
            .ok_or(Error::InvalidArgument("no offer yet"))?;
        let grant = loop {
            if let pb::envelope::Body::LinkGrant(g) = self.next_link_body(timeout).await? {
                break g;
            }
        };
        let nonce: [u8; 12] = grant
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| Error::Malformed { what: "link grant" })?;
        let plain = Zeroizing::new(
            ChaCha20Poly1305::new(Key::from_slice(secret.key.as_ref()))
                .decrypt(Nonce::from_slice(&nonce), grant.ciphertext.as_slice())
                .map_err(|_| Error::DecryptFailed)?,
        );
        let mut secrets =
            pb::LinkSecrets::decode(plain.as_slice()).map_err(|_| Error::Malformed {
                what: "link secrets",
            })?;
        let identity = IdentityKeyPair::from_secret_bytes(
            &secrets.identity_signing_secret,
            &secrets.identity_dh_secret,
        );
        secrets.identity_signing_secret.zeroize();
        secrets.identity_dh_secret.zeroize();
        let identity = identity?;
        let store = self
            .store
            .take()
            .ok_or(Error::InvalidArgument("already finished"))?;
        let device = Device::create_with_identity(
            store,
            identity,
            secrets.device_id,
            unix_now(),
            &mut OsRng,
        )?;
        self.subscription = None;
        self.conn.connection().close(0u32.into(), b"linked");
        let client = Client::setup(device, self.mailbox.clone(), self.home.clone())?;
        let inner = client.inner().clone();
        let conn = inner.relay(&inner.me.relay).await?;
        super::publish_prekeys(&inner, &conn, true).await?;
        // Join the user's device list, now that this device can receive.
        let mut list = outbound::fetch_devices(&conn, &inner.me).await?;
        list.devices.retain(|d| d.device_id != secrets.device_id);
        list.devices.push(DeviceEntry {
            device_id: secrets.device_id,
            mailbox: MailboxId(self.mailbox.verifying_key().to_bytes()),
        });
        list.devices.sort_by_key(|d| d.device_id);
        list.version += 1;
        let signed = inner.with_device(|d| Ok(list.sign(d.identity_pair())))?;
        conn.publish_device_list(signed).await?;
        Ok(client.start())
    }
}

/// A link in progress on the existing device.
pub struct PendingLink {
    mailbox: MailboxId,
    secret: LinkSecret,
}

impl std::fmt::Debug for PendingLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLink")
            .field("mailbox", &self.mailbox)
            .finish_non_exhaustive()
    }
}

impl PendingLink {
    /// The six digits to compare with the new device's.
    pub fn digits(&self) -> &str {
        &self.secret.digits
    }
}

impl<S: Store + Send + 'static> Client<S> {
    /// Step 2 on the existing device: reads the new device's code and sends
    /// it an offer; compare [`PendingLink::digits`] on both screens.
    pub async fn link_device(&self, code: &str) -> Result<PendingLink> {
        let hex = code
            .trim()
            .strip_prefix(CODE_PREFIX)
            .ok_or(Error::InvalidAddress("not a link code"))?;
        if hex.len() != 128 || !hex.is_ascii() {
            return Err(Error::InvalidAddress("link code length"));
        }
        let mailbox = parse_hex32(&hex[..64]).ok_or(Error::InvalidAddress("link code"))?;
        let link = parse_hex32(&hex[64..]).ok_or(Error::InvalidAddress("link code"))?;
        let eph = StaticSecret::random_from_rng(OsRng);
        let eph_pub = PublicKey::from(&eph);
        let shared = agree(&eph, &link)?;
        let secret = derive(&shared, &mailbox, &link, eph_pub.as_bytes())?;
        let offer = pb::Envelope {
            version: 1,
            body: Some(pb::envelope::Body::LinkOffer(pb::LinkOffer {
                ephemeral: eph_pub.as_bytes().to_vec(),
            })),
        };
        let conn = self.inner.relay(&self.inner.me.relay).await?;
        conn.send(&MailboxId(mailbox), offer.encode_to_vec())
            .await?;
        Ok(PendingLink {
            mailbox: MailboxId(mailbox),
            secret,
        })
    }

    /// Step 3 on the existing device: the user confirmed the digits; sends
    /// the identity to the new device, which joins the device list itself.
    /// Returns the new device's id.
    pub async fn confirm_link(&self, pending: PendingLink) -> Result<u32> {
        let conn = self.inner.relay(&self.inner.me.relay).await?;
        let list = outbound::fetch_devices(&conn, &self.inner.me).await?;
        let device_id = list.devices.iter().map(|d| d.device_id).max().unwrap_or(0) + 1;
        let mut secrets = self.inner.with_device(|d| {
            let id = d.identity_pair();
            Ok(pb::LinkSecrets {
                identity_signing_secret: id.signing_secret().to_vec(),
                identity_dh_secret: id.dh().secret_bytes().to_vec(),
                device_id,
                device_list_version: list.version,
            })
        })?;
        let plain = Zeroizing::new(secrets.encode_to_vec());
        secrets.identity_signing_secret.zeroize();
        secrets.identity_dh_secret.zeroize();
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = ChaCha20Poly1305::new(Key::from_slice(pending.secret.key.as_ref()))
            .encrypt(Nonce::from_slice(&nonce), plain.as_slice())
            .map_err(|_| Error::InvalidKey { what: "link key" })?;
        let grant = pb::Envelope {
            version: 1,
            body: Some(pb::envelope::Body::LinkGrant(pb::LinkGrant {
                nonce: nonce.to_vec(),
                ciphertext,
            })),
        };
        conn.send(&pending.mailbox, grant.encode_to_vec()).await?;
        Ok(device_id)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The vector printed in PROTOCOL.md §III.6.
    #[test]
    fn link_key_known_answer() {
        let link = StaticSecret::from([1u8; 32]);
        let eph = StaticSecret::from([2u8; 32]);
        let (lp, ep) = (PublicKey::from(&link), PublicKey::from(&eph));
        let s = derive(
            &agree(&eph, lp.as_bytes()).unwrap(),
            &[9u8; 32],
            lp.as_bytes(),
            ep.as_bytes(),
        )
        .unwrap();
        let got = format!(
            "link_pub={} eph_pub={} key={} digits={}",
            hex_lower(lp.as_bytes()),
            hex_lower(ep.as_bytes()),
            hex_lower(s.key.as_ref()),
            s.digits
        );
        assert_eq!(got, LINK_VECTOR);
    }

    const LINK_VECTOR: &str =
        "link_pub=a4e09292b651c278b9772c569f5fa9bb13d906b46ab68c9df9dc2b4409f8a209 \
        eph_pub=ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59 \
        key=f02c211c2d239a6c0b8d5ec8f574f198d59741b85a48e5f063c7a662fdd30f4b digits=092231";

    #[test]
    fn both_sides_derive_the_same_key_and_digits() {
        let link = StaticSecret::random_from_rng(OsRng);
        let eph = StaticSecret::random_from_rng(OsRng);
        let (lp, ep) = (PublicKey::from(&link), PublicKey::from(&eph));
        let mb = [9u8; 32];
        let a = derive(
            &agree(&link, ep.as_bytes()).unwrap(),
            &mb,
            lp.as_bytes(),
            ep.as_bytes(),
        )
        .unwrap();
        let b = derive(
            &agree(&eph, lp.as_bytes()).unwrap(),
            &mb,
            lp.as_bytes(),
            ep.as_bytes(),
        )
        .unwrap();
        assert_eq!(a.digits, b.digits);
        assert_eq!(a.digits.len(), 6);
        assert_eq!(*a.key, *b.key);
        // Another ephemeral key (a swapped code) changes the digits' input.
        let other = StaticSecret::random_from_rng(OsRng);
        let c = derive(
            &agree(&other, lp.as_bytes()).unwrap(),
            &mb,
            lp.as_bytes(),
            PublicKey::from(&other).as_bytes(),
        )
        .unwrap();
        assert_ne!(*a.key, *c.key);
    }
}
