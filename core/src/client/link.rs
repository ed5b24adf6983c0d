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
//!    `LinkOffer{E, device_id, T}` to `M` ([`Client::link_device`]).
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

use std::sync::Arc;
use std::time::Duration;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::SigningKey;
use prost::Message as _;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use sotto_proto::client as pb;
use sotto_proto::relay::SignedDeviceList;
use sotto_relay::{MailboxId, Pushed, RelayClient};
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::account::DeviceCertificate;
use super::address::{hex_lower, parse_hex32, RelayAddress, UserAddress};
use super::devices::{DeviceEntry, DeviceList};
use super::{outbound, records, Client};
use crate::device::{unix_now, Device};
use crate::error::{Error, Result};
use crate::identity::{IdentityKey, IdentityKeyPair};
use crate::store::Store;

const CODE_PREFIX: &str = "link:";
const INFO: &[u8] = b"sotto-link/v2";
const GRANT_AD: &[u8] = b"sotto-link/v2 grant";
const COMMITMENT_LABEL: &[u8] = b"sotto-link/v2 commitment";

/// Longest the primary waits for the new device's reveal after its offer.
pub const LINK_REVEAL_TIMEOUT: Duration = Duration::from_secs(60);

/// Link key and confirmation digits.
struct LinkSecret {
    key: Zeroizing<[u8; 32]>,
    digits: String,
}

/// The public values both sides bind into the link key.
struct Transcript<'a> {
    mailbox: &'a [u8; 32],
    link: &'a [u8; 32],
    eph: &'a [u8; 32],
    identity: &'a IdentityKey,
    device_id: u32,
    reply_to: &'a [u8; 32],
    nonce: &'a [u8; 32],
}

fn derive(shared: &[u8; 32], t: &Transcript<'_>) -> Result<LinkSecret> {
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

/// `SHA-256("sotto-link/v2 commitment" || nonce)`.
fn commitment(nonce: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(COMMITMENT_LABEL);
    h.update(nonce);
    h.finalize().into()
}

fn agree(secret: &StaticSecret, public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(Error::InvalidKey { what: "link key" });
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

fn grant_ad(mailbox: &[u8; 32]) -> Vec<u8> {
    [GRANT_AD, mailbox.as_slice()].concat()
}

/// An offer accepted on the new device: the link key and the id assigned.
struct Offer {
    secret: LinkSecret,
    device_id: u32,
}

/// A device being linked (the new device's side).
pub struct Linking<S: Store + Send + 'static> {
    store: Option<S>,
    home: RelayAddress,
    mailbox: SigningKey,
    link: StaticSecret,
    identity: IdentityKeyPair,
    nonce: Zeroizing<[u8; 32]>,
    conn: Arc<RelayClient>,
    offer: Option<Offer>,
    subscription: Option<sotto_relay::Subscription>,
}

impl<S: Store + Send + 'static> std::fmt::Debug for Linking<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linking")
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

/// Waits on `sub` for the next link envelope (acknowledging it); other
/// envelopes are left for their owner (not acknowledged).
async fn next_link_body(
    conn: &RelayClient,
    sub: &mut sotto_relay::Subscription,
    deadline: tokio::time::Instant,
) -> Result<pb::envelope::Body> {
    loop {
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
                            | pb::envelope::Body::LinkGrant(_)
                            | pb::envelope::Body::LinkReveal(_)),
                        ),
                }) = pb::Envelope::decode(e.payload.as_slice())
                {
                    conn.ack(&[e.id]).await?;
                    return Ok(body);
                }
            }
            Some(_) => {}
        }
    }
}

impl<S: Store + Send + 'static> Linking<S> {
    /// Step 1: prepares the new device (empty `store`) on the user's home relay.
    pub async fn start(store: S, home: RelayAddress) -> Result<Self> {
        let mailbox = SigningKey::generate(&mut OsRng);
        let link = StaticSecret::random_from_rng(OsRng);
        let identity = IdentityKeyPair::generate(&mut OsRng);
        let mut nonce = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(nonce.as_mut());
        let conn = super::relays::Relays::new(mailbox.clone())
            .get(&home)
            .await?;
        Ok(Linking {
            store: Some(store),
            home,
            mailbox,
            link,
            identity,
            nonce,
            conn,
            offer: None,
            subscription: None,
        })
    }

    /// The code to show (as text or QR) to the primary device.
    pub fn code(&self) -> String {
        format!(
            "{CODE_PREFIX}{}{}{}{}",
            hex_lower(self.mailbox.verifying_key().as_bytes()),
            hex_lower(PublicKey::from(&self.link).as_bytes()),
            hex_lower(self.identity.public().as_bytes()),
            hex_lower(&commitment(&self.nonce))
        )
    }

    async fn next_body(&mut self, deadline: tokio::time::Instant) -> Result<pb::envelope::Body> {
        if self.subscription.is_none() {
            self.subscription = Some(self.conn.subscribe().await?);
        }
        let sub = self.subscription.as_mut().ok_or(Error::Timeout)?;
        next_link_body(&self.conn, sub, deadline).await
    }

    /// Step 3: waits for the primary device's offer, reveals this device's
    /// nonce to it, and returns the six digits to compare with the ones it
    /// shows. Only the first valid offer is answered (later ones are
    /// ignored); offers that do not parse are skipped.
    pub async fn wait_offer(&mut self, timeout: Duration) -> Result<String> {
        if let Some(o) = &self.offer {
            return Ok(o.secret.digits.clone());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pb::envelope::Body::LinkOffer(o) = self.next_body(deadline).await? else {
                continue;
            };
            let (Ok(eph), Ok(reply_to)) = (
                <[u8; 32]>::try_from(o.ephemeral.as_slice()),
                <[u8; 32]>::try_from(o.reply_to.as_slice()),
            ) else {
                continue;
            };
            let Ok(shared) = agree(&self.link, &eph) else {
                continue;
            };
            let secret = derive(
                &shared,
                &Transcript {
                    mailbox: self.mailbox.verifying_key().as_bytes(),
                    link: PublicKey::from(&self.link).as_bytes(),
                    eph: &eph,
                    identity: self.identity.public(),
                    device_id: o.device_id,
                    reply_to: &reply_to,
                    nonce: &self.nonce,
                },
            )?;
            let reveal = pb::Envelope {
                version: 1,
                body: Some(pb::envelope::Body::LinkReveal(pb::LinkReveal {
                    nonce: self.nonce.to_vec(),
                })),
            };
            self.conn
                .send(&MailboxId(reply_to), reveal.encode_to_vec())
                .await?;
            let digits = secret.digits.clone();
            self.offer = Some(Offer {
                secret,
                device_id: o.device_id,
            });
            return Ok(digits);
        }
    }

    /// Opens and checks a grant; `None` if it is not one for this link.
    fn open_grant(&self, offer: &Offer, grant: &pb::LinkGrant) -> Option<Result<Granted>> {
        let nonce: [u8; 12] = grant.nonce.as_slice().try_into().ok()?;
        let mailbox = self.mailbox.verifying_key().to_bytes();
        let plain = Zeroizing::new(
            ChaCha20Poly1305::new(Key::from_slice(offer.secret.key.as_ref()))
                .decrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &grant.ciphertext,
                        aad: &grant_ad(&mailbox),
                    },
                )
                .ok()?,
        );
        // From here on the grant is authentic (only the primary holds the
        // link key): anything wrong in it is an error, not junk.
        Some(self.check_grant(offer, &plain, &mailbox))
    }
    fn check_grant(&self, offer: &Offer, plain: &[u8], mailbox: &[u8; 32]) -> Result<Granted> {
        let bad = |what| Error::Malformed { what };
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
        if !certificate.binds(&account, offer.device_id, self.identity.public()) {
            return Err(bad("link grant certificate"));
        }
        let signed = SignedDeviceList::decode(body.signed_list.as_slice())
            .map_err(|_| bad("link grant list"))?;
        let list = DeviceList::verify(&account, &signed)?;
        match list.get(offer.device_id) {
            Some(e) if e.mailbox.0 == *mailbox && e.identity.ct_eq(self.identity.public()) => {}
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

    /// Step 4: the user confirmed the digits here; waits for the grant and
    /// becomes a full client of the user. Grants that do not open with this
    /// link's key are skipped.
    pub async fn finish(mut self, timeout: Duration) -> Result<Client<S>> {
        let offer = self
            .offer
            .take()
            .ok_or(Error::InvalidArgument("no offer yet"))?;
        let deadline = tokio::time::Instant::now() + timeout;
        let granted = loop {
            let pb::envelope::Body::LinkGrant(g) = self.next_body(deadline).await? else {
                continue;
            };
            if let Some(r) = self.open_grant(&offer, &g) {
                break r?;
            }
        };
        let store = self
            .store
            .take()
            .ok_or(Error::InvalidArgument("already finished"))?;
        let device = Device::create_with_identity(
            store,
            self.identity.clone(),
            offer.device_id,
            unix_now(),
            &mut OsRng,
        )?;
        self.subscription = None;
        self.conn.connection().close(0u32.into(), b"linked");
        debug_assert_eq!(granted.certificate.account, granted.account);
        let client = Client::setup(
            device,
            self.mailbox.clone(),
            self.home.clone(),
            None,
            granted.certificate,
        )?;
        let inner = client.inner().clone();
        inner.accept_contacts(&granted.contacts)?;
        let conn = inner.relay(&inner.me.relay).await?;
        super::publish_prekeys(&inner, &conn, true, false).await?;
        // Join the user's device list, now that this device can receive.
        conn.publish_device_list(granted.signed).await?;
        inner.pin_list(&inner.me, &granted.list)?;
        Ok(client.start())
    }
}

/// What a checked grant gives the new device.
struct Granted {
    account: [u8; 32],
    certificate: DeviceCertificate,
    signed: SignedDeviceList,
    list: DeviceList,
    contacts: Vec<UserAddress>,
}

/// Most accepted contacts a grant carries.
const MAX_GRANTED_CONTACTS: usize = 10_000;

/// A link in progress on the primary device: the offer is sent; the digits
/// come with the new device's reveal ([`PendingLink::wait_digits`]).
pub struct PendingLink {
    code: Code,
    device_id: u32,
    eph_pub: [u8; 32],
    shared: Zeroizing<[u8; 32]>,
    reply_to: [u8; 32],
    reply_conn: Arc<RelayClient>,
    subscription: Option<sotto_relay::Subscription>,
    secret: Option<LinkSecret>,
}

impl std::fmt::Debug for PendingLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLink")
            .field("mailbox", &MailboxId(self.code.mailbox))
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl PendingLink {
    /// Step 3 on the primary device: waits (at most `timeout`) for the new
    /// device's reveal and returns the six digits to compare with its
    /// screen. Reveals that do not open the code's commitment are skipped.
    pub async fn wait_digits(&mut self, timeout: Duration) -> Result<String> {
        if let Some(s) = &self.secret {
            return Ok(s.digits.clone());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let nonce = loop {
            let sub = self.subscription.as_mut().ok_or(Error::Timeout)?;
            let pb::envelope::Body::LinkReveal(r) =
                next_link_body(&self.reply_conn, sub, deadline).await?
            else {
                continue;
            };
            let Ok(nonce) = <[u8; 32]>::try_from(r.nonce.as_slice()) else {
                continue;
            };
            if bool::from(commitment(&nonce).ct_eq(&self.code.commitment)) {
                break Zeroizing::new(nonce);
            }
        };
        self.subscription = None;
        self.reply_conn.connection().close(0u32.into(), b"revealed");
        let secret = derive(
            &self.shared,
            &Transcript {
                mailbox: &self.code.mailbox,
                link: &self.code.link,
                eph: &self.eph_pub,
                identity: &self.code.identity,
                device_id: self.device_id,
                reply_to: &self.reply_to,
                nonce: &nonce,
            },
        )?;
        let digits = secret.digits.clone();
        self.secret = Some(secret);
        Ok(digits)
    }

    /// The six digits, once [`PendingLink::wait_digits`] returned them.
    pub fn digits(&self) -> Option<&str> {
        self.secret.as_ref().map(|s| s.digits.as_str())
    }

    /// The device id the new device will get.
    pub fn device_id(&self) -> u32 {
        self.device_id
    }
}

/// What a link code names: the new device's mailbox, link key, identity and
/// nonce commitment.
pub(crate) struct Code {
    mailbox: [u8; 32],
    link: [u8; 32],
    identity: IdentityKey,
    commitment: [u8; 32],
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

impl<S: Store + Send + 'static> Client<S> {
    /// The device id and list version the next list this primary signs
    /// must use: past every one it ever issued, published or not.
    pub(crate) fn next_issue(&self, list: &DeviceList) -> Result<(u32, u64)> {
        let c = self
            .inner
            .with_device(|d| d.store_mut().transaction(|tx| records::counters(tx)))?;
        Ok((
            list.next_device_id.max(c.issued_next_device_id),
            list.version.max(c.issued_list_version),
        ))
    }

    /// Records what this primary just signed, before it leaves the device.
    pub(crate) fn record_issue(&self, next_device_id: u32, version: u64) -> Result<()> {
        self.inner.with_device(|d| {
            d.store_mut().transaction(|tx| {
                let mut c = records::counters(tx)?;
                c.issued_next_device_id = c.issued_next_device_id.max(next_device_id);
                c.issued_list_version = c.issued_list_version.max(version);
                records::put_counters(tx, &c)
            })
        })
    }

    /// Step 2 on the primary device: reads the new device's code and sends
    /// it an offer; then [`PendingLink::wait_digits`] and compare them on
    /// both screens.
    pub async fn link_device(&self, code: &str) -> Result<PendingLink> {
        self.inner.account()?;
        let code = parse_code(code)?;
        let conn = self.inner.relay(&self.inner.me.relay).await?;
        let list = outbound::fetch_and_pin(&self.inner, &conn, &self.inner.me).await?;
        if list
            .devices
            .iter()
            .any(|d| d.mailbox.0 == code.mailbox || d.identity.ct_eq(&code.identity))
        {
            return Err(Error::InvalidArgument("that device is already linked"));
        }
        if list.devices.len() >= super::devices::MAX_DEVICES {
            return Err(Error::InvalidArgument("too many devices"));
        }
        let (device_id, _) = self.next_issue(&list)?;
        // A one-off mailbox for the reveal: it never mixes with this
        // device's own mail, and nobody knows it before the offer.
        let reply = SigningKey::generate(&mut OsRng);
        let reply_to = reply.verifying_key().to_bytes();
        let reply_conn = super::relays::Relays::new(reply)
            .get(&self.inner.me.relay)
            .await?;
        let subscription = reply_conn.subscribe().await?;
        let eph = StaticSecret::random_from_rng(OsRng);
        let eph_pub = *PublicKey::from(&eph).as_bytes();
        let shared = agree(&eph, &code.link)?;
        let offer = pb::Envelope {
            version: 1,
            body: Some(pb::envelope::Body::LinkOffer(pb::LinkOffer {
                ephemeral: eph_pub.to_vec(),
                device_id,
                reply_to: reply_to.to_vec(),
            })),
        };
        conn.send(&MailboxId(code.mailbox), offer.encode_to_vec())
            .await?;
        Ok(PendingLink {
            code,
            device_id,
            eph_pub,
            shared,
            reply_to,
            reply_conn,
            subscription: Some(subscription),
            secret: None,
        })
    }

    /// Step 4 on the primary device: the user confirmed the digits; signs
    /// the list with the new device added and its certificate, records both
    /// as issued, and sends them to it (the new device publishes the list
    /// once it can receive). Returns the new device's id.
    pub async fn confirm_link(&self, pending: PendingLink) -> Result<u32> {
        let account = self.inner.account()?;
        let secret = pending
            .secret
            .as_ref()
            .ok_or(Error::InvalidArgument("no digits yet: wait_digits first"))?;
        let mailbox = MailboxId(pending.code.mailbox);
        let conn = self.inner.relay(&self.inner.me.relay).await?;
        let mut list = outbound::fetch_and_pin(&self.inner, &conn, &self.inner.me).await?;
        let (next, version) = self.next_issue(&list)?;
        if next != pending.device_id {
            return Err(Error::InvalidArgument(
                "the device list changed during linking: link again",
            ));
        }
        list.devices.push(DeviceEntry {
            device_id: pending.device_id,
            mailbox,
            identity: pending.code.identity,
        });
        list.devices.sort_by_key(|d| d.device_id);
        list.next_device_id = pending
            .device_id
            .checked_add(1)
            .ok_or(Error::InvalidArgument("device ids exhausted"))?;
        list.version = version
            .checked_add(1)
            .ok_or(Error::InvalidArgument("list versions exhausted"))?;
        self.record_issue(list.next_device_id, list.version)?;
        let signed = list.sign(account);
        let contacts = self.inner.accepted_contacts()?;
        let body = Zeroizing::new(
            pb::LinkGrantBody {
                account_key: account.public().to_vec(),
                certificate: Some(
                    account
                        .certify(pending.device_id, &pending.code.identity)
                        .to_pb(),
                ),
                signed_list: signed.encode_to_vec(),
                contacts: contacts
                    .iter()
                    .take(MAX_GRANTED_CONTACTS)
                    .map(|c| c.to_string())
                    .collect(),
            }
            .encode_to_vec(),
        );
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = ChaCha20Poly1305::new(Key::from_slice(secret.key.as_ref()))
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: body.as_slice(),
                    aad: &grant_ad(&mailbox.0),
                },
            )
            .map_err(|_| Error::InvalidKey { what: "link key" })?;
        let grant = pb::Envelope {
            version: 1,
            body: Some(pb::envelope::Body::LinkGrant(pb::LinkGrant {
                nonce: nonce.to_vec(),
                ciphertext,
            })),
        };
        conn.send(&mailbox, grant.encode_to_vec()).await?;
        Ok(pending.device_id)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
            hex_lower(lp.as_bytes()),
            hex_lower(ep.as_bytes()),
            hex_lower(&commitment(&nonce)),
            hex_lower(s.key.as_ref()),
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
            hex_lower(&[9; 32]),
            hex_lower(&[1; 32]),
            hex_lower(identity.as_bytes()),
            hex_lower(&[5; 32])
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
