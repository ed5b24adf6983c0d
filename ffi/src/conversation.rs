//! `Conversation`: decrypted delivery of one peer's messages, in process.
//!
//! The app (or, later, the relay client) hands ciphertexts from `peer` to
//! `receive`; they wait in a bounded `MessageQueue` and are decrypted in
//! arrival order by whoever consumes the conversation: `next()` (a suspend
//! / async call) or a listener subscription, which decrypts on the shared
//! runtime and pushes `Event.Message` or, for a message that fails to
//! decrypt, `Event.Failed` with the reason (delivery goes on). Decryption is
//! sotto-core's `Device::decrypt`, one store transaction per message.

use std::fmt;
use std::sync::Arc;

use sotto_core::DeviceAddress;

use crate::device::{Device, PeerAddress};
use crate::error::Result;
use crate::listener::{Event, EventListener, ReceivedMessage, Subscription};
use crate::queue::{Item, MessageQueue};

/// Messages from one peer, decrypted in order for one consumer.
#[derive(uniffi::Object)]
pub struct Conversation {
    device: Arc<Device>,
    peer: DeviceAddress,
    inbox: Arc<MessageQueue>,
}

impl fmt::Debug for Conversation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conversation")
            .field("peer_device", &self.peer.device_id)
            .field("inbox", &self.inbox)
            .finish()
    }
}

impl Conversation {
    /// Used by `Device::conversation`.
    pub(crate) fn new(
        device: Arc<Device>,
        peer: DeviceAddress,
        capacity: u32,
    ) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            device,
            peer,
            inbox: MessageQueue::new(capacity)?,
        }))
    }

    fn decrypt(device: &Device, peer: &DeviceAddress, item: Item) -> Result<ReceivedMessage> {
        let body = device.decrypt_from(peer, &item.body)?;
        Ok(ReceivedMessage {
            sequence: item.sequence,
            body,
        })
    }
}

#[uniffi::export]
impl Conversation {
    /// The peer this conversation is with.
    pub fn peer(&self) -> PeerAddress {
        PeerAddress {
            user: self.peer.user.clone(),
            device_id: self.peer.device_id,
        }
    }

    /// Encrypts `plaintext` for the peer; returns the ciphertext to transport.
    pub fn encrypt(&self, plaintext: Vec<u8>) -> Result<Vec<u8>> {
        self.device.encrypt(self.peer(), plaintext)
    }

    /// Queues a ciphertext received from the peer; returns its sequence
    /// number. Fails with `Busy` when `capacity` messages wait undelivered,
    /// `TooLarge` above 96 KiB, `Closed` after `end()`.
    pub fn receive(&self, ciphertext: Vec<u8>) -> Result<u64> {
        self.inbox.try_send(ciphertext)
    }

    /// Like `receive`, but suspends while the conversation is full.
    pub async fn receive_waiting(&self, ciphertext: Vec<u8>) -> Result<u64> {
        self.inbox.send(ciphertext).await
    }

    /// Decrypts and returns the next message, waiting for one; `null`/`nil`
    /// after `end()` once all were read. A message that fails to decrypt is
    /// consumed and its typed error thrown (`DecryptFailed`,
    /// `DuplicateMessage`, ...); the next call goes on with the following one.
    pub async fn next(&self) -> Result<Option<ReceivedMessage>> {
        let (device, peer) = (&self.device, &self.peer);
        self.inbox
            .next_with(|item| Self::decrypt(device, peer, item))
            .await
    }

    /// Decrypts every queued and future message on the shared runtime and
    /// delivers `Message` or `Failed` events, then `Closed` after `end()`.
    pub fn subscribe(&self, listener: Arc<dyn EventListener>) -> Result<Arc<Subscription>> {
        let (device, peer) = (self.device.clone(), self.peer.clone());
        self.inbox.subscribe_with(listener, move |item| {
            let sequence = item.sequence;
            match Self::decrypt(&device, &peer, item) {
                Ok(message) => Event::Message { message },
                Err(e) => Event::Failed {
                    sequence,
                    reason: e.to_string(),
                },
            }
        })
    }

    /// No more messages will be received; consumers finish what is queued.
    pub fn end(&self) {
        self.inbox.end();
    }
}
