//! The Double Ratchet (Signal's published specification) with a fixed-layout
//! header: root KDF (HKDF-SHA256), chain KDF (HMAC-SHA256), one
//! ChaCha20-Poly1305 key per message, skipped message keys with hard bounds.
//!
//! The sending half of a DH ratchet step is done lazily, on the next send
//! rather than on receipt: the keys produced are identical to the
//! specification's, but a party that receives several chains before replying
//! does the key generation and DH only once.
//!
//! `RatchetState::decrypt` never mutates state before the AEAD tag verifies:
//! it computes the candidate chain keys into locals, authenticates, and only
//! then writes them back and reports a `RatchetChanges` for the store.

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::CryptoRngCore;
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::keys::{Secret32, X25519KeyPair};
use crate::padding::{self, Padding};

/// Envelope byte of a ratchet message: version 1 (high nibble), type 1.
pub const RATCHET_MESSAGE_TYPE: u8 = 0x11;
/// Header length: type byte, ratchet key, previous-chain length, counter.
pub const HEADER_LEN: usize = 1 + 32 + 4 + 4;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// HKDF info of the root KDF.
pub const ROOT_KDF_INFO: &[u8] = b"Sotto_v1_Ratchet_Root";

/// Most message keys one message may make us derive and store in one chain.
/// 2,000 (vodozemac's limit) covers a long offline burst, while capping the
/// work a single forged header can cause at 2,000 HMACs (about 1 ms) before
/// the AEAD check rejects it. libsignal allows 25,000, which we find too
/// generous for a forged header's cost.
pub const MAX_MESSAGE_GAP: u32 = 2_000;
/// Skipped keys are kept only for the 2,000 counters below the newest
/// decrypted one in each chain (libsignal's per-chain bound): older ones are
/// evicted, so a chain never holds more than this many rows.
pub const MAX_SKIPPED_KEYS_PER_CHAIN: u32 = 2_000;
/// Receiving chains (and their skipped keys) kept per session, as libsignal
/// and vodozemac: enough for messages delayed across several ratchet turns.
pub const MAX_RECEIVING_CHAINS: usize = 5;
/// Hence the bound on stored skipped keys per session (10,000, ~0.5 MB).
pub const MAX_SKIPPED_KEYS_PER_SESSION: u32 =
    MAX_SKIPPED_KEYS_PER_CHAIN * MAX_RECEIVING_CHAINS as u32;

type HmacSha256 = Hmac<Sha256>;

/// The root key: the input of every DH ratchet step (`KDF_RK`).
#[derive(Clone, Debug)]
pub struct RootKey(Secret32);

/// A chain key: one per sending or receiving chain (`KDF_CK`).
#[derive(Clone, Debug)]
pub struct ChainKey(Secret32);

/// A message key: encrypts exactly one message.
#[derive(Clone, Debug)]
pub struct MessageKey(Secret32);

macro_rules! role {
    ($t:ident) => {
        impl $t {
            /// Wraps raw bytes (test vectors, interop, a stored record).
            pub fn from_bytes(bytes: [u8; 32]) -> Self {
                $t(Secret32::from_bytes(bytes))
            }

            /// The raw bytes (for persistence and test vectors).
            pub fn as_bytes(&self) -> &[u8; 32] {
                self.0.as_bytes()
            }

            pub(crate) fn from_slice(bytes: &[u8], what: &'static str) -> Result<Self> {
                Secret32::from_slice(bytes, what).map($t)
            }
        }
    };
}
role!(RootKey);
role!(ChainKey);
role!(MessageKey);

impl From<Secret32> for RootKey {
    fn from(s: Secret32) -> Self {
        RootKey(s)
    }
}

impl From<Secret32> for ChainKey {
    fn from(s: Secret32) -> Self {
        ChainKey(s)
    }
}

/// `KDF_RK`: HKDF-SHA256 with the root key as salt and the DH output as input
/// key material; 64 bytes = new root key || chain key.
pub fn kdf_rk(root: &RootKey, dh: &Secret32) -> (RootKey, ChainKey) {
    let hk = Hkdf::<Sha256>::new(Some(root.as_bytes()), dh.as_bytes());
    let mut okm = zeroize::Zeroizing::new([0u8; 64]);
    // 64 bytes is far below HKDF-SHA256's 8160-byte limit, so this cannot fail.
    let _ = hk.expand(ROOT_KDF_INFO, &mut okm[..]);
    (
        RootKey(Secret32::copy_from(&okm[..32])),
        ChainKey(Secret32::copy_from(&okm[32..])),
    )
}

/// `KDF_CK`: message key = HMAC(CK, 0x01), next chain key = HMAC(CK, 0x02).
/// The keyed HMAC state is computed once and cloned for both outputs.
pub fn kdf_ck(chain: &ChainKey) -> (MessageKey, ChainKey) {
    // HMAC accepts keys of any length, so construction cannot fail.
    let keyed = match <HmacSha256 as Mac>::new_from_slice(chain.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable_hmac(),
    };
    let mut m1 = keyed.clone();
    m1.update(&[0x01]);
    let mut m2 = keyed;
    m2.update(&[0x02]);
    let take = |m: HmacSha256| {
        let mut out = m.finalize().into_bytes();
        let key = Secret32::copy_from(&out);
        zeroize::Zeroize::zeroize(out.as_mut_slice());
        key
    };
    (MessageKey(take(m1)), ChainKey(take(m2)))
}

#[cold]
fn unreachable_hmac() -> HmacSha256 {
    // HMAC-SHA256 takes any key length; keep a defined value rather than panic.
    <HmacSha256 as KeyInit>::new(&Default::default())
}

/// The AEAD nonce: 8 zero bytes then the message counter, big-endian. Every
/// message key encrypts exactly one message, so the nonce needs no secrecy.
fn nonce_for(counter: u32) -> Nonce {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&counter.to_be_bytes());
    Nonce::from(n)
}

/// A parsed ratchet message header (borrowed from the message bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The sender's current ratchet public key.
    pub ratchet_key: [u8; 32],
    /// Length of the sender's previous sending chain.
    pub previous_counter: u32,
    /// This message's counter in its chain.
    pub counter: u32,
}

impl Header {
    /// Parses the fixed 41-byte header.
    pub fn parse(message: &[u8]) -> Result<Self> {
        if message.len() < HEADER_LEN + TAG_LEN + 1 {
            return Err(Error::Malformed {
                what: "ratchet message",
            });
        }
        if message[0] != RATCHET_MESSAGE_TYPE {
            return Err(if message[0] >> 4 != 1 {
                Error::UnsupportedVersion(message[0] >> 4)
            } else {
                Error::Malformed {
                    what: "ratchet message type",
                }
            });
        }
        let mut ratchet_key = [0u8; 32];
        ratchet_key.copy_from_slice(&message[1..33]);
        let mut pn = [0u8; 4];
        pn.copy_from_slice(&message[33..37]);
        let mut n = [0u8; 4];
        n.copy_from_slice(&message[37..41]);
        Ok(Header {
            ratchet_key,
            previous_counter: u32::from_be_bytes(pn),
            counter: u32::from_be_bytes(n),
        })
    }
}

/// One receiving chain.
#[derive(Clone, Debug)]
pub(crate) struct ReceivingChain {
    pub(crate) ratchet_key: [u8; 32],
    pub(crate) chain_key: ChainKey,
    /// Next expected counter.
    pub(crate) counter: u32,
    /// Counters below this whose key is missing were evicted.
    pub(crate) evicted_below: u32,
    /// One past the highest counter whose key was ever stored as skipped.
    pub(crate) skipped_end: u32,
}

/// A skipped message key, identified by chain and counter.
#[derive(Clone, Debug)]
pub(crate) struct SkippedKey {
    pub(crate) ratchet_key: [u8; 32],
    pub(crate) counter: u32,
    pub(crate) key: MessageKey,
}

/// Where a decrypt looks up stored skipped keys (in memory or in a store).
pub(crate) trait SkippedKeys {
    fn get(&self, ratchet_key: &[u8; 32], counter: u32) -> Result<Option<MessageKey>>;
}

/// What a decrypt changed besides the chain state: rows to write and delete.
#[derive(Debug, Default)]
pub(crate) struct RatchetChanges {
    pub(crate) skipped_added: Vec<SkippedKey>,
    pub(crate) skipped_consumed: Option<([u8; 32], u32)>,
    /// `(chain, from, to)`: delete stored keys with `from <= counter < to`.
    pub(crate) skipped_evicted: Vec<([u8; 32], u32, u32)>,
    /// Chains dropped entirely (delete all their stored keys).
    pub(crate) chains_dropped: Vec<[u8; 32]>,
}

/// The sending half of the ratchet.
#[derive(Clone, Debug)]
pub(crate) enum Sending {
    /// A responder that has not sent yet: no ratchet key pair of ours.
    NotStarted,
    /// A new remote ratchet key arrived: a DH ratchet step comes before the
    /// next send. `ours` still opens the receiving steps; `sent` is how many
    /// messages the last sending chain carried (the next header's PN).
    StepDue {
        /// Our current ratchet key pair.
        ours: X25519KeyPair,
        /// Messages sent on the last chain.
        sent: u32,
    },
    /// Sending on `chain` under our ratchet key pair `ours`.
    Active {
        /// Our current ratchet key pair (its public half is in every header).
        ours: X25519KeyPair,
        /// The chain key of the next message.
        chain: ChainKey,
        /// The next message's number in this chain.
        counter: u32,
    },
}

impl Sending {
    /// Our current ratchet key pair, if we have one.
    pub(crate) fn ours(&self) -> Option<&X25519KeyPair> {
        match self {
            Sending::NotStarted => None,
            Sending::StepDue { ours, .. } | Sending::Active { ours, .. } => Some(ours),
        }
    }

    /// Messages sent on the current (or last) chain.
    pub(crate) fn sent(&self) -> u32 {
        match self {
            Sending::NotStarted => 0,
            Sending::StepDue { sent, .. } => *sent,
            Sending::Active { counter, .. } => *counter,
        }
    }
}

/// The ratchet's chain state (everything except stored skipped keys).
#[derive(Clone, Debug)]
pub(crate) struct RatchetState {
    pub(crate) root_key: RootKey,
    pub(crate) sending: Sending,
    /// The length of our previous sending chain (PN of our headers).
    pub(crate) previous_counter: u32,
    pub(crate) their_ratchet: [u8; 32],
    /// Newest last.
    pub(crate) receiving: Vec<ReceivingChain>,
}

impl RatchetState {
    /// The initiator starts with a sending chain on its base key.
    pub(crate) fn new_initiator(
        root_key: RootKey,
        chain_key: ChainKey,
        base: X25519KeyPair,
        their_signed_prekey: [u8; 32],
    ) -> Self {
        RatchetState {
            root_key,
            sending: Sending::Active {
                ours: base,
                chain: chain_key,
                counter: 0,
            },
            previous_counter: 0,
            their_ratchet: their_signed_prekey,
            receiving: Vec::new(),
        }
    }

    /// The responder starts with a receiving chain on the initiator's base key.
    pub(crate) fn new_responder(
        root_key: RootKey,
        chain_key: ChainKey,
        their_base_key: [u8; 32],
    ) -> Self {
        RatchetState {
            root_key,
            sending: Sending::NotStarted,
            previous_counter: 0,
            their_ratchet: their_base_key,
            receiving: vec![ReceivingChain {
                ratchet_key: their_base_key,
                chain_key,
                counter: 0,
                evicted_below: 0,
                skipped_end: 0,
            }],
        }
    }

    /// Encrypts one message, advancing the sending chain (and doing the
    /// sending half of a DH ratchet step first if one is due).
    pub(crate) fn encrypt(
        &mut self,
        ad: &[u8; 128],
        plaintext: &[u8],
        padding: Padding,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>> {
        // Nothing changes before every check passed: a chain at u32::MAX is
        // exhausted, and the state stays as it was.
        let counter = match &self.sending {
            Sending::Active { counter, .. } => *counter,
            Sending::NotStarted | Sending::StepDue { .. } => 0,
        };
        let after = counter.checked_add(1).ok_or(Error::Malformed {
            what: "sending chain exhausted",
        })?;
        if !matches!(self.sending, Sending::Active { .. }) {
            // The sending half of a DH ratchet step.
            let ours = X25519KeyPair::generate(rng);
            let dh = ours.agree(&self.their_ratchet, "remote ratchet key")?;
            let (rk, ck) = kdf_rk(&self.root_key, &dh);
            self.root_key = rk;
            self.previous_counter = self.sending.sent();
            self.sending = Sending::Active {
                ours,
                chain: ck,
                counter: 0,
            };
        }
        let Sending::Active {
            ours,
            chain,
            counter: next,
        } = &mut self.sending
        else {
            return Err(Error::NoSession);
        };
        let (mk, next_chain) = kdf_ck(chain);
        *chain = next_chain;
        *next = after;
        let our_public = *ours.public();

        let body_len = padding::padded_len(plaintext.len(), padding);
        let mut out = Vec::with_capacity(HEADER_LEN + body_len + TAG_LEN);
        out.push(RATCHET_MESSAGE_TYPE);
        out.extend_from_slice(&our_public);
        out.extend_from_slice(&self.previous_counter.to_be_bytes());
        out.extend_from_slice(&counter.to_be_bytes());
        padding::pad_into(&mut out, plaintext, padding);
        seal(&mk, counter, ad, &mut out)?;
        Ok(out)
    }

    /// Decrypts one message. State changes only if the tag verifies.
    pub(crate) fn decrypt(
        &mut self,
        ad: &[u8; 128],
        message: &[u8],
        stored: &dyn SkippedKeys,
    ) -> Result<(Vec<u8>, RatchetChanges)> {
        let header = Header::parse(message)?;
        let mut changes = RatchetChanges::default();
        let n = header.counter;

        if let Some(idx) = self
            .receiving
            .iter()
            .position(|c| c.ratchet_key == header.ratchet_key)
        {
            let chain = &self.receiving[idx];
            if n < chain.counter {
                // An earlier message of a known chain: only a stored key can open it.
                let Some(mk) = stored.get(&header.ratchet_key, n)? else {
                    return Err(if n < chain.evicted_below {
                        Error::MessageKeyEvicted { counter: n }
                    } else {
                        Error::DuplicateMessage { counter: n }
                    });
                };
                let plaintext = open(&mk, n, ad, message)?;
                changes.skipped_consumed = Some((header.ratchet_key, n));
                return Ok((plaintext, changes));
            }
            let gap = n - chain.counter;
            if gap > MAX_MESSAGE_GAP {
                return Err(Error::TooFarInFuture { gap });
            }
            let (mk, next_ck, skipped) = advance(chain, n)?;
            let next = next_counter(n)?;
            let plaintext = open(&mk, n, ad, message)?;
            let chain = &mut self.receiving[idx];
            chain.chain_key = next_ck;
            chain.counter = next;
            record_skipped(chain, skipped, &mut changes);
            return Ok((plaintext, changes));
        }

        // A new ratchet key: finish the current receiving chain up to PN,
        // then do the receiving half of a DH ratchet step.
        let ours = self.sending.ours().ok_or(Error::DecryptFailed)?;
        let mut tail_skipped = None;
        if let Some(current) = self.receiving.last() {
            if current.ratchet_key == self.their_ratchet
                && header.previous_counter > current.counter
            {
                let gap = header.previous_counter - current.counter;
                if gap > MAX_MESSAGE_GAP {
                    return Err(Error::TooFarInFuture { gap });
                }
                let (ck, skipped) = advance_to(current, header.previous_counter)?;
                tail_skipped = Some((ck, skipped));
            }
        }
        if n > MAX_MESSAGE_GAP {
            return Err(Error::TooFarInFuture { gap: n });
        }
        let dh = ours.agree(&header.ratchet_key, "remote ratchet key")?;
        let (rk, ck) = kdf_rk(&self.root_key, &dh);
        let fresh = ReceivingChain {
            ratchet_key: header.ratchet_key,
            chain_key: ck,
            counter: 0,
            evicted_below: 0,
            skipped_end: 0,
        };
        let (mk, next_ck, skipped) = advance(&fresh, n)?;
        let next = next_counter(n)?;
        let plaintext = open(&mk, n, ad, message)?;

        // Authenticated: commit.
        if let Some((ck, skipped)) = tail_skipped {
            if let Some(current) = self.receiving.last_mut() {
                current.chain_key = ck;
                current.counter = header.previous_counter;
                record_skipped(current, skipped, &mut changes);
            }
        }
        let mut fresh = fresh;
        fresh.chain_key = next_ck;
        fresh.counter = next;
        record_skipped(&mut fresh, skipped, &mut changes);
        self.receiving.push(fresh);
        while self.receiving.len() > MAX_RECEIVING_CHAINS {
            let dropped = self.receiving.remove(0);
            changes.chains_dropped.push(dropped.ratchet_key);
        }
        self.root_key = rk;
        self.their_ratchet = header.ratchet_key;
        self.sending = match std::mem::replace(&mut self.sending, Sending::NotStarted) {
            Sending::Active { ours, counter, .. } => Sending::StepDue {
                ours,
                sent: counter,
            },
            other => other,
        };
        Ok((plaintext, changes))
    }
}

/// The counter after `n`; a chain that reached `u32::MAX` is exhausted.
fn next_counter(n: u32) -> Result<u32> {
    n.checked_add(1).ok_or(Error::Malformed {
        what: "receiving chain exhausted",
    })
}

/// Message keys passed over while advancing a chain, by counter.
type Skipped = Vec<(u32, MessageKey)>;

/// Derives the message key for counter `n` of `chain` (n >= chain.counter),
/// the chain key after it, and the keys skipped on the way.
fn advance(chain: &ReceivingChain, n: u32) -> Result<(MessageKey, ChainKey, Skipped)> {
    let (ck, skipped) = advance_to(chain, n)?;
    let (mk, next) = kdf_ck(&ck);
    Ok((mk, next, skipped))
}

/// Steps `chain` forward to counter `target`, returning the chain key at
/// `target` and the message keys of the counters passed over.
fn advance_to(chain: &ReceivingChain, target: u32) -> Result<(ChainKey, Skipped)> {
    let mut ck = chain.chain_key.clone();
    let mut skipped = Vec::with_capacity((target - chain.counter) as usize);
    for counter in chain.counter..target {
        let (mk, next) = kdf_ck(&ck);
        skipped.push((counter, mk));
        ck = next;
    }
    Ok((ck, skipped))
}

/// Adds skipped keys to the changes and evicts those that fell out of the
/// chain's window of [`MAX_SKIPPED_KEYS_PER_CHAIN`] counters.
fn record_skipped(
    chain: &mut ReceivingChain,
    skipped: Vec<(u32, MessageKey)>,
    changes: &mut RatchetChanges,
) {
    if let Some((last, _)) = skipped.last() {
        chain.skipped_end = last.saturating_add(1);
    }
    // Keep keys for at most the MAX_SKIPPED_KEYS_PER_CHAIN counters below the
    // last decrypted one (`chain.counter - 1`).
    let floor = chain.counter.saturating_sub(MAX_SKIPPED_KEYS_PER_CHAIN + 1);
    for (counter, key) in skipped {
        if counter >= floor {
            changes.skipped_added.push(SkippedKey {
                ratchet_key: chain.ratchet_key,
                counter,
                key,
            });
        }
    }
    if floor > chain.evicted_below {
        if chain.evicted_below < chain.skipped_end {
            changes.skipped_evicted.push((
                chain.ratchet_key,
                chain.evicted_below,
                floor.min(chain.skipped_end),
            ));
        }
        chain.evicted_below = floor;
    }
}

/// Encrypts `buf[HEADER_LEN..]` in place and appends the tag.
fn seal(mk: &MessageKey, counter: u32, session_ad: &[u8; 128], buf: &mut Vec<u8>) -> Result<()> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(mk.as_bytes()));
    let ad = message_ad(session_ad, &buf[..HEADER_LEN]);
    let (_, body) = buf.split_at_mut(HEADER_LEN);
    let tag = cipher
        .encrypt_in_place_detached(&nonce_for(counter), &ad, body)
        .map_err(|_| Error::Malformed {
            what: "message too long",
        })?;
    buf.extend_from_slice(&tag);
    Ok(())
}

/// Verifies and decrypts a message with its key; strips the padding.
fn open(mk: &MessageKey, counter: u32, session_ad: &[u8; 128], message: &[u8]) -> Result<Vec<u8>> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(mk.as_bytes()));
    let ad = message_ad(session_ad, &message[..HEADER_LEN]);
    let split = message.len() - TAG_LEN;
    let mut body = message[HEADER_LEN..split].to_vec();
    let tag = Tag::from_slice(&message[split..]);
    cipher
        .decrypt_in_place_detached(&nonce_for(counter), &ad, &mut body, tag)
        .map_err(|_| Error::DecryptFailed)?;
    padding::unpad(&mut body)?;
    Ok(body)
}

/// Per-message associated data: the session AD (both identities) then the header.
fn message_ad(session_ad: &[u8; 128], header: &[u8]) -> [u8; 128 + HEADER_LEN] {
    let mut ad = [0u8; 128 + HEADER_LEN];
    ad[..128].copy_from_slice(session_ad);
    ad[128..].copy_from_slice(header);
    ad
}
