//! Sender keys (the Signal/WhatsApp group scheme, PROTOCOL.md I.13): each
//! sending device of a group keeps one symmetric chain and one Ed25519
//! signing key, hands the chain's current position to every member device
//! over the pairwise sessions ([`SenderKeyDistribution`]), and then encrypts
//! each group message once for all of them.
//!
//! The chain steps with the Double Ratchet's `KDF_CK` (one message key per
//! iteration, then the chain key moves on), so a member given the chain at
//! iteration `n` can read nothing sent before `n`. Every member holds the
//! chain key, so the chain alone would let any member forge messages of
//! another: each message is therefore signed by the sending device's chain
//! signing key, whose secret never leaves that device.
//!
//! [`ReceivingChain::decrypt`] changes nothing before the signature and the
//! AEAD tag verify; skipped message keys and the jump ahead are bounded as in
//! the pairwise ratchet, and a key is used once (a replay is an error).

use std::collections::BTreeMap;
use std::fmt;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce, Tag};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use prost::Message as _;
use rand_core::CryptoRngCore;
use sotto_proto::session as pb;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::padding::{self, Padding};
use crate::ratchet::{kdf_ck, ChainKey, MessageKey, MAX_MESSAGE_GAP, TAG_LEN};

/// First byte of a sender-key message: version 1 (high nibble), type 3.
pub const SENDER_KEY_MESSAGE_TYPE: u8 = 0x13;
/// Length of a chain id.
pub const CHAIN_ID_LEN: usize = 16;
/// Header: type byte, chain id, iteration.
pub const SENDER_KEY_HEADER_LEN: usize = 1 + CHAIN_ID_LEN + 4;
/// Ed25519 signature at the end of every message.
pub const SIGNATURE_LEN: usize = 64;
/// Length of the context every message is bound to (the messenger's group id).
pub const CONTEXT_LEN: usize = 32;
/// Skipped message keys kept per receiving chain; older ones are evicted.
pub const MAX_SKIPPED_SENDER_KEYS: usize = 2_000;
/// Signature domain: no other Sotto signature starts with these bytes.
pub const SIGNATURE_DOMAIN: &[u8] = b"Sotto_v1_SenderKeyMessage";

/// A chain id: names one sending chain of one device (random, 16 bytes).
pub type ChainId = [u8; CHAIN_ID_LEN];

/// The clear header of a sender-key message, read before anything is
/// verified so the receiver can find the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderKeyHeader {
    /// Which chain.
    pub chain_id: ChainId,
    /// The message's iteration in that chain.
    pub iteration: u32,
}

impl SenderKeyHeader {
    /// Parses the header, checking the type byte and the minimum length.
    pub fn parse(message: &[u8]) -> Result<Self> {
        if message.len() < SENDER_KEY_HEADER_LEN + TAG_LEN + 1 + SIGNATURE_LEN {
            return Err(Error::Malformed {
                what: "sender key message",
            });
        }
        if message[0] != SENDER_KEY_MESSAGE_TYPE {
            return Err(if message[0] >> 4 != 1 {
                Error::UnsupportedVersion(message[0] >> 4)
            } else {
                Error::Malformed {
                    what: "sender key message type",
                }
            });
        }
        let mut chain_id = [0u8; CHAIN_ID_LEN];
        chain_id.copy_from_slice(&message[1..1 + CHAIN_ID_LEN]);
        let mut it = [0u8; 4];
        it.copy_from_slice(&message[1 + CHAIN_ID_LEN..SENDER_KEY_HEADER_LEN]);
        Ok(SenderKeyHeader {
            chain_id,
            iteration: u32::from_be_bytes(it),
        })
    }
}

/// A chain's position, handed to a member device over a pairwise session:
/// with it, that device reads this chain's messages from `iteration` on.
#[derive(Clone)]
pub struct SenderKeyDistribution {
    /// Which chain.
    pub chain_id: ChainId,
    /// The first iteration the receiver can read.
    pub iteration: u32,
    /// The chain key at `iteration`.
    pub chain_key: ChainKey,
    /// The chain's signing key (public half).
    pub signing_public: [u8; 32],
}

impl fmt::Debug for SenderKeyDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderKeyDistribution")
            .field("chain_id", &self.chain_id)
            .field("iteration", &self.iteration)
            .field("chain_key", &"<redacted>")
            .finish()
    }
}

/// This device's sending chain in one group.
#[derive(Clone)]
pub struct SendingChain {
    chain_id: ChainId,
    iteration: u32,
    chain: ChainKey,
    signing: SigningKey,
}

impl fmt::Debug for SendingChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendingChain")
            .field("chain_id", &self.chain_id)
            .field("iteration", &self.iteration)
            .field("secrets", &"<redacted>")
            .finish()
    }
}

impl SendingChain {
    /// A fresh chain: random id, chain key and signing key, iteration 0.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut chain_id = [0u8; CHAIN_ID_LEN];
        rng.fill_bytes(&mut chain_id);
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut key[..]);
        SendingChain {
            chain_id,
            iteration: 0,
            chain: ChainKey::from_bytes(*key),
            signing: SigningKey::generate(rng),
        }
    }

    /// A chain from fixed parts (test vectors).
    pub fn from_parts(
        chain_id: ChainId,
        iteration: u32,
        chain: ChainKey,
        signing_seed: &[u8; 32],
    ) -> Self {
        SendingChain {
            chain_id,
            iteration,
            chain,
            signing: SigningKey::from_bytes(signing_seed),
        }
    }

    /// The chain's id.
    pub fn chain_id(&self) -> &ChainId {
        &self.chain_id
    }

    /// The next message's iteration (how many this chain has sent).
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// True if `message` is one this chain sent (bound to `context`): its
    /// chain id, an iteration already used, and a valid signature by this
    /// chain's key. A device recognises its own message coming back (a
    /// group message goes to every member device, the sender's included,
    /// so the relay cannot tell the sender by the one left out).
    pub fn sent(&self, context: &[u8; CONTEXT_LEN], message: &[u8]) -> bool {
        let Ok(header) = SenderKeyHeader::parse(message) else {
            return false;
        };
        if header.chain_id != self.chain_id || header.iteration >= self.iteration {
            return false;
        }
        let (signed, signature) = message.split_at(message.len() - SIGNATURE_LEN);
        let Ok(signature) = Signature::from_slice(signature) else {
            return false;
        };
        self.signing
            .verifying_key()
            .verify(&signed_bytes(context, signed), &signature)
            .is_ok()
    }

    /// The chain's current position, for a member device.
    pub fn distribution(&self) -> SenderKeyDistribution {
        SenderKeyDistribution {
            chain_id: self.chain_id,
            iteration: self.iteration,
            chain_key: self.chain.clone(),
            signing_public: self.signing.verifying_key().to_bytes(),
        }
    }

    /// Encrypts and signs one message bound to `context` (the group id), and
    /// moves the chain on. The caller persists the chain before the message
    /// leaves, so no iteration is ever used twice.
    pub fn encrypt(
        &mut self,
        context: &[u8; CONTEXT_LEN],
        plaintext: &[u8],
        padding: Padding,
    ) -> Result<Vec<u8>> {
        let next_iteration = self.iteration.checked_add(1).ok_or(Error::Malformed {
            what: "exhausted sender key chain",
        })?;
        let (mk, next) = kdf_ck(&self.chain);
        let mut out = Vec::with_capacity(
            SENDER_KEY_HEADER_LEN
                + padding::padded_len(plaintext.len(), padding)
                + TAG_LEN
                + SIGNATURE_LEN,
        );
        out.push(SENDER_KEY_MESSAGE_TYPE);
        out.extend_from_slice(&self.chain_id);
        out.extend_from_slice(&self.iteration.to_be_bytes());
        let mut body = Zeroizing::new(Vec::with_capacity(out.capacity()));
        padding::pad_into(&mut body, plaintext, padding);
        let aad = associated_data(context, &out);
        let tag = cipher(&mk)
            .encrypt_in_place_detached(&nonce_for(self.iteration), &aad, &mut body)
            .map_err(|_| Error::DecryptFailed)?;
        out.extend_from_slice(&body);
        out.extend_from_slice(&tag);
        let signature = self.signing.sign(&signed_bytes(context, &out));
        out.extend_from_slice(&signature.to_bytes());
        self.chain = next;
        self.iteration = next_iteration;
        Ok(out)
    }

    /// The record the messenger stores.
    pub fn to_record(&self) -> Zeroizing<Vec<u8>> {
        let seed = Zeroizing::new(self.signing.to_bytes());
        let record = pb::SenderKeyRecord {
            chain_id: self.chain_id.to_vec(),
            iteration: self.iteration,
            chain_key: self.chain.as_bytes().to_vec(),
            signing_public: self.signing.verifying_key().to_bytes().to_vec(),
            signing_secret: seed.to_vec(),
            skipped: Vec::new(),
            first_iteration: 0,
        };
        let bytes = Zeroizing::new(record.encode_to_vec());
        zeroize_record(record);
        bytes
    }

    /// Reads a stored record (it must hold the signing secret).
    pub fn from_record(bytes: &[u8]) -> Result<Self> {
        let record = decode_record(bytes)?;
        let chain = (|| {
            let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
                record
                    .signing_secret
                    .as_slice()
                    .try_into()
                    .map_err(|_| malformed())?,
            );
            Ok(SendingChain {
                chain_id: record
                    .chain_id
                    .as_slice()
                    .try_into()
                    .map_err(|_| malformed())?,
                iteration: record.iteration,
                chain: ChainKey::from_slice(&record.chain_key, "sender key record")?,
                signing: SigningKey::from_bytes(&seed),
            })
        })();
        zeroize_record(record);
        chain
    }
}

/// Another device's chain, as this device reads it.
#[derive(Clone)]
pub struct ReceivingChain {
    chain_id: ChainId,
    /// The earliest iteration this device was given (keys below it it never
    /// had; keys from it on it had, and used or skipped).
    first: u32,
    /// The next iteration the chain key derives.
    iteration: u32,
    chain: ChainKey,
    verifying: VerifyingKey,
    skipped: BTreeMap<u32, MessageKey>,
}

impl fmt::Debug for ReceivingChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivingChain")
            .field("chain_id", &self.chain_id)
            .field("iteration", &self.iteration)
            .field("skipped", &self.skipped.len())
            .field("secrets", &"<redacted>")
            .finish()
    }
}

impl ReceivingChain {
    /// The chain a member handed out. Fails if its signing key is not a
    /// valid Ed25519 point.
    pub fn from_distribution(d: &SenderKeyDistribution) -> Result<Self> {
        Ok(ReceivingChain {
            chain_id: d.chain_id,
            first: d.iteration,
            iteration: d.iteration,
            chain: d.chain_key.clone(),
            verifying: VerifyingKey::from_bytes(&d.signing_public).map_err(|_| {
                Error::InvalidKey {
                    what: "sender key signing key",
                }
            })?,
            skipped: BTreeMap::new(),
        })
    }

    /// The chain's id.
    pub fn chain_id(&self) -> &ChainId {
        &self.chain_id
    }

    /// The next iteration the chain key derives (older ones are readable only
    /// if skipped and still kept).
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// The chain's signing key: a second distribution of the same chain id
    /// must carry the same one.
    pub fn signing_public(&self) -> [u8; 32] {
        self.verifying.to_bytes()
    }

    /// Takes a second distribution of this chain. One at an earlier position
    /// than any this device had (the sender's distributions arrived out of
    /// order) adds the keys of the iterations before it as skipped keys, so
    /// the messages sent there still read; nothing this device already had
    /// comes back (a used key is never restored). Refused if the signing key
    /// differs, the gap is over the bound, or (when nothing was read yet)
    /// the earlier chain key does not lead to the one held.
    pub fn extend_back(&mut self, d: &SenderKeyDistribution) -> Result<()> {
        let refused = Error::BadSignature {
            what: "sender key distribution",
        };
        if d.chain_id != self.chain_id || d.signing_public != self.verifying.to_bytes() {
            return Err(refused);
        }
        if d.iteration >= self.first {
            return Ok(());
        }
        let gap = self.first - d.iteration;
        if gap > MAX_MESSAGE_GAP {
            return Err(Error::TooFarInFuture { gap });
        }
        let mut chain = d.chain_key.clone();
        let mut keys = Vec::with_capacity(gap as usize);
        for i in d.iteration..self.first {
            let (k, next) = kdf_ck(&chain);
            keys.push((i, k));
            chain = next;
        }
        if self.first == self.iteration
            && !bool::from(subtle::ConstantTimeEq::ct_eq(
                &chain.as_bytes()[..],
                &self.chain.as_bytes()[..],
            ))
        {
            return Err(refused);
        }
        self.skipped.extend(keys);
        while self.skipped.len() > MAX_SKIPPED_SENDER_KEYS {
            self.skipped.pop_first();
        }
        self.first = d.iteration;
        Ok(())
    }

    /// Verifies and decrypts one message bound to `context`. On any error
    /// the chain is unchanged; on success the message's key is gone (a
    /// replay is [`Error::DuplicateMessage`]).
    pub fn decrypt(&mut self, context: &[u8; CONTEXT_LEN], message: &[u8]) -> Result<Vec<u8>> {
        let header = SenderKeyHeader::parse(message)?;
        if header.chain_id != self.chain_id {
            return Err(Error::Malformed {
                what: "sender key chain id",
            });
        }
        let (signed, signature) = message.split_at(message.len() - SIGNATURE_LEN);
        let signature = Signature::from_slice(signature).map_err(|_| Error::BadSignature {
            what: "sender key message",
        })?;
        self.verifying
            .verify(&signed_bytes(context, signed), &signature)
            .map_err(|_| Error::BadSignature {
                what: "sender key message",
            })?;
        let n = header.iteration;
        // The key: a kept skipped one, or derived ahead (bounded).
        let mut new_skipped: Vec<(u32, MessageKey)> = Vec::new();
        let (mk, next_chain) = if n < self.iteration {
            match self.skipped.get(&n) {
                Some(k) => (k.clone(), None),
                None => return Err(Error::DuplicateMessage { counter: n }),
            }
        } else {
            let gap = n - self.iteration;
            if gap > MAX_MESSAGE_GAP {
                return Err(Error::TooFarInFuture { gap });
            }
            let mut chain = self.chain.clone();
            for i in self.iteration..n {
                let (k, next) = kdf_ck(&chain);
                new_skipped.push((i, k));
                chain = next;
            }
            let (k, next) = kdf_ck(&chain);
            (k, Some(next))
        };
        let (head, rest) = signed.split_at(SENDER_KEY_HEADER_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut buf = body.to_vec();
        cipher(&mk)
            .decrypt_in_place_detached(
                &nonce_for(n),
                &associated_data(context, head),
                &mut buf,
                Tag::from_slice(tag),
            )
            .map_err(|_| Error::DecryptFailed)?;
        padding::unpad(&mut buf)?;
        // Authenticated: commit.
        match next_chain {
            None => {
                self.skipped.remove(&n);
            }
            Some(next) => {
                self.skipped.extend(new_skipped);
                self.chain = next;
                self.iteration = n.saturating_add(1);
                while self.skipped.len() > MAX_SKIPPED_SENDER_KEYS {
                    self.skipped.pop_first();
                }
            }
        }
        Ok(buf)
    }

    /// The record the messenger stores.
    pub fn to_record(&self) -> Zeroizing<Vec<u8>> {
        let record = pb::SenderKeyRecord {
            chain_id: self.chain_id.to_vec(),
            iteration: self.iteration,
            chain_key: self.chain.as_bytes().to_vec(),
            signing_public: self.verifying.to_bytes().to_vec(),
            signing_secret: Vec::new(),
            first_iteration: self.first,
            skipped: self
                .skipped
                .iter()
                .map(|(i, k)| pb::SkippedSenderKey {
                    iteration: *i,
                    message_key: k.as_bytes().to_vec(),
                })
                .collect(),
        };
        let bytes = Zeroizing::new(record.encode_to_vec());
        zeroize_record(record);
        bytes
    }

    /// Reads a stored record, checking every length and bound.
    pub fn from_record(bytes: &[u8]) -> Result<Self> {
        let record = decode_record(bytes)?;
        let chain = Self::parse_record(&record);
        zeroize_record(record);
        chain
    }

    fn parse_record(record: &pb::SenderKeyRecord) -> Result<Self> {
        if record.skipped.len() > MAX_SKIPPED_SENDER_KEYS {
            return Err(malformed());
        }
        let signing: [u8; 32] = record
            .signing_public
            .as_slice()
            .try_into()
            .map_err(|_| malformed())?;
        let mut skipped = BTreeMap::new();
        for s in &record.skipped {
            if s.iteration >= record.iteration {
                return Err(malformed());
            }
            skipped.insert(
                s.iteration,
                MessageKey::from_slice(&s.message_key, "sender key record")?,
            );
        }
        if record.first_iteration > record.iteration {
            return Err(malformed());
        }
        Ok(ReceivingChain {
            chain_id: record
                .chain_id
                .as_slice()
                .try_into()
                .map_err(|_| malformed())?,
            first: record.first_iteration,
            iteration: record.iteration,
            chain: ChainKey::from_slice(&record.chain_key, "sender key record")?,
            verifying: VerifyingKey::from_bytes(&signing).map_err(|_| malformed())?,
            skipped,
        })
    }
}

fn malformed() -> Error {
    Error::Malformed {
        what: "sender key record",
    }
}

fn decode_record(bytes: &[u8]) -> Result<pb::SenderKeyRecord> {
    pb::SenderKeyRecord::decode(bytes).map_err(|_| malformed())
}

/// Wipes the secret fields of a decoded or encoded record.
fn zeroize_record(mut record: pb::SenderKeyRecord) {
    use zeroize::Zeroize;
    record.chain_key.zeroize();
    record.signing_secret.zeroize();
    for s in &mut record.skipped {
        s.message_key.zeroize();
    }
}

fn cipher(mk: &MessageKey) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(Key::from_slice(mk.as_bytes()))
}

/// 8 zero bytes, then the iteration (big-endian): each key encrypts once.
fn nonce_for(iteration: u32) -> Nonce {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&iteration.to_be_bytes());
    Nonce::from(n)
}

/// AEAD associated data: the context, then the 21-byte header.
fn associated_data(context: &[u8; CONTEXT_LEN], header: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(CONTEXT_LEN + SENDER_KEY_HEADER_LEN);
    aad.extend_from_slice(context);
    aad.extend_from_slice(&header[..SENDER_KEY_HEADER_LEN]);
    aad
}

/// What the chain's key signs: the domain, the context, and every byte of
/// the message before the signature.
fn signed_bytes(context: &[u8; CONTEXT_LEN], message: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_DOMAIN.len() + CONTEXT_LEN + message.len());
    m.extend_from_slice(SIGNATURE_DOMAIN);
    m.extend_from_slice(context);
    m.extend_from_slice(message);
    m
}

#[cfg(test)]
mod tests;
