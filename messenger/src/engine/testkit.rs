//! Users and devices for the sans-IO tests of receiving: accounts with
//! certified devices on in-memory stores, and envelopes built exactly as the
//! outbox builds them (or as an attacker would).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(not(test), allow(dead_code))]

use std::collections::BTreeMap;

use prost::Message as _;
use rand_core::OsRng;
use sotto_proto::client as pb;
use sotto_proto::relay::SignedDeviceList;
use sotto_relay::{EnvelopeId, FetchedBundle};

use super::account::{AccountKeyPair, DeviceCertificate};
use super::address::{RelayAddress, UserAddress};
use super::devices::{DeviceEntry, DeviceList};
use super::envelope::sender_mac;
use super::inbound::{process, Outcome};
use super::outbound::{Input, Planner, PlannerCache, Step};
use super::records;
use sotto_core::device::{Device, DeviceAddress};
use sotto_core::identity::IdentityKey;

/// The relay's default largest envelope (`max_envelope_bytes`).
const RELAY_MAX_ENVELOPE: usize = 96 * 1024;

fn too_large() -> crate::error::Error {
    crate::error::Error::Relay(sotto_relay::RelayError::refusal(
        sotto_proto::relay::ErrorCode::EnvelopeTooLarge,
        "envelope too large",
    ))
}
use sotto_core::prekeys::PrekeyBundle;
use sotto_core::session::MessageKind;
use sotto_core::store::memory::MemoryStore;
use sotto_core::store::Store as _;

/// One device of a test user.
pub(crate) struct TestDevice {
    pub(crate) device: Device<MemoryStore>,
    pub(crate) cert: DeviceCertificate,
    pub(crate) mailbox: [u8; 32],
}

/// A user: an account and its devices (ids 1..=n).
pub(crate) struct TestUser {
    pub(crate) account: AccountKeyPair,
    pub(crate) relay: RelayAddress,
    pub(crate) devices: Vec<TestDevice>,
    pub(crate) next_envelope: u64,
}

impl TestUser {
    pub(crate) fn new(n: u32) -> Self {
        let account = AccountKeyPair::generate(&mut OsRng);
        let relay = RelayAddress::new("127.0.0.1:1".parse().unwrap(), [7; 32]);
        let mut devices = Vec::new();
        for id in 1..=n {
            let mut device = Device::create(MemoryStore::new(), id, 0, &mut OsRng).unwrap();
            let cert = account.certify(id, device.identity());
            device
                .store_mut()
                .transaction(|tx| {
                    records::put(
                        tx,
                        records::CONFIG,
                        &pb::ClientConfig {
                            version: 1,
                            account_key: account.public().to_vec(),
                            certificate: Some(cert.to_pb()),
                            ..Default::default()
                        },
                    )
                })
                .unwrap();
            devices.push(TestDevice {
                device,
                cert,
                mailbox: mailbox_of(&account.public(), id),
            });
        }
        let mut user = TestUser {
            account,
            relay,
            devices,
            next_envelope: 1,
        };
        let list = user.list(1);
        let me = user.address();
        for d in &mut user.devices {
            pin(&mut d.device, &me, &list);
            // As `Messenger::setup` does: the user is its own accepted contact.
            d.device
                .store_mut()
                .transaction(|tx| {
                    let mut c = records::contact(tx, &me.user)?.unwrap_or_default();
                    c.state = records::ACCEPTED;
                    records::put_contact(tx, &me.user, &c)
                })
                .unwrap();
        }
        user
    }

    pub(crate) fn address(&self) -> UserAddress {
        UserAddress {
            user: self.account.public(),
            relay: self.relay.clone(),
        }
    }

    /// The list of all current devices at `version`.
    pub(crate) fn list(&self, version: u64) -> DeviceList {
        DeviceList {
            version,
            devices: self
                .devices
                .iter()
                .map(|d| DeviceEntry {
                    device_id: d.device.device_id(),
                    mailbox: sotto_relay::MailboxId(d.mailbox),
                    identity: *d.device.identity(),
                })
                .collect(),
            next_device_id: self
                .devices
                .iter()
                .map(|d| d.device.device_id())
                .max()
                .unwrap_or(0)
                + 1,
        }
    }

    pub(crate) fn signed_list(&self, list: &DeviceList) -> SignedDeviceList {
        list.sign(&self.account)
    }

    /// Device `index` of this user encrypts `content` for `to`'s device
    /// `to_index`; returns the relay envelope `(id, payload)` as the outbox
    /// would build it (certificate on PreKey messages).
    pub(crate) fn envelope(
        &mut self,
        index: usize,
        to: &mut TestUser,
        to_index: usize,
        content: &pb::Content,
    ) -> ([u8; 16], Vec<u8>) {
        let to_addr = to.address();
        let target = &mut to.devices[to_index];
        let addr = DeviceAddress::new(to_addr.user.to_vec(), target.device.device_id());
        let from = &mut self.devices[index];
        if !from.device.has_session(&addr).unwrap() {
            let blob = target.device.signed_bundle().unwrap();
            let bundle = PrekeyBundle::assemble(&blob, None, None).unwrap();
            from.device
                .process_bundle(&addr, &bundle, 0, &mut OsRng)
                .unwrap();
        }
        let m = from
            .device
            .encrypt(&addr, &content.encode_to_vec(), &mut OsRng)
            .unwrap();
        let key = from
            .device
            .sender_mac_key(from.device.identity(), target.device.identity())
            .unwrap();
        let mac = sender_mac(
            &key,
            &self.account.public(),
            from.device.device_id(),
            &m.bytes,
        );
        let payload = seal_claim(
            target.device.identity(),
            &pb::Sealed {
                sender_user: self.account.public().to_vec(),
                sender_device: from.device.device_id(),
                sender_certificate: (m.kind == MessageKind::PreKey).then(|| from.cert.to_pb()),
                message: m.bytes,
                sender_mac: mac.to_vec(),
            },
        );
        (to.next_id(), payload)
    }

    /// A fresh relay envelope id for this user's mailbox.
    pub(crate) fn next_id(&mut self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&1_000u64.to_be_bytes());
        id[8..].copy_from_slice(&self.next_envelope.to_be_bytes());
        self.next_envelope += 1;
        id
    }

    /// Device `index` processes an envelope, as the receive loop does.
    pub(crate) fn receive(&mut self, index: usize, (id, payload): &([u8; 16], Vec<u8>)) -> Outcome {
        let me = self.address();
        process(&mut self.devices[index].device, &me, id, payload, 1_000).unwrap()
    }

    pub(crate) fn events(&mut self, index: usize) -> Vec<pb::ClientEvent> {
        self.devices[index]
            .device
            .store_mut()
            .transaction(|tx| records::events(tx, 100_000))
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.unwrap())
            .collect()
    }

    pub(crate) fn outbox(&mut self, index: usize) -> Vec<pb::OutboxItem> {
        self.devices[index]
            .device
            .store_mut()
            .transaction(|tx| records::outbox(tx))
            .unwrap()
            .into_iter()
            .map(|(_, i)| i)
            .collect()
    }

    /// Makes `peer` an accepted contact of every device, with its list pinned.
    pub(crate) fn accept(&mut self, peer: &TestUser) {
        let addr = peer.address();
        let list = peer.list(1);
        for d in &mut self.devices {
            pin(&mut d.device, &addr, &list);
            d.device
                .store_mut()
                .transaction(|tx| {
                    let mut c = records::contact(tx, &addr.user)?.unwrap_or_default();
                    c.state = records::ACCEPTED;
                    records::put_contact(tx, &addr.user, &c)
                })
                .unwrap();
        }
    }
}

/// The mailbox of a test user's device: unique across users (a relay
/// knows a mailbox by its key alone).
pub(crate) fn mailbox_of(account: &[u8; 32], device_id: u32) -> [u8; 32] {
    let mut m = *account;
    m[28..].copy_from_slice(&device_id.to_be_bytes());
    m
}

/// Pins `list` of `user` in `device`'s records.
pub(crate) fn pin(device: &mut Device<MemoryStore>, user: &UserAddress, list: &DeviceList) {
    device
        .store_mut()
        .transaction(|tx| records::apply_list(tx, user, list, 0).map(|_| ()))
        .unwrap();
}

/// A relay payload carrying a Part I message with the given sender claim
/// (no sender MAC), sealed to the device whose identity is `to`: anyone can
/// seal to a device, so the claim is what a forger controls.
pub(crate) fn seal(
    to: &IdentityKey,
    user: &[u8; 32],
    device: u32,
    cert: Option<&DeviceCertificate>,
    message: Vec<u8>,
) -> Vec<u8> {
    seal_claim(
        to,
        &pb::Sealed {
            sender_user: user.to_vec(),
            sender_device: device,
            message,
            sender_certificate: cert.map(|c| c.to_pb()),
            sender_mac: Vec::new(),
        },
    )
}

/// A relay payload holding `claim`, sealed to the device whose identity is `to`.
pub(crate) fn seal_claim(to: &IdentityKey, claim: &pb::Sealed) -> Vec<u8> {
    let sealed = sotto_core::sealed::seal(
        to.dh_public(),
        &claim.encode_to_vec(),
        sotto_core::Padding::Buckets,
        &mut OsRng,
    )
    .unwrap();
    pb::Envelope {
        version: 1,
        body: Some(pb::envelope::Body::Sealed(sealed)),
    }
    .encode_to_vec()
}

/// The claim inside a payload sealed to `device`.
pub(crate) fn unseal(device: &Device<MemoryStore>, payload: &[u8]) -> pb::Sealed {
    match pb::Envelope::decode(payload).unwrap().body {
        Some(pb::envelope::Body::Sealed(b)) => {
            pb::Sealed::decode(device.unseal(&b).unwrap().as_slice()).unwrap()
        }
        other => panic!("not a sealed envelope: {other:?}"),
    }
}

/// A chat message content from `from`.
pub(crate) fn text(from: &TestUser, id: u8, body: &str) -> pb::Content {
    pb::Content {
        sender_relay: from.relay.to_string(),
        delivery_token: Vec::new(),
        body: Some(pb::content::Body::Message(pb::Message {
            id: vec![id; 16],
            sent_at_ms: 0,
            text: body.to_string(),
            attachments: vec![],
        })),
    }
}

/// The kinds of a list of events, for assertions.
pub(crate) fn kinds(events: &[pb::ClientEvent]) -> Vec<&'static str> {
    use pb::client_event::Kind as K;
    events
        .iter()
        .map(|e| match e.kind {
            Some(K::Message(_)) => "message",
            Some(K::MessageRequest(_)) => "request",
            Some(K::Receipt(_)) => "receipt",
            Some(K::DecryptFailed(_)) => "failed",
            Some(K::SessionReset(_)) => "reset",
            Some(K::IdentityChanged(_)) => "identity_changed",
            Some(K::SentSync(_)) => "sent_sync",
            Some(K::NewDevice(_)) => "new_device",
            Some(K::DeviceRemoved(_)) => "device_removed",
            Some(K::Delivery(_)) => "delivery",
            Some(K::SendFailed(_)) => "send_failed",
            Some(K::Group(_)) => "group",
            None => "none",
        })
        .collect()
}

/// The clock of the simulated network's passes, ms.
pub(crate) const NOW: u64 = 1_000;

/// A mailbox's envelopes: (relay id, payload).
pub(crate) type Envelopes = Vec<([u8; 16], Vec<u8>)>;

/// Relays in memory: lists, bundles, and mailboxes keyed by (user, mailbox),
/// serving the planner's steps without faults (what the group tests and the
/// group benchmark run on).
#[derive(Default)]
pub(crate) struct SimNet {
    pub(crate) lists: BTreeMap<[u8; 32], SignedDeviceList>,
    pub(crate) bundles: BTreeMap<([u8; 32], [u8; 32]), Vec<u8>>,
    pub(crate) mailboxes: BTreeMap<([u8; 32], [u8; 32]), Envelopes>,
    pub(crate) next_id: u64,
    /// Bytes of group envelopes uploaded by shared submissions.
    pub(crate) uploaded_shared: usize,
    /// Bytes of every submission request (encoded `Send` / `SendShared`):
    /// what the sender uploads, before QUIC's own framing.
    pub(crate) uploaded: usize,
    /// Each device's planner caches, kept between its passes.
    caches: std::collections::HashMap<([u8; 32], usize), PlannerCache>,
    /// Whose each mailbox is.
    owners: std::collections::HashMap<[u8; 32], [u8; 32]>,
    /// Time spent playing the relays (not the sender's work).
    pub(crate) serve_time: std::time::Duration,
    /// Play relays that predate shared submissions.
    pub(crate) no_shared: bool,
}

impl SimNet {
    pub(crate) fn publish(&mut self, user: &mut TestUser) {
        self.lists
            .insert(user.account.public(), user.signed_list(&user.list(1)));
        let account = user.account.public();
        for d in &mut user.devices {
            self.bundles
                .insert((account, d.mailbox), d.device.signed_bundle().unwrap());
            self.owners.insert(d.mailbox, account);
        }
    }

    /// Answers `step` as a relay with the default configuration would
    /// (envelopes over 96 KiB refused).
    pub(crate) fn serve(&mut self, step: &Step) -> Input {
        match step {
            Step::FetchDeviceList(u) => Input::DeviceList(Ok(self.lists.get(&u.user).cloned())),
            Step::FetchBundle { mailbox, .. } => {
                // As the relay: a bundle is the mailbox's, whoever asks.
                let owner = self.owners.get(&mailbox.0).copied().unwrap_or([0; 32]);
                Input::Bundle(Ok(FetchedBundle {
                    signed_bundle: self.bundles[&(owner, mailbox.0)].clone(),
                    one_time_ec: None,
                    one_time_kem: None,
                }))
            }
            Step::Submit {
                user,
                mailbox,
                envelope,
                token,
            } => {
                if envelope.len() > RELAY_MAX_ENVELOPE {
                    return Input::Submitted(Err(too_large()));
                }
                self.uploaded += sotto_proto::relay::Send {
                    recipient: mailbox.0.to_vec(),
                    payload: envelope.clone(),
                    delivery_token: token.as_ref().map(|t| t.to_vec()).unwrap_or_default(),
                }
                .encoded_len();
                self.next_id += 1;
                let mut id = [0u8; 16];
                id[8..].copy_from_slice(&self.next_id.to_be_bytes());
                self.mailboxes
                    .entry((user.user, mailbox.0))
                    .or_default()
                    .push((id, envelope.clone()));
                Input::Submitted(Ok(EnvelopeId(id)))
            }
            Step::SubmitShared {
                relay,
                envelope,
                recipients,
            } => {
                // One copy uploaded, one per mailbox stored.
                self.uploaded_shared += envelope.len();
                self.uploaded += sotto_proto::relay::SendShared {
                    payload: envelope.clone(),
                    recipients: recipients
                        .iter()
                        .map(|(m, t)| sotto_proto::relay::SharedRecipient {
                            mailbox: m.0.to_vec(),
                            delivery_token: t.as_ref().map(|t| t.to_vec()).unwrap_or_default(),
                        })
                        .collect(),
                }
                .encoded_len();
                let _ = relay;
                if self.no_shared {
                    // An older relay: a request body it does not know.
                    return Input::SubmittedShared(Err(crate::error::Error::Relay(
                        sotto_relay::RelayError::refusal(
                            sotto_proto::relay::ErrorCode::Malformed,
                            "frame has no body",
                        ),
                    )));
                }
                if envelope.len() > RELAY_MAX_ENVELOPE {
                    return Input::SubmittedShared(Ok(recipients
                        .iter()
                        .map(|_| Err(too_large()))
                        .collect()));
                }
                // As the relay: a mailbox named twice refuses the request.
                let mut named = std::collections::HashSet::new();
                if !recipients.iter().all(|(m, _)| named.insert(m.0)) {
                    return Input::SubmittedShared(Err(crate::error::Error::Relay(
                        sotto_relay::RelayError::refusal(
                            sotto_proto::relay::ErrorCode::Malformed,
                            "a recipient named twice",
                        ),
                    )));
                }
                let mut out = Vec::new();
                for (mailbox, _) in recipients {
                    // Test mailboxes are unique: find whose it is.
                    let user = self.owners.get(&mailbox.0).copied().unwrap_or([0; 32]);
                    self.next_id += 1;
                    let mut id = [0u8; 16];
                    id[8..].copy_from_slice(&self.next_id.to_be_bytes());
                    self.mailboxes
                        .entry((user, mailbox.0))
                        .or_default()
                        .push((id, envelope.clone()));
                    out.push(Ok(EnvelopeId(id)));
                }
                Input::SubmittedShared(Ok(out))
            }
            Step::Done(_) => unreachable!(),
        }
    }

    /// Runs one outbox pass of `user`'s device `index`.
    pub(crate) fn pass(&mut self, user: &mut TestUser, index: usize) {
        self.pass_at(user, index, NOW);
    }

    /// The same, at `now` (ms).
    pub(crate) fn pass_at(&mut self, user: &mut TestUser, index: usize, now: u64) {
        let p = self.run_pass(user, index, now);
        assert!(!p.pending, "nothing may wait on a healthy network");
    }

    /// One outbox pass at `now`, whatever waits after it (items to users
    /// with no list stay).
    pub(crate) fn run_pass(
        &mut self,
        user: &mut TestUser,
        index: usize,
        now: u64,
    ) -> crate::engine::outbound::Pass {
        let me = user.address();
        // Each device keeps its planner's caches between passes, as the
        // driver does.
        let cache = self.caches.remove(&(me.user, index)).unwrap_or_default();
        let d = &mut user.devices[index];
        let mut planner = Planner::new(&mut d.device, me.clone(), d.cert, cache).unwrap();
        loop {
            let step = planner.poll(&mut d.device, now, &mut OsRng).unwrap();
            if let Step::Done(p) = step {
                self.caches.insert((me.user, index), planner.into_cache());
                return p;
            }
            let served = std::time::Instant::now();
            let input = self.serve(&step);
            self.serve_time += served.elapsed();
            planner
                .handle(&mut d.device, input, now, &mut OsRng)
                .unwrap();
        }
    }

    /// Publishes the bundles of every device of `user`.
    pub(crate) fn publish_bundles(&mut self, user: &mut TestUser) {
        let account = user.account.public();
        for d in &mut user.devices {
            self.bundles
                .insert((account, d.mailbox), d.device.signed_bundle().unwrap());
            self.owners.insert(d.mailbox, account);
        }
    }

    /// Delivers (and empties) the mailbox of `user`'s device `index`.
    pub(crate) fn deliver(&mut self, user: &mut TestUser, index: usize) -> Envelopes {
        let key = (user.account.public(), user.devices[index].mailbox);
        let envelopes = self.mailboxes.remove(&key).unwrap_or_default();
        for e in &envelopes {
            user.receive(index, e);
        }
        envelopes
    }
}
