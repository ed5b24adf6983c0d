//! The network half of linking a new device ([`Linking`] on the new
//! device, [`PendingLink`] on the primary): mailboxes, subscriptions and
//! waits. The protocol and its cryptography are the engine's
//! (`engine::link`, PROTOCOL.md III.9).

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use prost::Message as _;
use rand_core::{OsRng, RngCore};
use sotto_core::device::Device;

use super::now_ms;
use sotto_core::identity::IdentityKeyPair;
use sotto_core::store::Store;
use sotto_core::Error as CoreError;
use sotto_proto::client as pb;
use sotto_relay::{MailboxId, Pushed, RelayClient};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::{outbound, Messenger};
use crate::engine::address::RelayAddress;
use crate::engine::devices::{DeviceEntry, DeviceList};
use crate::engine::{link, records};
use crate::error::{Error, Result};

/// Longest the primary waits for the new device's reveal after its offer.
pub const LINK_REVEAL_TIMEOUT: Duration = Duration::from_secs(60);

/// An offer accepted on the new device: the link key and the id assigned.
struct Offer {
    secret: link::LinkSecret,
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
        super::require_runtime()?;
        let mailbox = SigningKey::generate(&mut OsRng);
        let link = StaticSecret::random_from_rng(OsRng);
        let identity = IdentityKeyPair::generate(&mut OsRng);
        let mut nonce = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(nonce.as_mut());
        let conn = super::relays::Relays::new(mailbox.clone())
            .get(&home, super::relays::As::Mailbox)
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
        link::code_string(
            self.mailbox.verifying_key().as_bytes(),
            &self.link,
            self.identity.public(),
            &self.nonce,
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
            let Ok(shared) = link::agree(&self.link, &eph) else {
                continue;
            };
            let secret = link::derive(
                &shared,
                &link::Transcript {
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

    /// Step 4: the user confirmed the digits here; waits for the grant and
    /// becomes a full client of the user. Grants that do not open with this
    /// link's key are skipped.
    pub async fn finish(mut self, timeout: Duration) -> Result<Messenger<S>> {
        let offer = self
            .offer
            .take()
            .ok_or(CoreError::InvalidArgument("no offer yet"))?;
        let deadline = tokio::time::Instant::now() + timeout;
        let granted = loop {
            let pb::envelope::Body::LinkGrant(g) = self.next_body(deadline).await? else {
                continue;
            };
            let mailbox = self.mailbox.verifying_key().to_bytes();
            if let Some(plain) = link::open_grant(&offer.secret.key, &mailbox, &g) {
                break link::check_grant(
                    self.identity.public(),
                    offer.device_id,
                    &mailbox,
                    &plain,
                )?;
            }
        };
        let store = self
            .store
            .take()
            .ok_or(CoreError::InvalidArgument("already finished"))?;
        let device = Device::create_with_identity(
            store,
            self.identity.clone(),
            offer.device_id,
            now_ms() / 1000,
            &mut OsRng,
        )?;
        self.subscription = None;
        self.conn.connection().close(0u32.into(), b"linked");
        debug_assert_eq!(granted.certificate.account, granted.account);
        let client = Messenger::setup(
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
        conn.publish_device_list(granted.signed.clone()).await?;
        inner.pin_list(&inner.me, &granted.list)?;
        // This user's other devices and its contacts learn of this device
        // at once (the others send it the groups they are in).
        client.broadcast_device_list(&granted.signed)?;
        Ok(client.start())
    }
}

/// A link in progress on the primary device: the offer is sent; the digits
/// come with the new device's reveal ([`PendingLink::wait_digits`]).
pub struct PendingLink {
    code: link::Code,
    device_id: u32,
    eph_pub: [u8; 32],
    shared: Zeroizing<[u8; 32]>,
    reply_to: [u8; 32],
    reply_conn: Arc<RelayClient>,
    subscription: Option<sotto_relay::Subscription>,
    secret: Option<link::LinkSecret>,
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
            if link::opens(&self.code, &nonce) {
                break Zeroizing::new(nonce);
            }
        };
        self.subscription = None;
        self.reply_conn.connection().close(0u32.into(), b"revealed");
        let secret = link::derive(
            &self.shared,
            &link::Transcript {
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

impl<S: Store + Send + 'static> Messenger<S> {
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
        let code = link::parse_code(code)?;
        let conn = self.inner.relay(&self.inner.me.relay).await?;
        let list = outbound::fetch_and_pin(&self.inner, &conn, &self.inner.me).await?;
        if list
            .devices
            .iter()
            .any(|d| d.mailbox.0 == code.mailbox || d.identity.ct_eq(&code.identity))
        {
            return Err(Error::invalid_argument("that device is already linked"));
        }
        if list.devices.len() >= crate::engine::devices::MAX_DEVICES {
            return Err(Error::invalid_argument("too many devices"));
        }
        let (device_id, _) = self.next_issue(&list)?;
        // A one-off mailbox for the reveal: it never mixes with this
        // device's own mail, and nobody knows it before the offer.
        let reply = SigningKey::generate(&mut OsRng);
        let reply_to = reply.verifying_key().to_bytes();
        let reply_conn = super::relays::Relays::new(reply)
            .get(&self.inner.me.relay, super::relays::As::Mailbox)
            .await?;
        let subscription = reply_conn.subscribe().await?;
        let eph = StaticSecret::random_from_rng(OsRng);
        let eph_pub = *PublicKey::from(&eph).as_bytes();
        let shared = link::agree(&eph, &code.link)?;
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
        let secret = pending.secret.as_ref().ok_or(CoreError::InvalidArgument(
            "no digits yet: wait_digits first",
        ))?;
        let mailbox = MailboxId(pending.code.mailbox);
        let conn = self.inner.relay(&self.inner.me.relay).await?;
        let mut list = outbound::fetch_and_pin(&self.inner, &conn, &self.inner.me).await?;
        let (next, version) = self.next_issue(&list)?;
        if next != pending.device_id {
            return Err(Error::invalid_argument(
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
            .ok_or(CoreError::InvalidArgument("device ids exhausted"))?;
        list.version = version
            .checked_add(1)
            .ok_or(CoreError::InvalidArgument("list versions exhausted"))?;
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
                    .take(link::MAX_GRANTED_CONTACTS)
                    .map(|c| c.to_string())
                    .collect(),
            }
            .encode_to_vec(),
        );
        let grant = pb::Envelope {
            version: 1,
            body: Some(pb::envelope::Body::LinkGrant(link::seal_grant(
                &secret.key,
                &mailbox.0,
                &body,
                &mut OsRng,
            )?)),
        };
        conn.send(&mailbox, grant.encode_to_vec()).await?;
        Ok(pending.device_id)
    }
}
