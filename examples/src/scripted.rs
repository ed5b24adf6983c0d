//! A scripted user: one device with an encrypted SQLite store and a relay
//! mailbox, sending and receiving end-to-end encrypted text.
//!
//! The flow is the whole protocol in miniature: publish a signed bundle and
//! one-time prekeys to the relay; to write to someone, fetch their bundle
//! (the relay hands out each one-time prekey once), run PQXDH, then ratchet;
//! to read, fetch the mailbox, decrypt, and only then acknowledge (so a crash
//! between the two redelivers rather than loses).

use ed25519_dalek::SigningKey;
use rand_core::{OsRng, RngCore};
use sotto_core::device::unix_now;
use sotto_core::{
    Device, DeviceAddress, IdentityKey, PrekeyBundle, SafetyNumber, SqliteStore, StorageKey,
};
use sotto_relay::client::RelayClient;
use sotto_relay::ids::{EnvelopeId, MailboxId};

use crate::{ExampleError, Result};

/// How many one-time prekeys of each kind a device publishes at start.
const ONE_TIME_PREKEYS: u32 = 20;

/// What a user tells others so they can write to it (an address book entry).
#[derive(Debug, Clone)]
pub struct ContactCard {
    /// Display name.
    pub name: String,
    /// The user's public identity.
    pub identity: IdentityKey,
    /// The device id within the user.
    pub device_id: u32,
    /// The device's relay mailbox.
    pub mailbox: MailboxId,
}

impl ContactCard {
    fn address(&self) -> DeviceAddress {
        DeviceAddress::new(self.identity.as_bytes().to_vec(), self.device_id)
    }
}

/// The example framing of a relay envelope payload: who sent it (so the
/// recipient can find the session) and the core's message bytes.
///
/// `0x01 || sender identity (64) || sender device id (u32 BE) || sender
/// mailbox (32) || core message`. The relay sees this as opaque bytes.
#[derive(Debug)]
pub struct DemoEnvelope {
    /// Sender's identity key.
    pub identity: IdentityKey,
    /// Sender's device id.
    pub device_id: u32,
    /// Sender's mailbox, to reply to.
    pub mailbox: MailboxId,
    /// The `sotto-core` message (PreKey or Ratchet).
    pub message: Vec<u8>,
}

const HEADER_LEN: usize = 1 + 64 + 4 + 32;

impl DemoEnvelope {
    /// Encodes the envelope payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.message.len());
        out.push(1);
        out.extend_from_slice(self.identity.as_bytes());
        out.extend_from_slice(&self.device_id.to_be_bytes());
        out.extend_from_slice(&self.mailbox.0);
        out.extend_from_slice(&self.message);
        out
    }

    /// Decodes an envelope payload, refusing anything malformed.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < HEADER_LEN {
            return Err(ExampleError::Envelope("too short"));
        }
        if bytes[0] != 1 {
            return Err(ExampleError::Envelope("unknown version"));
        }
        let identity = IdentityKey::from_bytes(&bytes[1..65])?;
        let mut id = [0u8; 4];
        id.copy_from_slice(&bytes[65..69]);
        let mut mailbox = [0u8; 32];
        mailbox.copy_from_slice(&bytes[69..101]);
        Ok(DemoEnvelope {
            identity,
            device_id: u32::from_be_bytes(id),
            mailbox: MailboxId(mailbox),
            message: bytes[HEADER_LEN..].to_vec(),
        })
    }
}

/// A message as the relay handled it.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The relay's id for the envelope.
    pub envelope_id: EnvelopeId,
    /// Bytes the relay stored (all ciphertext, plus the example header).
    pub wire_len: usize,
}

/// A decrypted message.
#[derive(Debug, Clone)]
pub struct Received {
    /// Sender's identity.
    pub from: IdentityKey,
    /// The plaintext.
    pub text: Vec<u8>,
    /// Bytes the relay held for it.
    pub wire_len: usize,
}

/// One user with one device.
#[derive(Debug)]
pub struct ScriptedUser {
    /// Display name.
    pub name: String,
    device: Device<SqliteStore>,
    client: RelayClient,
    _dir: tempfile::TempDir,
}

impl ScriptedUser {
    /// Creates the device (fresh identity in an encrypted SQLite store),
    /// connects to the relay and publishes prekeys.
    pub async fn join(
        name: &str,
        relay: std::net::SocketAddr,
        pin: [u8; 32],
        device_id: u32,
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        let store = SqliteStore::open(dir.path().join("sotto.db"), &StorageKey::new(key))?;
        let mut device = Device::create(store, device_id, unix_now(), &mut OsRng)?;
        let mailbox_key = SigningKey::generate(&mut OsRng);
        let client = RelayClient::connect(relay, pin, &mailbox_key).await?;
        let bundle = device.signed_bundle()?;
        let (ec, kem) = device.generate_one_time_prekeys(
            ONE_TIME_PREKEYS,
            ONE_TIME_PREKEYS,
            unix_now(),
            &mut OsRng,
        )?;
        let items =
            |v: Vec<sotto_core::UploadItem>| v.into_iter().map(|i| (i.id, i.bytes)).collect();
        client
            .publish_prekeys(Some(bundle), items(ec), items(kem))
            .await?;
        Ok(ScriptedUser {
            name: name.to_string(),
            device,
            client,
            _dir: dir,
        })
    }

    /// This user's contact card.
    pub fn card(&self) -> ContactCard {
        ContactCard {
            name: self.name.clone(),
            identity: *self.device.identity(),
            device_id: self.device.device_id(),
            mailbox: self.client.mailbox(),
        }
    }

    /// The safety number this user and `other` compare out of band.
    pub fn safety_number(&self, other: &ContactCard) -> String {
        SafetyNumber::compute(self.device.identity(), &other.identity)
            .digits()
            .to_string()
    }

    /// Encrypts `text` for `to` (setting up a PQXDH session from a
    /// relay-served bundle first if needed) and submits it.
    pub async fn send(&mut self, to: &ContactCard, text: &[u8]) -> Result<Sent> {
        let addr = to.address();
        if !self.device.has_session(&addr)? {
            let fetched = self.client.fetch_bundle(&to.mailbox).await?;
            let bundle = PrekeyBundle::assemble(
                &fetched.signed_bundle,
                fetched.one_time_ec.as_ref().map(|(_, b)| b.as_slice()),
                fetched.one_time_kem.as_ref().map(|(_, b)| b.as_slice()),
            )?;
            self.device
                .process_bundle(&addr, &bundle, unix_now(), &mut OsRng)?;
        }
        let message = self.device.encrypt(&addr, text, &mut OsRng)?;
        let payload = DemoEnvelope {
            identity: *self.device.identity(),
            device_id: self.device.device_id(),
            mailbox: self.client.mailbox(),
            message: message.bytes,
        }
        .encode();
        let wire_len = payload.len();
        let envelope_id = self.client.send(&to.mailbox, payload).await?;
        Ok(Sent {
            envelope_id,
            wire_len,
        })
    }

    /// Fetches the mailbox, decrypts every envelope in order, and
    /// acknowledges each only after its decrypt committed.
    pub async fn receive(&mut self) -> Result<Vec<Received>> {
        let page = self.client.fetch(None, 100).await?;
        let mut out = Vec::with_capacity(page.envelopes.len());
        for env in page.envelopes {
            let wire_len = env.payload.len();
            let demo = DemoEnvelope::decode(&env.payload)?;
            let addr = DeviceAddress::new(demo.identity.as_bytes().to_vec(), demo.device_id);
            let text = self.device.decrypt(&addr, &demo.message, unix_now())?;
            self.client.ack(&[env.id]).await?;
            out.push(Received {
                from: demo.identity,
                text,
                wire_len,
            });
        }
        Ok(out)
    }
}
