//! The driver: sockets, timers and tasks. [`Messenger`] is the handle an
//! app holds; behind it, a receive loop feeds each pushed envelope to the
//! engine's `inbound` step and acknowledges it once committed, a send loop
//! drains the durable outbox (`outbound`), and a maintenance loop keeps
//! prekeys and the delivery token registered.
//!
//! - [`link`]: the network half of linking a new device;
//! - `outbound`: the outbox worker;
//! - [`relays`]: pinned connections to every relay needed, with backoff.

pub mod link;
pub(crate) mod live;
mod outbound;
pub mod relays;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use prost::Message as _;
use rand_core::OsRng;
use sotto_proto::client as pb;
use sotto_proto::relay::SignedDeviceList;
use sotto_relay::{Pushed, RelayClient};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::engine::account::{AccountKeyPair, DeviceCertificate};
use crate::engine::address::{RelayAddress, UserAddress};
use crate::engine::devices::{DeviceEntry, DeviceList};
use crate::engine::events::{AttachmentRef, DeliveryState, Event, MessageId};
use crate::engine::group::{self, state::GroupId, GroupInfo};
use crate::engine::live::Presence;
use crate::engine::outbound as outbound_engine;
use crate::engine::outbound::PlannerCache;
use crate::engine::{inbound, prekeys, records, RECORD_RETENTION_MS};
use crate::error::{Error, Result};
use live::LiveEvents;
use relays::{Backoff, Relays};
use sotto_core::device::Device;
use sotto_core::identity::SafetyNumber;
use sotto_core::store::Store;
use sotto_core::Error as CoreError;

/// The shared state behind a [`Messenger`] and its background tasks.
pub(crate) struct Inner<S: Store> {
    device: std::sync::Mutex<Device<S>>,
    pub(crate) me: UserAddress,
    pub(crate) device_id: u32,
    /// The account key: only on the primary device.
    account: Option<AccountKeyPair>,
    /// This device's certificate from the account key.
    pub(crate) certificate: DeviceCertificate,
    relays: Relays,
    /// What the outbox planner keeps between passes (sender-MAC keys,
    /// decoded device lists).
    pub(crate) planner_cache: std::sync::Mutex<PlannerCache>,
    events: tokio::sync::Notify,
    outbox: tokio::sync::Notify,
    synced: tokio::sync::watch::Sender<bool>,
    skip_acks: AtomicBool,
    /// The home relay may not hold the current delivery token's verifier
    /// (at start, after a rotation, after a failed registration).
    token_unregistered: AtomicBool,
    /// One registration at a time (a rotation during one registers again).
    registering: tokio::sync::Mutex<()>,
    /// Presence and typing: memory only.
    pub(crate) live: live::LiveState,
}

impl<S: Store> Inner<S> {
    /// Runs `f` with the device locked (never across an await).
    pub(crate) fn with_device<R>(&self, f: impl FnOnce(&mut Device<S>) -> Result<R>) -> Result<R> {
        let mut d = self
            .device
            .lock()
            .map_err(|_| Error::storage("device lock poisoned"))?;
        f(&mut d)
    }

    /// A connection to `relay` authenticated with this device's mailbox key.
    pub(crate) async fn relay(&self, relay: &RelayAddress) -> Result<Arc<RelayClient>> {
        self.relays.get(relay, relays::As::Mailbox).await
    }

    /// A connection to `relay` authenticated with a fresh key: what sends
    /// and fetches for others go on, so the relay cannot link them to this
    /// device's mailbox.
    pub(crate) async fn anonymous(&self, relay: &RelayAddress) -> Result<Arc<RelayClient>> {
        self.relays.get(relay, relays::As::Anonymous).await
    }

    /// A connection to `relay` with a fresh key, for attachment transfers.
    pub(crate) async fn transfer(&self, relay: &RelayAddress) -> Result<Arc<RelayClient>> {
        self.relays.get(relay, relays::As::Transfer).await
    }

    /// Passes a request's result through; a connection-level failure also
    /// drops the connection, so the next request reconnects.
    pub(crate) async fn checked<T, E: Into<Error>>(
        &self,
        relay: &RelayAddress,
        conn: &Arc<RelayClient>,
        result: core::result::Result<T, E>,
    ) -> Result<T> {
        match result {
            Ok(v) => Ok(v),
            Err(e) => {
                let e = e.into();
                self.relay_failed(relay, conn, &e).await;
                Err(e)
            }
        }
    }

    /// Drops a connection after a connection-level failure.
    pub(crate) async fn relay_failed(
        &self,
        relay: &RelayAddress,
        conn: &Arc<RelayClient>,
        e: &Error,
    ) {
        if !matches!(e, Error::Relay(r) if r.remote_code().is_some()) {
            self.relays.forget(relay, conn).await;
        }
    }

    /// Drops the pooled connection to `relay`, whatever its state.
    pub(crate) async fn forget_relay(&self, relay: &RelayAddress) {
        self.relays.forget_any(relay).await;
    }

    pub(crate) fn events_ready(&self) {
        self.events.notify_one();
    }

    /// Pins a verified list of `user` (refusing a rollback or equivocation),
    /// queues events for added and removed devices and deletes the sessions
    /// of removed ones.
    pub(crate) fn pin_list(&self, user: &UserAddress, list: &DeviceList) -> Result<()> {
        let pinned = self.with_device(|d| outbound_engine::pin_list(d, user, list, now_ms()))?;
        if pinned.events {
            self.events_ready();
        }
        if pinned.outbox {
            self.outbox.notify_one();
        }
        Ok(())
    }

    /// Every accepted contact (not this user).
    pub(crate) fn accepted_contacts(&self) -> Result<Vec<UserAddress>> {
        self.with_device(|d| {
            d.store_mut().transaction(|tx| {
                Ok(records::contacts(tx)?
                    .into_iter()
                    .filter(|(user, c)| c.state == records::ACCEPTED && *user != self.me.user)
                    .filter_map(|(_, c)| c.address.parse().ok())
                    .collect())
            })
        })
    }

    /// Marks users as accepted contacts (those a linked device inherits).
    pub(crate) fn accept_contacts(&self, contacts: &[UserAddress]) -> Result<()> {
        self.with_device(|d| {
            d.store_mut().transaction(|tx| {
                for a in contacts {
                    if a.user == self.me.user {
                        continue;
                    }
                    let mut c = records::contact(tx, &a.user)?.unwrap_or_default();
                    if c.state == records::STRANGER {
                        c.state = records::ACCEPTED;
                        c.address = a.to_string();
                        records::put_contact(tx, &a.user, &c)?;
                    }
                }
                Ok(())
            })
        })
    }

    /// The account key, or [`Error::NotPrimary`].
    pub(crate) fn account(&self) -> Result<&AccountKeyPair> {
        self.account.as_ref().ok_or(Error::NotPrimary)
    }
}

/// A messenger client: one device of one user, with its durable store and
/// its relay connections. Cheap to share by reference across tasks; dropping
/// it stops its background tasks.
///
/// It runs on **Tokio** (QUIC sockets, timers, background tasks): create and
/// use it inside a Tokio runtime; elsewhere its calls return
/// `Error::Relay(RelayError::NoRuntime)`.
///
/// ```no_run
/// use sotto_core::{SqliteStore, StorageKey};
/// use sotto_messenger::{EventKind, Messenger, RelayAddress, UserAddress};
///
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     // The storage key comes from the platform's keystore; never hard-code it.
///     let key = StorageKey::new([7; 32]);
///     let store = SqliteStore::open("alice.db", &key)?;
///     let relay: RelayAddress = "relay.example.org:7443/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".parse()?;
///     // First run: register; later runs: `Messenger::open(store)`.
///     let alice = Messenger::create(store, relay).await?;
///     println!("my address: {}", alice.address());
///
///     let bob: UserAddress = std::env::args().nth(1).ok_or("bob's address")?.parse()?;
///     alice.send_text(&bob, "hello Bob")?; // durable now, sent when the relay is reachable
///     loop {
///         let event = alice.next_event().await?;
///         if let EventKind::Message(m) = &event.kind {
///             println!("{:?}: {}", event.peer, m.text);
///         }
///         alice.ack_event(event.seq)?; // once the app has stored what it needs
///     }
/// }
/// ```
pub struct Messenger<S: Store + Send + 'static> {
    inner: Arc<Inner<S>>,
    tasks: Vec<JoinHandle<()>>,
}

impl<S: Store + Send + 'static> std::fmt::Debug for Messenger<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messenger")
            .field("address", &self.inner.me)
            .field("device_id", &self.inner.device_id)
            .finish_non_exhaustive()
    }
}

impl<S: Store + Send + 'static> Drop for Messenger<S> {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The client runs on Tokio (QUIC sockets, timers, its background tasks):
/// called from another executor, it says so instead of panicking inside
/// quinn or `tokio::spawn`.
pub(crate) fn require_runtime() -> Result<()> {
    tokio::runtime::Handle::try_current()
        .map(|_| ())
        .map_err(|_| Error::Relay(sotto_relay::RelayError::NoRuntime))
}

/// The messenger's one clock: Unix milliseconds, read only here (the
/// driver) and passed to the engine. The core counts seconds (`now_ms() /
/// 1000`).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl<S: Store + Send + 'static> Messenger<S> {
    /// Registers a new user on `home`: a fresh account key and this device as
    /// device 1, the **primary** (the only one holding the account key, so
    /// the only one that links and unlinks devices). Publishes prekeys and
    /// the signed device list. Needs the relay to be reachable.
    pub async fn create(store: S, home: RelayAddress) -> Result<Self> {
        require_runtime()?;
        let account = AccountKeyPair::generate(&mut OsRng);
        let device = Device::create(store, 1, now_ms() / 1000, &mut OsRng)?;
        let mailbox = SigningKey::generate(&mut OsRng);
        let certificate = account.certify(1, device.identity());
        let list = DeviceList {
            version: 1,
            devices: vec![DeviceEntry {
                device_id: 1,
                mailbox: sotto_relay::MailboxId(mailbox.verifying_key().to_bytes()),
                identity: *device.identity(),
            }],
            next_device_id: 2,
        };
        let signed = list.sign(&account);
        let client = Self::setup(device, mailbox, home, Some(account), certificate)?;
        client.inner.pin_list(&client.inner.me, &list)?;
        let conn = client.inner.relay(&client.inner.me.relay).await?;
        publish_prekeys(&client.inner, &conn, true, false).await?;
        conn.publish_device_list(signed).await?;
        Ok(client.start())
    }

    /// Opens a registered device from its store. Works offline: sending
    /// queues, and the background tasks connect when the relay is reachable.
    pub async fn open(store: S) -> Result<Self> {
        require_runtime()?;
        let device = Device::open(store)?;
        let corrupt = || Error::corrupt("app");
        let cfg: pb::ClientConfig = device
            .store()
            .get(sotto_core::store::Table::App, records::CONFIG)?
            .map(|v| pb::ClientConfig::decode(v.as_slice()))
            .transpose()
            .map_err(|_| corrupt())?
            .ok_or(CoreError::NoIdentity)?;
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
            cfg.mailbox_secret
                .as_slice()
                .try_into()
                .map_err(|_| corrupt())?,
        );
        let mailbox = SigningKey::from_bytes(&seed);
        let home: RelayAddress = cfg.home_relay.parse()?;
        let account = if cfg.account_secret.is_empty() {
            None
        } else {
            Some(AccountKeyPair::from_seed(&cfg.account_secret)?)
        };
        let certificate = cfg
            .certificate
            .as_ref()
            .map(DeviceCertificate::from_pb)
            .transpose()
            .map_err(|_| corrupt())?
            .ok_or_else(corrupt)?;
        let account_key: [u8; 32] = cfg
            .account_key
            .as_slice()
            .try_into()
            .map_err(|_| corrupt())?;
        if !certificate.binds(&account_key, device.device_id(), device.identity())
            || account.as_ref().is_some_and(|a| a.public() != account_key)
        {
            return Err(corrupt());
        }
        let mut cfg = cfg;
        zeroize::Zeroize::zeroize(&mut cfg.account_secret);
        zeroize::Zeroize::zeroize(&mut cfg.mailbox_secret);
        Ok(Self::load(device, mailbox, home, account, certificate).start())
    }

    /// Writes the config row and builds the client (no tasks yet).
    pub(crate) fn setup(
        mut device: Device<S>,
        mailbox: SigningKey,
        home: RelayAddress,
        account: Option<AccountKeyPair>,
        certificate: DeviceCertificate,
    ) -> Result<Self> {
        let mut cfg = pb::ClientConfig {
            version: 1,
            mailbox_secret: mailbox.to_bytes().to_vec(),
            home_relay: home.to_string(),
            account_key: certificate.account.to_vec(),
            account_secret: account
                .as_ref()
                .map(|a| a.seed().to_vec())
                .unwrap_or_default(),
            certificate: Some(certificate.to_pb()),
        };
        let r = device.store_mut().transaction(|tx| {
            records::put(tx, records::CONFIG, &cfg)?;
            // This user is its own first contact: its pinned list lives there.
            let mut own = records::contact(tx, &certificate.account)?.unwrap_or_default();
            own.state = records::ACCEPTED;
            own.address = UserAddress {
                user: certificate.account,
                relay: home.clone(),
            }
            .to_string();
            records::put_contact(tx, &certificate.account, &own)
        });
        zeroize::Zeroize::zeroize(&mut cfg.mailbox_secret);
        zeroize::Zeroize::zeroize(&mut cfg.account_secret);
        r?;
        Ok(Self::load(device, mailbox, home, account, certificate))
    }

    fn load(
        device: Device<S>,
        mailbox: SigningKey,
        home: RelayAddress,
        account: Option<AccountKeyPair>,
        certificate: DeviceCertificate,
    ) -> Self {
        let device_id = device.device_id();
        let (synced, _) = tokio::sync::watch::channel(false);
        Messenger {
            inner: Arc::new(Inner {
                device: std::sync::Mutex::new(device),
                me: UserAddress {
                    user: certificate.account,
                    relay: home,
                },
                device_id,
                account,
                certificate,
                relays: Relays::new(mailbox),
                planner_cache: Default::default(),
                events: tokio::sync::Notify::new(),
                outbox: tokio::sync::Notify::new(),
                synced,
                skip_acks: AtomicBool::new(false),
                token_unregistered: AtomicBool::new(true),
                registering: tokio::sync::Mutex::new(()),
                live: live::LiveState::new(),
            }),
            tasks: Vec::new(),
        }
    }

    /// Starts the receive and send tasks.
    pub(crate) fn start(mut self) -> Self {
        self.tasks
            .push(tokio::spawn(receive_loop(self.inner.clone())));
        self.tasks.push(tokio::spawn(send_loop(self.inner.clone())));
        self.tasks
            .push(tokio::spawn(maintain_loop(self.inner.clone())));
        self.tasks.push(tokio::spawn(live::run(self.inner.clone())));
        self
    }

    /// How long a connection attempt to a relay may take (resolving, the
    /// QUIC and TLS handshakes, authentication) before it counts as a
    /// network failure and is retried with backoff; 10 s until set. A
    /// mobile app on a slow network may want more, a test less.
    pub fn set_connect_timeout(&self, timeout: Duration) {
        self.inner.relays.set_connect_timeout(timeout);
    }

    /// This user's address (give it to contacts).
    pub fn address(&self) -> &UserAddress {
        &self.inner.me
    }

    /// This device's certificate from the user's account key (public: every
    /// first message to a peer carries it).
    pub fn certificate(&self) -> &DeviceCertificate {
        &self.inner.certificate
    }

    /// This device's id within the user.
    pub fn device_id(&self) -> u32 {
        self.inner.device_id
    }

    /// Queues a text message to `to` (all their devices, plus a copy to this
    /// user's other devices); returns its id. Durable on return, sent as soon
    /// as the relays are reachable; progress arrives as `Delivery` events.
    pub fn send_text(&self, to: &UserAddress, text: &str) -> Result<MessageId> {
        self.send_message(to, text, Vec::new())
    }

    fn send_message(
        &self,
        to: &UserAddress,
        text: &str,
        attachments: Vec<pb::AttachmentRef>,
    ) -> Result<MessageId> {
        let id = self.inner.with_device(|d| {
            outbound_engine::queue_message(
                d,
                &self.inner.me,
                to,
                text,
                attachments,
                now_ms(),
                &mut OsRng,
            )
        })?;
        self.inner.outbox.notify_one();
        Ok(id)
    }

    /// Accepts the message request of `peer`: from now on its messages are
    /// ordinary messages, the held ones get their delivered receipts, and
    /// its relay may be contacted (replies, attachments).
    pub fn accept_request(&self, peer: &UserAddress) -> Result<()> {
        self.inner.with_device(|d| {
            d.store_mut()
                .transaction(|tx| inbound::accept(tx, &self.inner.me, peer))
        })?;
        self.inner.outbox.notify_one();
        Ok(())
    }

    /// Blocks `peer`: its envelopes are dropped unread from now on, its
    /// sessions are deleted, nothing is sent to it.
    pub fn block(&self, peer: &UserAddress) -> Result<()> {
        if peer.user == self.inner.me.user {
            return Err(Error::invalid_argument("cannot block this user"));
        }
        let rotated = self.inner.with_device(|d| {
            let rotated = d.store_mut().transaction(|tx| -> Result<_> {
                let mut c = records::contact(tx, &peer.user)?.unwrap_or_default();
                let had_token = c.state == records::ACCEPTED;
                c.state = records::BLOCKED;
                if c.address.is_empty() {
                    c.address = peer.to_string();
                }
                records::put_contact(tx, &peer.user, &c)?;
                records::take_held(tx, &peer.user)?;
                // A new delivery token if the blocked user held ours (an
                // accepted contact): its copy now counts as a stranger's;
                // the new one is announced to the accepted contacts once
                // registered. A stranger never had it: nothing to rotate.
                if had_token {
                    records::own_delivery_token(tx, true, &mut OsRng)?;
                }
                Ok(had_token)
            })?;
            d.delete_user_sessions(&peer.user)?;
            Ok(rotated)
        })?;
        if rotated {
            self.inner.token_unregistered.store(true, Ordering::SeqCst);
            self.inner.outbox.notify_one();
        }
        Ok(())
    }

    /// Declines `peer`'s message request without blocking: the held
    /// messages, the sessions and the record of the stranger are deleted (a
    /// later message from them is a new request).
    pub fn decline_request(&self, peer: &UserAddress) -> Result<()> {
        self.inner.with_device(|d| {
            let was_stranger = d.store_mut().transaction(|tx| -> Result<_> {
                let Some(c) = records::contact(tx, &peer.user)? else {
                    return Ok(false);
                };
                if c.state != records::STRANGER {
                    return Ok(false);
                }
                records::take_held(tx, &peer.user)?;
                records::delete_contact(tx, &peer.user)?;
                Ok(true)
            })?;
            if was_stranger {
                d.delete_user_sessions(&peer.user)?;
            }
            Ok(())
        })
    }

    /// True if `peer` is an accepted contact (this user wrote to them or
    /// accepted their request).
    pub fn is_accepted(&self, peer: &UserAddress) -> Result<bool> {
        Ok(self.contact_state(peer)? == records::ACCEPTED)
    }

    fn contact_state(&self, peer: &UserAddress) -> Result<u32> {
        if peer.user == self.inner.me.user {
            return Ok(records::ACCEPTED);
        }
        self.inner
            .with_device(|d| {
                d.store_mut()
                    .transaction(|tx| Ok(records::contact(tx, &peer.user)?.map(|c| c.state)))
            })
            .map(|s| s.unwrap_or(records::STRANGER))
    }

    /// Encrypts the file at `path` with a fresh key, uploads the ciphertext
    /// to this user's home relay (streamed from a temporary file, never held
    /// in memory) and queues a message carrying the key, digest and size.
    pub async fn send_file(&self, to: &UserAddress, text: &str, path: &Path) -> Result<MessageId> {
        let att = self.upload_attachment(path).await?;
        self.send_message(to, text, vec![att])
    }

    /// Creates a group named `name` with this user as its admin and
    /// `members`; every member's devices (and this user's other ones) hear
    /// of it. Past 1,000 members: [`Error::GroupTooLarge`].
    pub fn create_group(&self, name: &str, members: &[UserAddress]) -> Result<GroupId> {
        let id = self.inner.with_device(|d| {
            group::create(
                d,
                &self.inner.me,
                &self.inner.certificate,
                name,
                members,
                now_ms(),
                &mut OsRng,
            )
        })?;
        self.inner.outbox.notify_one();
        Ok(id)
    }

    fn change_group(&self, id: GroupId, actions: Vec<pb::GroupAction>) -> Result<()> {
        self.inner.with_device(|d| {
            group::change(
                d,
                &self.inner.me,
                &self.inner.certificate,
                id,
                actions,
                now_ms(),
            )
        })?;
        self.inner.outbox.notify_one();
        Ok(())
    }

    /// Adds members (admins only).
    pub fn add_group_members(&self, id: GroupId, members: &[UserAddress]) -> Result<()> {
        self.change_group(
            id,
            members
                .iter()
                .map(|m| {
                    group_action(pb::group_action::Action::Add(pb::GroupMember {
                        address: m.to_string(),
                        admin: false,
                        admin_since: 0,
                    }))
                })
                .collect(),
        )
    }

    /// Removes a member (admins only). Every remaining device starts a new
    /// sender key before it sends again: the removed user's devices read
    /// nothing sent after.
    pub fn remove_group_member(&self, id: GroupId, user: &UserAddress) -> Result<()> {
        self.change_group(
            id,
            vec![group_action(pb::group_action::Action::Remove(
                user.user.to_vec(),
            ))],
        )
    }

    /// Leaves the group.
    pub fn leave_group(&self, id: GroupId) -> Result<()> {
        self.remove_group_member(id, &self.inner.me.clone())
    }

    /// Renames the group (admins only).
    pub fn rename_group(&self, id: GroupId, name: &str) -> Result<()> {
        self.change_group(
            id,
            vec![group_action(pb::group_action::Action::Rename(name.into()))],
        )
    }

    /// Makes `user` an admin, or an ordinary member (admins only).
    pub fn set_group_admin(&self, id: GroupId, user: &UserAddress, admin: bool) -> Result<()> {
        let u = user.user.to_vec();
        self.change_group(
            id,
            vec![group_action(if admin {
                pb::group_action::Action::Promote(u)
            } else {
                pb::group_action::Action::Demote(u)
            })],
        )
    }

    /// Accepts a group invitation from a user this user had not accepted:
    /// its messages become ordinary ones and this device sends in it.
    pub fn accept_group(&self, id: GroupId) -> Result<()> {
        self.inner.with_device(|d| {
            d.store_mut().transaction(|tx| -> Result<()> {
                let mut rec = records::group(tx, &id.0)?.ok_or(Error::UnknownGroup)?;
                if rec.status == group::INVITED {
                    rec.status = group::MEMBER;
                    records::put_group(tx, &id.0, &rec)?;
                }
                Ok(())
            })
        })
    }

    /// Queues a text message to every member device of the group (and this
    /// user's other devices), encrypted once.
    pub fn send_group_text(&self, id: GroupId, text: &str) -> Result<MessageId> {
        self.send_group_message(id, text, Vec::new())
    }

    /// Uploads the file once and sends it to the group.
    pub async fn send_group_file(&self, id: GroupId, text: &str, path: &Path) -> Result<MessageId> {
        let att = self.upload_attachment(path).await?;
        self.send_group_message(id, text, vec![att])
    }

    fn send_group_message(
        &self,
        id: GroupId,
        text: &str,
        attachments: Vec<pb::AttachmentRef>,
    ) -> Result<MessageId> {
        let msg = self.inner.with_device(|d| {
            group::queue_message(
                d,
                &self.inner.me,
                id,
                text,
                attachments,
                now_ms(),
                &mut OsRng,
            )
        })?;
        self.inner.outbox.notify_one();
        Ok(msg)
    }

    /// A group this device is (or was) in.
    pub fn group(&self, id: GroupId) -> Result<Option<GroupInfo>> {
        self.inner.with_device(|d| {
            d.store_mut().transaction(|tx| {
                records::group(tx, &id.0)?
                    .map(GroupInfo::from_record)
                    .transpose()
            })
        })
    }

    /// Every group this device is (or was) in.
    pub fn groups(&self) -> Result<Vec<GroupInfo>> {
        self.inner.with_device(|d| {
            d.store_mut().transaction(|tx| {
                records::groups(tx)?
                    .into_iter()
                    .map(GroupInfo::from_record)
                    .collect()
            })
        })
    }

    /// Uploads an attachment to this user's home relay (see [`Messenger::send_file`]).
    async fn upload_attachment(&self, path: &Path) -> Result<pb::AttachmentRef> {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Encryption is CPU and disk work: keep it off the async threads.
        let path_owned = path.to_path_buf();
        let (tmp, pointer) = tokio::task::spawn_blocking(move || -> Result<_> {
            let src = std::fs::File::open(&path_owned).map_err(CoreError::AttachmentIo)?;
            let tmp = tempfile::NamedTempFile::new_in(std::env::temp_dir())
                .map_err(CoreError::AttachmentIo)?;
            let mut out = std::io::BufWriter::new(tmp.as_file());
            let pointer = sotto_core::attachment::encrypt(
                std::io::BufReader::new(src),
                &mut out,
                &mut OsRng,
            )?;
            std::io::Write::flush(&mut out).map_err(CoreError::AttachmentIo)?;
            drop(out);
            Ok((tmp, pointer))
        })
        .await
        .map_err(|_| Error::storage("attachment task failed"))??;
        // Not on the mailbox's connection: the relay would see this device
        // upload the blob its recipients then download.
        let conn = self.inner.transfer(&self.inner.me.relay).await?;
        let upload = tokio::fs::File::open(tmp.path())
            .await
            .map_err(CoreError::AttachmentIo)?;
        let uploaded = conn.upload_blob(pointer.ciphertext_len, upload).await;
        let blob = self
            .inner
            .checked(&self.inner.me.relay, &conn, uploaded)
            .await?;
        Ok(pb::AttachmentRef {
            blob_id: blob.0.to_vec(),
            pointer: pointer.to_bytes().to_vec(),
            file_name,
        })
    }

    /// An accepted contact, or a fellow member of a group this user is a
    /// member of: users whose relay this device contacts (for their
    /// attachments, for receipts). A stranger's is not contacted before the
    /// user accepts it or its group.
    fn may_contact(&self, peer: &UserAddress) -> Result<bool> {
        if self.contact_state(peer)? == records::ACCEPTED {
            return Ok(true);
        }
        self.inner.with_device(|d| {
            d.store_mut()
                .transaction(|tx| group::shares_a_group(tx, &peer.user))
        })
    }

    /// Downloads, verifies and decrypts an attachment from `from`'s relay
    /// into `dest` (written only when complete and verified). `from` must
    /// be an accepted contact or a fellow member of a group this user is in.
    pub async fn download_attachment(
        &self,
        from: &UserAddress,
        attachment: &AttachmentRef,
        dest: &Path,
    ) -> Result<u64> {
        if !self.may_contact(from)? {
            return Err(Error::NotAccepted);
        }
        self.download_from(&from.relay, attachment, dest).await
    }

    /// Sets the group's avatar to the image at `path` (encrypted and
    /// uploaded to this user's relay, as any attachment), or removes it
    /// (`None`). Admins only.
    pub async fn set_group_avatar(&self, id: GroupId, path: Option<&Path>) -> Result<()> {
        let avatar = match path {
            None => Vec::new(),
            Some(p) => pb::GroupAvatar {
                relay: self.inner.me.relay.to_string(),
                attachment: Some(self.upload_attachment(p).await?),
            }
            .encode_to_vec(),
        };
        self.change_group(
            id,
            vec![group_action(pb::group_action::Action::Avatar(avatar))],
        )
    }

    /// The group's avatar, if it has one (download it with
    /// [`Messenger::download_group_avatar`]).
    pub fn group_avatar(&self, id: GroupId) -> Result<Option<AttachmentRef>> {
        let info = self.group(id)?.ok_or(Error::UnknownGroup)?;
        if info.state.avatar.is_empty() {
            return Ok(None);
        }
        Ok(Some(group::state::read_avatar(&info.state.avatar)?.1))
    }

    /// Downloads the group's avatar into `dest` (from the relay of the admin
    /// who set it); its size. Only in a group this user is a member of (an
    /// invitation's relays are not contacted).
    pub async fn download_group_avatar(&self, id: GroupId, dest: &Path) -> Result<u64> {
        let info = self.group(id)?.ok_or(Error::UnknownGroup)?;
        if info.status != group::GroupStatus::Member {
            return Err(Error::NotAccepted);
        }
        if info.state.avatar.is_empty() {
            return Err(Error::invalid_argument("the group has no avatar"));
        }
        let (relay, attachment) = group::state::read_avatar(&info.state.avatar)?;
        self.download_from(&relay, &attachment, dest).await
    }

    async fn download_from(
        &self,
        relay: &RelayAddress,
        attachment: &AttachmentRef,
        dest: &Path,
    ) -> Result<u64> {
        let pointer = sotto_core::attachment::AttachmentPointer::from_bytes(&attachment.pointer)?;
        let conn = self.inner.transfer(relay).await?;
        let tmp = tempfile::NamedTempFile::new_in(std::env::temp_dir())
            .map_err(CoreError::AttachmentIo)?;
        let mut out = tokio::fs::File::create(tmp.path())
            .await
            .map_err(CoreError::AttachmentIo)?;
        // Exactly the blob length the pointer names, and not one byte more.
        let downloaded = conn
            .download_blob_exact(
                &sotto_relay::BlobId(attachment.blob_id),
                0,
                pointer.ciphertext_len,
                &mut out,
            )
            .await;
        self.inner.checked(relay, &conn, downloaded).await?;
        tokio::io::AsyncWriteExt::flush(&mut out)
            .await
            .map_err(CoreError::AttachmentIo)?;
        drop(out);
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let src = std::io::BufReader::new(
                std::fs::File::open(tmp.path()).map_err(CoreError::AttachmentIo)?,
            );
            Ok(sotto_core::attachment::decrypt_to_path(
                src, &dest, &pointer,
            )?)
        })
        .await
        .map_err(|_| Error::storage("attachment task failed"))?
    }

    /// Starts watching `contact`'s presence (call it when its conversation
    /// opens): its devices are asked now and every 30 s, and
    /// [`Self::presence`] and [`Self::live_events`] follow the answers,
    /// until [`Self::unwatch_presence`]. At most 64 contacts are watched at
    /// once (the oldest watch ends). PROTOCOL.md III.14.
    pub fn watch_presence(&self, contact: &UserAddress) -> Result<()> {
        self.accepted_other(contact)?;
        let user = contact.user;
        self.inner.live.with(|l, now| {
            l.watch(user, now);
            (Vec::new(), ())
        });
        // The ask goes out from the live task's tick, which is now.
        self.inner.live.wake();
        Ok(())
    }

    /// Stops watching `contact` (its conversation closed).
    pub fn unwatch_presence(&self, contact: &UserAddress) {
        let user = contact.user;
        self.inner.live.with(|l, _| {
            l.unwatch(&user);
            (Vec::new(), ())
        });
    }

    /// What this device knows of a watched contact's presence
    /// ([`Presence::Unknown`] for one not watched, or one that never answered:
    /// offline, or hiding its presence from this user).
    pub fn presence(&self, contact: &UserAddress) -> Presence {
        let user = contact.user;
        self.inner
            .live
            .with(|l, now| (Vec::new(), l.presence(&user, now)))
    }

    /// Whether `contact` is typing to this user now.
    pub fn is_typing(&self, contact: &UserAddress) -> bool {
        let user = contact.user;
        self.inner
            .live
            .with(|l, now| (Vec::new(), l.typing(&user, now)))
    }

    /// The user is composing a message to `contact` (`true`: call it on
    /// every keystroke, it is throttled to one signal per 8 s) or stopped
    /// (`false`: the message was sent or the draft cleared; after 10 s
    /// without a keystroke it stops by itself). Reaches only the contact's
    /// devices that watch this user (their conversation is open), and
    /// nobody when this user hides its presence from them.
    pub fn set_typing(&self, contact: &UserAddress, typing: bool) -> Result<()> {
        self.accepted_other(contact)?;
        let hidden = self.inner.with_device(|d| {
            d.store_mut().transaction(|tx| {
                Ok(records::presence_hidden(tx)?
                    || records::contact(tx, &contact.user)?.is_some_and(|c| c.presence_hidden))
            })
        })?;
        if hidden {
            return Ok(());
        }
        let user = contact.user;
        self.inner
            .live
            .with(|l, now| (l.set_typing(user, typing, now), ()));
        Ok(())
    }

    /// The user is present (`true`, the default while connected) or away
    /// (`false`: the app went to the background). Devices watching this one
    /// are told at once.
    pub fn set_present(&self, present: bool) {
        self.inner
            .live
            .away
            .store(!present, std::sync::atomic::Ordering::SeqCst);
        let online = present && *self.inner.synced.borrow();
        self.inner
            .live
            .with(|l, now| (l.set_online(online, now), ()));
    }

    /// Shares this user's presence and typing with every accepted contact
    /// (`true`, the default) or with none; stored, on this device only (set
    /// it on each linked device). Hiding stops the answers at once:
    /// watchers see [`Presence::Unknown`] or, after the grace, offline,
    /// never that they are hidden from. A user who hides sends no asks
    /// either, so it sees nobody's presence (an ask would tell it is online).
    pub fn share_presence(&self, shared: bool) -> Result<()> {
        self.inner.with_device(|d| {
            d.store_mut()
                .transaction(|tx| records::set_presence_hidden(tx, !shared))
        })?;
        if !shared {
            self.inner.live.with(|l, _| {
                l.forget_watchers(None);
                (Vec::new(), ())
            });
        }
        Ok(())
    }

    /// Shares this user's presence and typing with one accepted contact, or
    /// hides them from it (and stops asking for its presence); stored, on
    /// this device only.
    pub fn share_presence_with(&self, contact: &UserAddress, shared: bool) -> Result<()> {
        self.accepted_other(contact)?;
        self.inner.with_device(|d| {
            d.store_mut().transaction(|tx| {
                let mut c = records::contact(tx, &contact.user)?.ok_or(Error::NotAccepted)?;
                c.presence_hidden = !shared;
                records::put_contact(tx, &contact.user, &c)
            })
        })?;
        if !shared {
            let user = contact.user;
            self.inner.live.with(|l, _| {
                l.forget_watchers(Some(&user));
                (Vec::new(), ())
            });
        }
        Ok(())
    }

    /// Presence and typing changes as they happen (memory only, no ack).
    pub fn live_events(&self) -> LiveEvents {
        self.inner.live.events()
    }

    /// Live signals refused or dropped unopened since start (not from an
    /// accepted contact's device, malformed, replayed, or past the receive
    /// allowances: 200 opened a second in all, 2 a second per contact):
    /// they are never events.
    pub fn live_refused(&self) -> u64 {
        self.inner
            .live
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn accepted_other(&self, contact: &UserAddress) -> Result<()> {
        if contact.user == self.inner.me.user || self.contact_state(contact)? != records::ACCEPTED {
            return Err(Error::NotAccepted);
        }
        Ok(())
    }

    /// Sends read receipts for messages from `peer` (an accepted contact).
    pub fn mark_read(&self, peer: &UserAddress, ids: &[MessageId]) -> Result<()> {
        if !self.may_contact(peer)? {
            return Err(Error::NotAccepted);
        }
        let item = pb::OutboxItem {
            recipient: peer.to_string(),
            content: inbound::receipt_content(
                &self.inner.me,
                pb::receipt::Kind::Read,
                ids.iter().map(|i| i.0.to_vec()).collect(),
            ),
            ..Default::default()
        };
        self.inner.with_device(|d| {
            d.store_mut()
                .transaction(|tx| records::push_outbox(tx, &item))
        })?;
        self.inner.outbox.notify_one();
        Ok(())
    }

    /// The oldest event not yet acknowledged, if any. A stored event that
    /// cannot be read comes back as [`crate::EventKind::Unreadable`], never as an
    /// error that would stall the queue.
    pub fn try_next_event(&self) -> Result<Option<Event>> {
        let e = self
            .inner
            .with_device(|d| d.store_mut().transaction(|tx| records::events(tx, 1)))?;
        Ok(e.into_iter()
            .next()
            .map(|(seq, stored)| Event::from_stored(seq, stored)))
    }

    /// Waits for the oldest event not yet acknowledged. The same event is
    /// returned again until [`Messenger::ack_event`] (also after a restart).
    pub async fn next_event(&self) -> Result<Event> {
        loop {
            let notified = self.inner.events.notified();
            if let Some(e) = self.try_next_event()? {
                return Ok(e);
            }
            // Also wake periodically: the notification is a hint only.
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
    }

    /// Removes an event the app has handled (stored, displayed...).
    pub fn ack_event(&self, seq: u64) -> Result<()> {
        self.inner.with_device(|d| {
            d.store_mut()
                .transaction(|tx| records::remove_event(tx, seq))
        })
    }

    /// Per-device delivery state of a message this device sent.
    pub fn delivery(&self, id: &MessageId) -> Result<Vec<(u32, DeliveryState)>> {
        let rec = self
            .inner
            .with_device(|d| d.store_mut().transaction(|tx| records::delivery(tx, &id.0)))?;
        Ok(rec
            .1
            .iter()
            .filter_map(|(_, device, state)| {
                DeliveryState::from_u32(u32::from(state)).map(|s| (device, s))
            })
            .collect())
    }

    /// Per-user delivery state of a message this device sent (a group
    /// message: "read by 5 of 7"): each recipient user's furthest state over
    /// its devices, by user id. Users none of whose devices got it yet are
    /// absent.
    pub fn delivery_by_user(
        &self,
        id: &MessageId,
    ) -> Result<std::collections::BTreeMap<[u8; 32], DeliveryState>> {
        let rec = self
            .inner
            .with_device(|d| d.store_mut().transaction(|tx| records::delivery(tx, &id.0)))?;
        let mut out = std::collections::BTreeMap::new();
        for (user, _, state) in rec.1.iter() {
            let Some(state) = DeliveryState::from_u32(u32::from(state)) else {
                continue;
            };
            let best = out.entry(user).or_insert(state);
            if state > *best {
                *best = state;
            }
        }
        Ok(out)
    }

    /// Items still waiting in the outbox.
    pub fn pending_outgoing(&self) -> Result<usize> {
        self.inner.with_device(|d| {
            d.store_mut()
                .transaction(|tx| Ok(records::outbox(tx)?.len()))
        })
    }

    /// Waits until the outbox is empty (or `timeout` passes; then
    /// [`Error::Timeout`]).
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.pending_outgoing()? > 0 {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            self.inner.outbox.notify_one();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Waits until the backlog present at the last (re)connect has been
    /// processed (or `timeout` passes).
    pub async fn wait_synced(&self, timeout: Duration) -> Result<()> {
        let mut rx = self.inner.synced.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s))
            .await
            .map_err(|_| Error::Timeout)?
            .map_err(|_| Error::Timeout)?;
        Ok(())
    }

    /// The safety number to compare with `peer`: one per pair of users,
    /// computed from the two account keys (the addresses name them), so it
    /// is the same on every device of both users.
    pub fn safety_number(&self, peer: &UserAddress) -> SafetyNumber {
        SafetyNumber::of_keys(&self.inner.me.user, &peer.user)
    }

    /// Records that the user compared the safety number with `peer`.
    pub fn mark_verified(&self, peer: &UserAddress) -> Result<()> {
        self.inner.with_device(|d| {
            d.store_mut().transaction(|tx| {
                let mut c = records::contact(tx, &peer.user)?.unwrap_or_default();
                c.verified = true;
                if c.address.is_empty() {
                    c.address = peer.to_string();
                }
                records::put_contact(tx, &peer.user, &c)
            })
        })
    }

    /// True if the user compared the safety number with `peer`.
    pub fn is_verified(&self, peer: &UserAddress) -> Result<bool> {
        self.inner.with_device(|d| {
            d.store_mut()
                .transaction(|tx| Ok(records::contact(tx, &peer.user)?.is_some_and(|c| c.verified)))
        })
    }

    /// True if this is the primary device (it holds the account key: only
    /// it can link and unlink devices).
    pub fn is_primary(&self) -> bool {
        self.inner.account.is_some()
    }

    /// This user's current device list, from the home relay (checked
    /// against, and pinned as, the highest version seen).
    pub async fn devices(&self) -> Result<DeviceList> {
        let conn = self.inner.relay(&self.inner.me.relay).await?;
        outbound::fetch_and_pin(&self.inner, &conn, &self.inner.me).await
    }

    /// Removes a device of this user (primary only). This is revocation: the
    /// removed device holds no key that could add it back, contacts stop
    /// encrypting to it at their next message, and the new signed list goes
    /// to this user's other devices and to every accepted contact at once,
    /// so they refuse its messages from then on.
    pub async fn unlink_device(&self, device_id: u32) -> Result<()> {
        let account = self.inner.account()?;
        if device_id == self.inner.device_id {
            return Err(Error::invalid_argument("cannot unlink this device"));
        }
        let conn = self.inner.relay(&self.inner.me.relay).await?;
        let mut list = outbound::fetch_and_pin(&self.inner, &conn, &self.inner.me).await?;
        if list.get(device_id).is_none() {
            return Err(Error::invalid_argument("no such device"));
        }
        list.devices.retain(|d| d.device_id != device_id);
        // Past every id and version this primary ever issued (a grant whose
        // device never joined included), so nothing it signed before can
        // come back.
        let (next, version) = self.next_issue(&list)?;
        list.next_device_id = next;
        list.version = version
            .checked_add(1)
            .ok_or(CoreError::InvalidArgument("list versions exhausted"))?;
        self.record_issue(list.next_device_id, list.version)?;
        let signed = list.sign(account);
        conn.publish_device_list(signed.clone()).await?;
        self.inner.pin_list(&self.inner.me, &list)?;
        self.broadcast_device_list(&signed)?;
        Ok(())
    }

    /// Queues this user's new signed device list to its other devices and
    /// to every accepted contact.
    pub(crate) fn broadcast_device_list(&self, signed: &SignedDeviceList) -> Result<()> {
        let content = pb::Content {
            sender_relay: self.inner.me.relay.to_string(),
            delivery_token: Vec::new(),
            body: Some(pb::content::Body::DeviceListChanged(
                pb::DeviceListChanged {
                    version: signed.version,
                    signed_list: signed.encode_to_vec(),
                },
            )),
        }
        .encode_to_vec();
        self.inner.with_device(|d| {
            d.store_mut().transaction(|tx| {
                for (user, c) in records::contacts(tx)? {
                    if c.state != records::ACCEPTED || c.address.is_empty() {
                        continue;
                    }
                    let Ok(address) = c.address.parse::<UserAddress>() else {
                        continue;
                    };
                    debug_assert_eq!(address.user, user);
                    records::push_outbox(
                        tx,
                        &pb::OutboxItem {
                            recipient: address.to_string(),
                            content: content.clone(),
                            ..Default::default()
                        },
                    )?;
                }
                Ok(())
            })
        })?;
        self.inner.outbox.notify_one();
        Ok(())
    }

    /// Test hook (feature `test-hooks`, not an API): process envelopes but
    /// never acknowledge them, as if the app crashed between each commit and
    /// its ack. The power-loss test keeps every envelope at the relay this way.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn set_skip_acks(&self, skip: bool) {
        self.inner.skip_acks.store(skip, Ordering::SeqCst);
    }

    /// Test hook (feature `test-hooks`, not an API): the mailbox ids the
    /// device's two connections to `relay` authenticate as: (its own
    /// mailbox's, the one it sends on).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub async fn connection_identities(
        &self,
        relay: &RelayAddress,
    ) -> Result<(sotto_relay::MailboxId, sotto_relay::MailboxId)> {
        let own = self.inner.relay(relay).await?.mailbox();
        let sending = self.inner.anonymous(relay).await?.mailbox();
        Ok((own, sending))
    }

    /// Test hook (feature `test-hooks`, not an API): the delivery token this
    /// device holds for `peer`'s device `device_id`, if any.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn held_delivery_token(&self, peer: &UserAddress, device_id: u32) -> Option<[u8; 32]> {
        self.inner
            .with_device(|d| {
                d.store_mut()
                    .transaction(|tx| records::delivery_token(tx, &peer.user, device_id))
            })
            .ok()
            .flatten()
            .map(|t| *t)
    }

    /// Test hook (feature `test-hooks`, not an API): drops the connections
    /// to `relay` (the next request reconnects).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub async fn drop_connections(&self, relay: &RelayAddress) {
        self.inner.forget_relay(relay).await;
    }

    /// Stops the background tasks and closes the relay connections; the
    /// devices that watch this one's presence are told it went offline
    /// (best effort, at most 2 s).
    pub async fn close(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        // With the tasks stopped, nothing else takes the offline notices.
        self.inner
            .live
            .with(|l, now| (l.set_online(false, now), ()));
        let sends = live::flush(&self.inner);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            for s in sends {
                let _ = s.await;
            }
        })
        .await;
        self.inner.relays.close_all().await;
    }

    pub(crate) fn inner(&self) -> &Arc<Inner<S>> {
        &self.inner
    }
}

/// Publishes the signed bundle (when `bundle` or when the relay lacks it) and
/// tops up one-time prekeys; with `rotate`, rotates the signed prekeys when due.
/// Uploads what the engine's prekey rule asks for, given the relay's counts.
async fn publish_prekeys<S: Store + Send + 'static>(
    inner: &Arc<Inner<S>>,
    conn: &RelayClient,
    bundle: bool,
    rotate: bool,
) -> Result<()> {
    let counts = conn.prekey_counts().await?;
    let upload =
        inner.with_device(|d| prekeys::top_up(d, &counts, bundle, rotate, now_ms(), &mut OsRng))?;
    if let Some(u) = upload {
        conn.publish_prekeys(u.bundle, u.one_time_ec, u.one_time_kem)
            .await?;
    }
    Ok(())
}

async fn receive_loop<S: Store + Send + 'static>(inner: Arc<Inner<S>>) {
    let mut backoff = Backoff::new();
    loop {
        match receive_once(&inner, &mut backoff).await {
            Ok(()) => tracing::debug!("mailbox subscription ended"),
            Err(e) => tracing::debug!(error = %e, "mailbox connection failed"),
        }
        inner.synced.send_replace(false);
        live::disconnected(&inner);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn receive_once<S: Store + Send + 'static>(
    inner: &Arc<Inner<S>>,
    backoff: &mut Backoff,
) -> Result<()> {
    let home = inner.me.relay.clone();
    let conn = inner.relay(&home).await?;
    let result = async {
        // Registered once per process start and after a rotation (the
        // relay keeps it durably; registrations are rate limited per
        // address). A relay without delivery tokens (older) or a failure
        // here must not keep the mailbox unread: the send loop tries again.
        if let Err(e) = register_delivery_token(inner, &conn).await {
            tracing::debug!(error = %e, "delivery token not registered yet");
        }
        publish_prekeys(inner, &conn, false, false).await?;
        let cutoff = now_ms().saturating_sub(RECORD_RETENTION_MS);
        inner.with_device(|d| d.store_mut().transaction(|tx| records::prune(tx, cutoff)))?;
        let mut sub = conn.subscribe().await?;
        backoff.reset();
        inner.outbox.notify_one(); // reconnected: retry what waits

        // Acks leave from a second future, on the push stream itself (no
        // stream or reply of their own), batched while one is being written,
        // so processing never waits for the relay. An ack lost to a crash or
        // a dropped connection only means a redelivery, which `inbound`
        // recognises as already processed.
        let mut stream_acks = sub.acks().ok_or(CoreError::Malformed {
            what: "subscription without its ack half",
        })?;
        let (acks, mut to_ack) = tokio::sync::mpsc::unbounded_channel();
        let receive = async {
            let acks = acks;
            let mut rebase = std::collections::BTreeSet::new();
            let mut caught_up = false;
            while let Some(push) = sub.next().await? {
                match push {
                    Pushed::Envelope(e) => {
                        let outcome = inner.with_device(|d| {
                            inbound::process(d, &inner.me, &e.id.0, &e.payload, now_ms())
                        })?;
                        if !outcome.revoked.is_empty() {
                            inner.events_ready();
                        }
                        rebase.extend(outcome.rebase.iter().copied());
                        if caught_up {
                            rebase_groups(inner, &mut rebase);
                        }
                        if !inner.skip_acks.load(Ordering::SeqCst) {
                            let _ = acks.send(e.id);
                        }
                        if outcome.events {
                            inner.events_ready();
                        }
                        if outcome.outbox {
                            inner.outbox.notify_one();
                        }
                    }
                    Pushed::QueueEmpty => {
                        // Changes of this device that left a group's chain
                        // are made again on the winner once the backlog is
                        // read (not once per change that moved the chain),
                        // then as live changes come.
                        caught_up = true;
                        rebase_groups(inner, &mut rebase);
                        inner.synced.send_replace(true);
                        live::connected(inner);
                        publish_prekeys(inner, &conn, false, true).await?;
                    }
                    Pushed::PrekeysLow(_) => publish_prekeys(inner, &conn, false, false).await?,
                    Pushed::Ephemeral(payload) => live::receive(inner, &payload),
                }
            }
            Ok::<(), Error>(())
        };
        let acker = async {
            let mut ids = Vec::new();
            while let Some(id) = to_ack.recv().await {
                ids.push(id);
                while ids.len() < MAX_ACK_BATCH {
                    match to_ack.try_recv() {
                        Ok(id) => ids.push(id),
                        Err(_) => break,
                    }
                }
                stream_acks.ack(&ids).await?;
                ids.clear();
            }
            Ok::<(), Error>(())
        };
        tokio::try_join!(receive, acker)?;
        Ok(())
    }
    .await;
    if let Err(e) = &result {
        inner.relay_failed(&home, &conn, e).await;
    } else {
        inner.relays.forget(&home, &conn).await;
    }
    result
}

/// Most envelope ids in one stream-ack frame (the relay's limit is 1,000).
const MAX_ACK_BATCH: usize = 256;

/// How often a running client checks its signed prekeys' age (rotation is
/// due per `sotto_core::prekeys::SIGNED_PREKEY_MAX_AGE_SECS`) and the one-time
/// prekey supply.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);

async fn maintain_loop<S: Store + Send + 'static>(inner: Arc<Inner<S>>) {
    loop {
        tokio::time::sleep(MAINTENANCE_INTERVAL).await;
        let home = inner.me.relay.clone();
        if let Ok(conn) = inner.relay(&home).await {
            let synced = *inner.synced.borrow();
            if let Err(e) = publish_prekeys(&inner, &conn, false, synced).await {
                tracing::debug!(error = %e, "prekey maintenance failed");
                inner.relay_failed(&home, &conn, &e).await;
            }
        }
        let cutoff = now_ms().saturating_sub(RECORD_RETENTION_MS);
        let _ = inner.with_device(|d| d.store_mut().transaction(|tx| records::prune(tx, cutoff)));
    }
}

/// Registers this device's delivery-token verifier with its home relay if
/// it may not hold the current one (a failure leaves it to the next try),
/// then announces a token not announced yet: to this user's other devices
/// (which may never get other content from this one) and, when it replaces
/// an earlier one, to every accepted contact.
async fn register_delivery_token<S: Store + Send + 'static>(
    inner: &Arc<Inner<S>>,
    conn: &RelayClient,
) -> Result<()> {
    let _one = inner.registering.lock().await;
    // A rotation while this registers sets the flag again: loop.
    while inner.token_unregistered.swap(false, Ordering::SeqCst) {
        let token = inner.with_device(|d| {
            d.store_mut()
                .transaction(|tx| records::own_delivery_token(tx, false, &mut OsRng))
        });
        let registered = match token {
            Ok(t) => conn
                .set_delivery_token(Some(&t))
                .await
                .map(|()| t)
                .map_err(Error::from),
            Err(e) => Err(e),
        };
        let token = match registered {
            Ok(t) => t,
            Err(e) => {
                inner.token_unregistered.store(true, Ordering::SeqCst);
                return Err(e);
            }
        };
        let queued = inner
            .with_device(|d| outbound_engine::announce_delivery_token(d, &inner.me, &token))?;
        if queued {
            inner.outbox.notify_one();
        }
    }
    Ok(())
}

async fn send_loop<S: Store + Send + 'static>(inner: Arc<Inner<S>>) {
    let mut backoff = Backoff::new();
    loop {
        if inner.token_unregistered.load(Ordering::SeqCst) {
            if let Ok(conn) = inner.relay(&inner.me.relay).await {
                if let Err(e) = register_delivery_token(&inner, &conn).await {
                    tracing::debug!(error = %e, "delivery token not registered yet");
                }
            }
        }
        let pass = outbound::drain(&inner).await;
        match pass {
            // Events were announced as each step queued them.
            Ok(p) => {
                if !p.pending {
                    backoff.reset();
                    inner.outbox.notified().await;
                    continue;
                }
            }
            Err(e) => tracing::debug!(error = %e, "outbox pass failed"),
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = inner.outbox.notified() => {}
        }
    }
}

/// Makes again this device's changes that left the chain of `groups`
/// (a failure is logged: the user can repeat the change).
fn rebase_groups<S: Store + Send + 'static>(
    inner: &Inner<S>,
    groups: &mut std::collections::BTreeSet<GroupId>,
) {
    for id in std::mem::take(groups) {
        let made =
            inner.with_device(|d| group::rebase(d, &inner.me, &inner.certificate, id, now_ms()));
        match made {
            Ok(true) => inner.outbox.notify_one(),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "group change not made again"),
        }
    }
}

fn group_action(a: pb::group_action::Action) -> pb::GroupAction {
    pb::GroupAction { action: Some(a) }
}
