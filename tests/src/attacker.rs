//! The attacker of the end-to-end attack tests: a client built by hand from
//! sotto-core's parts, so every byte it sends is the test's choice (a
//! forged identity, a claimed sender, malformed content), delivered over a
//! real relay like any other envelope. It registers like a genuine user
//! (signed bundle, signed device list), so its own sessions are real.

use ed25519_dalek::SigningKey;
use prost::Message as _;
use rand_core::OsRng;
use sotto_core::session::MessageKind;
use sotto_core::{Device, DeviceAddress, IdentityKey, MemoryStore, PrekeyBundle};
use sotto_messenger::engine::envelope::sender_mac;
use sotto_messenger::{
    AccountKeyPair, DeviceCertificate, DeviceEntry, DeviceList, RelayAddress, UserAddress,
};
use sotto_proto::client as pb;
use sotto_relay::{MailboxId, RelayClient};

use crate::RelayProcess;

/// What can go wrong for the attacker (a test failure, not an outcome).
pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A user whose client is the test itself.
pub struct Attacker {
    /// Its account.
    pub account: AccountKeyPair,
    /// Its only device (id 1).
    pub device: Device<MemoryStore>,
    /// The account's certificate for that device.
    pub cert: DeviceCertificate,
    /// Its connection to its home relay, as its own mailbox.
    pub conn: RelayClient,
    /// The home relay.
    pub relay: RelayAddress,
}

impl Attacker {
    /// Registers a genuine user with one device on `relay`.
    pub async fn register(relay: &RelayProcess) -> Result<Self> {
        let account = AccountKeyPair::generate(&mut OsRng);
        let mut device = Device::create(MemoryStore::new(), 1, unix_now(), &mut OsRng)?;
        let cert = account.certify(1, device.identity());
        let mailbox = SigningKey::generate(&mut OsRng);
        let conn = RelayClient::connect(relay.addr, relay.pin, &mailbox).await?;
        let blob = device.signed_bundle()?;
        let (ec, kem) = device.generate_one_time_prekeys(10, 10, unix_now(), &mut OsRng)?;
        let items =
            |v: Vec<sotto_core::UploadItem>| v.into_iter().map(|i| (i.id, i.bytes)).collect();
        conn.publish_prekeys(Some(blob), items(ec), items(kem))
            .await?;
        let list = DeviceList {
            version: 1,
            devices: vec![DeviceEntry {
                device_id: 1,
                mailbox: MailboxId(mailbox.verifying_key().to_bytes()),
                identity: *device.identity(),
            }],
            next_device_id: 2,
        };
        conn.publish_device_list(list.sign(&account)).await?;
        Ok(Attacker {
            account,
            device,
            cert,
            conn,
            relay: RelayAddress::new(relay.addr, relay.pin),
        })
    }

    /// This user's address.
    pub fn address(&self) -> UserAddress {
        UserAddress {
            user: self.account.public(),
            relay: self.relay.clone(),
        }
    }

    /// `to`'s verified device list, from the relay.
    pub async fn devices_of(&self, to: &UserAddress) -> Result<DeviceList> {
        let signed = self
            .conn
            .fetch_device_list(&to.user)
            .await?
            .ok_or("no device list")?;
        Ok(DeviceList::verify(&to.user, &signed)?)
    }

    /// A verified bundle of `to`'s device `device_id` (consumes one-time keys).
    pub async fn bundle_of(
        &self,
        to: &UserAddress,
        device_id: u32,
    ) -> Result<(PrekeyBundle, MailboxId)> {
        let list = self.devices_of(to).await?;
        let entry = list.get(device_id).ok_or("no such device")?;
        let fetched = self.conn.fetch_bundle(&entry.mailbox).await?;
        let bundle = PrekeyBundle::assemble(
            &fetched.signed_bundle,
            fetched.one_time_ec.as_ref().map(|(_, b)| b.as_slice()),
            fetched.one_time_kem.as_ref().map(|(_, b)| b.as_slice()),
        )?;
        Ok((bundle, entry.mailbox))
    }

    /// Sends `content` to `to`'s device `device_id` as this user, honestly:
    /// a genuine session, certificate and sender MAC.
    pub async fn send(
        &mut self,
        to: &UserAddress,
        device_id: u32,
        content: &pb::Content,
    ) -> Result<()> {
        let addr = DeviceAddress::new(to.user.to_vec(), device_id);
        let (identity, mailbox) = if self.device.has_session(&addr)? {
            let list = self.devices_of(to).await?;
            let e = list.get(device_id).ok_or("no such device")?;
            (e.identity, e.mailbox)
        } else {
            let (bundle, mailbox) = self.bundle_of(to, device_id).await?;
            let identity = *bundle.identity();
            self.device
                .process_bundle(&addr, &bundle, unix_now(), &mut OsRng)?;
            (identity, mailbox)
        };
        let m = self
            .device
            .encrypt(&addr, &content.encode_to_vec(), &mut OsRng)?;
        let key = self
            .device
            .sender_mac_key(self.device.identity(), &identity)?;
        let mac = sender_mac(&key, &self.account.public(), 1, &m.bytes);
        let payload = sealed(
            &identity,
            &self.account.public(),
            1,
            (m.kind == MessageKind::PreKey).then_some(&self.cert),
            m.bytes,
            mac.to_vec(),
        );
        self.conn.send(&mailbox, payload).await?;
        Ok(())
    }

    /// Delivers raw bytes to a mailbox.
    pub async fn send_raw(&self, mailbox: &MailboxId, payload: Vec<u8>) -> Result<()> {
        self.conn.send(mailbox, payload).await?;
        Ok(())
    }

    /// A chat message content from this user, whose replies go to `relay`.
    pub fn text(&self, relay: &RelayAddress, id: u8, text: &str) -> pb::Content {
        pb::Content {
            sender_relay: relay.to_string(),
            delivery_token: Vec::new(),
            body: Some(pb::content::Body::Message(pb::Message {
                id: vec![id; 16],
                sent_at_ms: 0,
                text: text.into(),
                attachments: vec![],
            })),
        }
    }
}

/// A relay payload: a Part I message with the given sender claims, sealed
/// to the device whose identity is `to` (PROTOCOL.md I.14; anyone can).
pub fn sealed(
    to: &IdentityKey,
    user: &[u8; 32],
    device: u32,
    cert: Option<&DeviceCertificate>,
    message: Vec<u8>,
    mac: Vec<u8>,
) -> Vec<u8> {
    let inner = pb::Sealed {
        sender_user: user.to_vec(),
        sender_device: device,
        message,
        sender_certificate: cert.map(|c| c.to_pb()),
        sender_mac: mac,
    }
    .encode_to_vec();
    let sealed = sotto_core::sealed::seal(
        to.dh_public(),
        &inner,
        sotto_core::Padding::Buckets,
        &mut OsRng,
    )
    .unwrap_or_default();
    pb::Envelope {
        version: 1,
        body: Some(pb::envelope::Body::Sealed(sealed)),
    }
    .encode_to_vec()
}

/// The identity of device `device_id` in a list.
pub fn identity_in(list: &DeviceList, device_id: u32) -> Option<IdentityKey> {
    list.get(device_id).map(|e| e.identity)
}

/// Seconds since 1970.
pub fn unix_now() -> u64 {
    sotto_core::device::unix_now()
}
