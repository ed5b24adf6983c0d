//! A sans-IO session: PQXDH setup plus the Double Ratchet, with the pending
//! PQXDH header the initiator repeats until the first reply.
//!
//! [`SessionState`] is the small chain state that is persisted as one row;
//! stored skipped message keys live elsewhere (their own rows, or the map in
//! [`Session`]) and are reached through `SkippedKeys`. Decrypting yields the
//! plaintext and a change set (`RatchetChanges`); the caller commits the new
//! state and the changes atomically, or drops both.
//!
//! [`Session`] bundles a state with an in-memory skipped-key map: the pure
//! object used by benches, tests and callers that persist by themselves.

use std::collections::HashMap;
use std::fmt;

use prost::Message;
use rand_core::CryptoRngCore;
use sotto_proto::{session as wire, store as rec};

use crate::error::{Error, Result};
use crate::identity::{IdentityKey, IdentityKeyPair};
use crate::keys::{Hex, X25519KeyPair, KEM_CIPHERTEXT_LEN};
use crate::padding::Padding;
use crate::pqxdh::{self, key32};
use crate::prekeys::{KemPrekey, OneTimePrekey, PrekeyBundle, SignedPrekey};
pub(crate) use crate::ratchet::SkippedKeys;
use crate::ratchet::{
    ChainKey, MessageKey, RatchetChanges, RatchetState, ReceivingChain, RootKey, Sending,
    RATCHET_MESSAGE_TYPE,
};

/// Envelope byte of a PQXDH first message: version 1, type 2.
pub const PREKEY_MESSAGE_TYPE: u8 = 0x12;
/// Version of the persisted [`rec::SessionRecord`].
pub const SESSION_RECORD_VERSION: u32 = 1;

/// The two kinds of wire message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// Carries the PQXDH header; sent until the peer replies.
    PreKey,
    /// An ordinary Double Ratchet message.
    Ratchet,
}

impl MessageKind {
    /// Classifies a wire message by its first byte.
    pub fn of(message: &[u8]) -> Result<Self> {
        match message.first() {
            Some(&RATCHET_MESSAGE_TYPE) => Ok(MessageKind::Ratchet),
            Some(&PREKEY_MESSAGE_TYPE) => Ok(MessageKind::PreKey),
            Some(b) if b >> 4 != 1 => Err(Error::UnsupportedVersion(b >> 4)),
            _ => Err(Error::Malformed {
                what: "message type",
            }),
        }
    }
}

/// An encrypted message ready for the relay.
#[derive(Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Its kind (also the first byte of `bytes`).
    pub kind: MessageKind,
    /// The complete wire bytes.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for OutgoingMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "OutgoingMessage({:?}, {} bytes)",
            self.kind,
            self.bytes.len()
        )
    }
}

/// The PQXDH header fields repeated until the first reply.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PendingPreKey {
    pub(crate) signed_prekey_id: u32,
    pub(crate) one_time_prekey_id: Option<u32>,
    pub(crate) kem_prekey_id: u32,
    pub(crate) kem_ciphertext: Vec<u8>,
    pub(crate) responder_device_id: u32,
    pub(crate) created_at: u64,
}

/// A parsed PQXDH first message.
#[derive(Clone)]
pub struct PreKeyMessage {
    /// The initiator's identity.
    pub initiator_identity: IdentityKey,
    /// The initiator's base key (session id).
    pub base_key: [u8; 32],
    /// Id of our signed prekey it used.
    pub signed_prekey_id: u32,
    /// Id of our one-time X25519 prekey it used, if any.
    pub one_time_prekey_id: Option<u32>,
    /// Id of our KEM prekey it used.
    pub kem_prekey_id: u32,
    pub(crate) kem_ciphertext: Vec<u8>,
    /// The device the bundle named.
    pub responder_device_id: u32,
    pub(crate) inner: Vec<u8>,
}

impl PreKeyMessage {
    /// Parses `0x12 || PreKeyMessage protobuf`, checking every length.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        match bytes.first() {
            Some(&PREKEY_MESSAGE_TYPE) => {}
            Some(b) if b >> 4 != 1 => return Err(Error::UnsupportedVersion(b >> 4)),
            _ => {
                return Err(Error::Malformed {
                    what: "prekey message type",
                })
            }
        }
        let m = wire::PreKeyMessage::decode(&bytes[1..]).map_err(|_| Error::Malformed {
            what: "prekey message",
        })?;
        if m.kem_ciphertext.len() != KEM_CIPHERTEXT_LEN {
            return Err(Error::Malformed {
                what: "ML-KEM ciphertext",
            });
        }
        Ok(PreKeyMessage {
            initiator_identity: IdentityKey::from_bytes(&m.initiator_identity)?,
            base_key: key32(&m.base_key, "base key")?,
            signed_prekey_id: m.signed_prekey_id,
            one_time_prekey_id: m.one_time_prekey_id,
            kem_prekey_id: m.kem_prekey_id,
            kem_ciphertext: m.kem_ciphertext,
            responder_device_id: m.responder_device_id,
            inner: m.message,
        })
    }
}

impl fmt::Debug for PreKeyMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreKeyMessage")
            .field("initiator_identity", &self.initiator_identity)
            .field("base_key", &Hex(&self.base_key[..8]))
            .field("signed_prekey_id", &self.signed_prekey_id)
            .field("one_time_prekey_id", &self.one_time_prekey_id)
            .field("kem_prekey_id", &self.kem_prekey_id)
            .finish()
    }
}

/// One session's chain state: identities, root and chain keys, ratchet keys.
#[derive(Clone)]
pub struct SessionState {
    pub(crate) local_identity: IdentityKey,
    pub(crate) remote_identity: IdentityKey,
    pub(crate) initiator: bool,
    pub(crate) base_key: [u8; 32],
    pub(crate) ad: [u8; 128],
    pub(crate) ratchet: RatchetState,
    pub(crate) pending: Option<PendingPreKey>,
}

impl fmt::Debug for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionState")
            .field("remote_identity", &self.remote_identity)
            .field("initiator", &self.initiator)
            .field("base_key", &Hex(&self.base_key[..8]))
            .field("pending_prekey", &self.pending.is_some())
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl SessionState {
    /// Starts a session with a verified bundle (the initiator's PQXDH half).
    pub fn initiate(
        ours: &IdentityKeyPair,
        bundle: &PrekeyBundle,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self> {
        let init = pqxdh::initiate(ours, bundle, rng)?;
        let base_key = *init.base.public();
        Ok(SessionState {
            local_identity: *ours.public(),
            remote_identity: bundle.identity,
            initiator: true,
            base_key,
            ad: pqxdh::session_ad(ours.public(), &bundle.identity),
            ratchet: RatchetState::new_initiator(
                init.root_key,
                init.chain_key,
                init.base,
                bundle.signed_prekey,
            ),
            pending: Some(PendingPreKey {
                signed_prekey_id: bundle.signed_prekey_id,
                one_time_prekey_id: bundle.one_time_prekey.map(|(id, _)| id),
                kem_prekey_id: bundle.kem_prekey_id,
                kem_ciphertext: init.kem_ciphertext,
                responder_device_id: bundle.device_id,
                created_at: now,
            }),
        })
    }

    /// The responder's PQXDH half, given the private prekeys the message names.
    /// The inner message still has to be decrypted with `SessionState::decrypt`.
    pub fn respond(
        ours: &IdentityKeyPair,
        message: &PreKeyMessage,
        signed_prekey: &SignedPrekey,
        one_time_prekey: Option<&OneTimePrekey>,
        kem_prekey: &KemPrekey,
    ) -> Result<Self> {
        let (root_key, chain_key) = pqxdh::respond(
            ours,
            &message.initiator_identity,
            &message.base_key,
            &signed_prekey.key,
            one_time_prekey.map(|k| &k.key),
            &kem_prekey.key,
            &message.kem_ciphertext,
        )?;
        Ok(SessionState {
            local_identity: *ours.public(),
            remote_identity: message.initiator_identity,
            initiator: false,
            base_key: message.base_key,
            ad: pqxdh::session_ad(&message.initiator_identity, ours.public()),
            ratchet: RatchetState::new_responder(root_key, chain_key, message.base_key),
            pending: None,
        })
    }

    /// The remote identity.
    pub fn remote_identity(&self) -> &IdentityKey {
        &self.remote_identity
    }

    /// The session id (the initiator's base key).
    pub fn session_id(&self) -> &[u8; 32] {
        &self.base_key
    }

    /// True until the peer has replied (messages still carry the PQXDH header).
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Encrypts; the state advances (persist it before sending).
    pub fn encrypt(
        &mut self,
        plaintext: &[u8],
        padding: Padding,
        rng: &mut impl CryptoRngCore,
    ) -> Result<OutgoingMessage> {
        let inner = self.ratchet.encrypt(&self.ad, plaintext, padding, rng)?;
        match &self.pending {
            None => Ok(OutgoingMessage {
                kind: MessageKind::Ratchet,
                bytes: inner,
            }),
            Some(p) => {
                let m = wire::PreKeyMessage {
                    initiator_identity: self.local_identity.as_bytes().to_vec(),
                    base_key: self.base_key.to_vec(),
                    signed_prekey_id: p.signed_prekey_id,
                    one_time_prekey_id: p.one_time_prekey_id,
                    kem_prekey_id: p.kem_prekey_id,
                    kem_ciphertext: p.kem_ciphertext.clone(),
                    responder_device_id: p.responder_device_id,
                    message: inner,
                };
                let mut bytes = Vec::with_capacity(1 + m.encoded_len());
                bytes.push(PREKEY_MESSAGE_TYPE);
                m.encode(&mut bytes).map_err(|_| Error::Malformed {
                    what: "prekey message encoding",
                })?;
                Ok(OutgoingMessage {
                    kind: MessageKind::PreKey,
                    bytes,
                })
            }
        }
    }

    /// Decrypts a ratchet message (for a PreKey message: its inner message).
    /// On error the state is unchanged.
    pub(crate) fn decrypt(
        &mut self,
        message: &[u8],
        stored: &dyn SkippedKeys,
    ) -> Result<(Vec<u8>, RatchetChanges)> {
        let out = self.ratchet.decrypt(&self.ad, message, stored)?;
        // Only the responder can produce a message we decrypt: it has the session.
        if self.initiator {
            self.pending = None;
        }
        Ok(out)
    }

    /// Encodes the persisted record (canonical protobuf).
    pub(crate) fn to_record(&self) -> rec::SessionRecord {
        let r = &self.ratchet;
        rec::SessionRecord {
            version: SESSION_RECORD_VERSION,
            local_identity: self.local_identity.as_bytes().to_vec(),
            remote_identity: self.remote_identity.as_bytes().to_vec(),
            initiator: self.initiator,
            base_key: self.base_key.to_vec(),
            root_key: r.root_key.as_bytes().to_vec(),
            our_ratchet_secret: r
                .sending
                .ours()
                .map(|k| k.secret_bytes().to_vec())
                .unwrap_or_default(),
            sending: match &r.sending {
                Sending::Active { chain, .. } => Some(rec::SendingChain {
                    chain_key: chain.as_bytes().to_vec(),
                }),
                Sending::NotStarted | Sending::StepDue { .. } => None,
            },
            previous_counter: r.previous_counter,
            send_counter: r.sending.sent(),
            their_ratchet_key: r.their_ratchet.to_vec(),
            receiving: r
                .receiving
                .iter()
                .map(|c| rec::ReceivingChain {
                    ratchet_key: c.ratchet_key.to_vec(),
                    chain_key: c.chain_key.as_bytes().to_vec(),
                    counter: c.counter,
                    skipped_end: c.skipped_end,
                    evicted_below: c.evicted_below,
                })
                .collect(),
            pending: self.pending.as_ref().map(|p| rec::PendingPreKey {
                signed_prekey_id: p.signed_prekey_id,
                one_time_prekey_id: p.one_time_prekey_id,
                kem_prekey_id: p.kem_prekey_id,
                kem_ciphertext: p.kem_ciphertext.clone(),
                responder_device_id: p.responder_device_id,
                created_at: p.created_at,
            }),
        }
    }

    /// Decodes a persisted record, validating every field.
    pub(crate) fn from_record(r: &rec::SessionRecord) -> Result<Self> {
        const W: &str = "session record";
        if r.version != SESSION_RECORD_VERSION {
            return Err(Error::Malformed { what: W });
        }
        let local_identity = IdentityKey::from_bytes(&r.local_identity)?;
        let remote_identity = IdentityKey::from_bytes(&r.remote_identity)?;
        let ad = if r.initiator {
            pqxdh::session_ad(&local_identity, &remote_identity)
        } else {
            pqxdh::session_ad(&remote_identity, &local_identity)
        };
        let our_ratchet = if r.our_ratchet_secret.is_empty() {
            None
        } else {
            Some(X25519KeyPair::from_slice(&r.our_ratchet_secret, W)?)
        };
        // The three sending states; a chain without our key pair, or a
        // count without any chain, is no state this code ever wrote.
        let sending = match (our_ratchet, &r.sending) {
            (None, None) if r.send_counter == 0 => Sending::NotStarted,
            (Some(ours), None) => Sending::StepDue {
                ours,
                sent: r.send_counter,
            },
            (Some(ours), Some(s)) => Sending::Active {
                ours,
                chain: ChainKey::from_slice(&s.chain_key, W)?,
                counter: r.send_counter,
            },
            _ => return Err(Error::Malformed { what: W }),
        };
        let mut receiving = Vec::with_capacity(r.receiving.len());
        for c in &r.receiving {
            receiving.push(ReceivingChain {
                ratchet_key: key32(&c.ratchet_key, W)?,
                chain_key: ChainKey::from_slice(&c.chain_key, W)?,
                counter: c.counter,
                evicted_below: c.evicted_below,
                skipped_end: c.skipped_end,
            });
        }
        Ok(SessionState {
            local_identity,
            remote_identity,
            initiator: r.initiator,
            base_key: key32(&r.base_key, W)?,
            ad,
            ratchet: RatchetState {
                root_key: RootKey::from_slice(&r.root_key, W)?,
                sending,
                previous_counter: r.previous_counter,
                their_ratchet: key32(&r.their_ratchet_key, W)?,
                receiving,
            },
            pending: r.pending.as_ref().map(|p| PendingPreKey {
                signed_prekey_id: p.signed_prekey_id,
                one_time_prekey_id: p.one_time_prekey_id,
                kem_prekey_id: p.kem_prekey_id,
                kem_ciphertext: p.kem_ciphertext.clone(),
                responder_device_id: p.responder_device_id,
                created_at: p.created_at,
            }),
        })
    }

    /// Canonical protobuf bytes of the record.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_record().encode_to_vec()
    }

    /// Parses bytes produced by [`SessionState::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let r = rec::SessionRecord::decode(bytes).map_err(|_| Error::Malformed {
            what: "session record",
        })?;
        Self::from_record(&r)
    }
}

/// In-memory skipped keys of a [`Session`].
#[derive(Default)]
struct MemorySkipped(HashMap<([u8; 32], u32), MessageKey>);

impl SkippedKeys for MemorySkipped {
    fn get(&self, ratchet_key: &[u8; 32], counter: u32) -> Result<Option<MessageKey>> {
        Ok(self.0.get(&(*ratchet_key, counter)).cloned())
    }
}

impl MemorySkipped {
    fn apply(&mut self, changes: RatchetChanges) {
        if let Some(k) = changes.skipped_consumed {
            self.0.remove(&k);
        }
        for s in changes.skipped_added {
            self.0.insert((s.ratchet_key, s.counter), s.key);
        }
        for (chain, from, to) in changes.skipped_evicted {
            self.0
                .retain(|(c, n), _| !(c == &chain && *n >= from && *n < to));
        }
        for chain in changes.chains_dropped {
            self.0.retain(|(c, _), _| c != &chain);
        }
    }
}

/// A complete session held in memory: chain state plus skipped keys.
pub struct Session {
    state: SessionState,
    skipped: MemorySkipped,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("state", &self.state)
            .field("skipped_keys", &self.skipped.0.len())
            .finish()
    }
}

impl Session {
    /// Starts a session as the initiator.
    pub fn initiate(
        ours: &IdentityKeyPair,
        bundle: &PrekeyBundle,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self> {
        Ok(Session {
            state: SessionState::initiate(ours, bundle, now, rng)?,
            skipped: MemorySkipped::default(),
        })
    }

    /// Accepts a PQXDH first message as the responder and decrypts it. The
    /// caller must delete the one-time prekeys it used.
    pub fn respond(
        ours: &IdentityKeyPair,
        message: &PreKeyMessage,
        signed_prekey: &SignedPrekey,
        one_time_prekey: Option<&OneTimePrekey>,
        kem_prekey: &KemPrekey,
    ) -> Result<(Self, Vec<u8>)> {
        let state =
            SessionState::respond(ours, message, signed_prekey, one_time_prekey, kem_prekey)?;
        let mut session = Session {
            state,
            skipped: MemorySkipped::default(),
        };
        let plaintext = session.decrypt_ratchet(&message.inner)?;
        Ok((session, plaintext))
    }

    /// Encrypts a message.
    pub fn encrypt(
        &mut self,
        plaintext: &[u8],
        padding: Padding,
        rng: &mut impl CryptoRngCore,
    ) -> Result<OutgoingMessage> {
        self.state.encrypt(plaintext, padding, rng)
    }

    /// Decrypts a message of this session (a PreKey message's inner message
    /// is unwrapped if its base key matches this session).
    pub fn decrypt(&mut self, message: &[u8]) -> Result<Vec<u8>> {
        match MessageKind::of(message)? {
            MessageKind::Ratchet => self.decrypt_ratchet(message),
            MessageKind::PreKey => {
                let m = PreKeyMessage::parse(message)?;
                if m.base_key != self.state.base_key {
                    return Err(Error::NoSession);
                }
                self.decrypt_ratchet(&m.inner)
            }
        }
    }

    fn decrypt_ratchet(&mut self, message: &[u8]) -> Result<Vec<u8>> {
        let (plaintext, changes) = self.state.decrypt(message, &self.skipped)?;
        self.skipped.apply(changes);
        Ok(plaintext)
    }

    /// Wraps a chain state (e.g. one loaded from bytes) with no stored skipped keys.
    pub fn from_state(state: SessionState) -> Self {
        Session {
            state,
            skipped: MemorySkipped::default(),
        }
    }

    /// The chain state.
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// Number of stored skipped keys.
    pub fn skipped_key_count(&self) -> usize {
        self.skipped.0.len()
    }
}

#[cfg(test)]
mod debug_tests {
    //! `Debug` output of every secret-holding type hides the secrets.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::keys::KemKeyPair;
    use crate::prekeys::signed_bundle_blob;
    use crate::store::sqlite::StorageKey;
    use rand_core::OsRng;

    fn assert_hidden(debug: &str, secret: &[u8]) {
        // Neither as hex nor as a decimal byte list.
        assert!(
            !debug.contains(&hex::encode(&secret[..8])),
            "secret hex leaked in {debug}"
        );
        let list = format!("{:?}", &secret[..4]);
        assert!(
            !debug.contains(list.trim_end_matches(']')),
            "secret bytes leaked in {debug}"
        );
    }

    #[test]
    fn debug_output_hides_every_secret() {
        let id = IdentityKeyPair::generate(&mut OsRng);
        assert_hidden(&format!("{id:?}"), &id.signing_secret()[..]);
        assert_hidden(&format!("{id:?}"), &id.dh().secret_bytes()[..]);
        let x = X25519KeyPair::generate(&mut OsRng);
        assert_hidden(&format!("{x:?}"), &x.secret_bytes()[..]);
        let k = KemKeyPair::generate(&mut OsRng);
        assert_hidden(&format!("{k:?}"), k.seed());
        let s = crate::keys::Secret32::from_bytes([0xAB; 32]);
        assert!(!format!("{s:?}").to_lowercase().contains("ab"));
        // The ratchet's role types print no more than the secret they hold.
        for d in [
            format!("{:?}", RootKey::from_bytes([0xAB; 32])),
            format!("{:?}", ChainKey::from_bytes([0xAB; 32])),
            format!("{:?}", MessageKey::from_bytes([0xAB; 32])),
        ] {
            assert!(!d.to_lowercase().contains("ab"), "{d}");
        }
        let sk = StorageKey::new([0xCD; 32]);
        assert!(
            !format!("{sk:?}").contains("205") && !format!("{sk:?}").to_lowercase().contains("cd")
        );

        let spk = SignedPrekey::generate(&id, 1, 1, 0, &mut OsRng);
        assert_hidden(&format!("{spk:?}"), &spk.key.secret_bytes()[..]);
        let kem = KemPrekey::generate(&id, 1, 1, true, 0, &mut OsRng);
        assert_hidden(&format!("{kem:?}"), kem.key.seed());
        let otk = OneTimePrekey::generate(1, &mut OsRng);
        assert_hidden(&format!("{otk:?}"), &otk.key.secret_bytes()[..]);

        let alice = IdentityKeyPair::generate(&mut OsRng);
        let blob = signed_bundle_blob(&id, 1, &spk, &kem);
        let bundle = PrekeyBundle::assemble(&blob, None, None).unwrap();
        let mut session = Session::initiate(&alice, &bundle, 0, &mut OsRng).unwrap();
        let msg = session.encrypt(b"x", Padding::None, &mut OsRng).unwrap();
        let st = session.state();
        let d = format!("{session:?} {st:?} {msg:?}");
        assert_hidden(&d, st.ratchet.root_key.as_bytes());
        let Sending::Active { chain, ours, .. } = &st.ratchet.sending else {
            panic!("an initiator sends first")
        };
        assert_hidden(&d, chain.as_bytes());
        assert_hidden(&d, &ours.secret_bytes()[..]);
        assert!(d.contains("redacted"));
    }
}
