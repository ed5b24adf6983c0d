//! The sealed envelope's sender authentication: a MAC under a key both
//! devices derive from their static identities alone
//! ([`sotto_core::Device::sender_mac_key`]). A message that decrypts is
//! authenticated by its session; the MAC matters when it does not (a lost or
//! broken session): it tells a genuine sender, whose failure deserves a
//! repair, from a stranger forging the sender fields, whose failure never
//! makes this device do anything.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use sotto_core::device::Device;
use sotto_core::identity::IdentityKey;
use sotto_core::keys::Secret32;
use sotto_core::store::Store;

use crate::error::Result;

/// Peer devices whose sender-MAC key is kept in memory.
const MAC_KEY_CACHE: usize = 1024;

/// Sender-MAC keys by peer device identity and direction: one X25519 per
/// peer device, direction and process, not one per message. Bounded
/// (cleared when full).
#[derive(Default)]
pub(crate) struct MacKeys(std::collections::HashMap<([u8; 64], bool), Secret32>);

impl std::fmt::Debug for MacKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MacKeys")
            .field("cached", &self.0.len())
            .finish()
    }
}

impl MacKeys {
    /// The key of what `device` sends to the peer device `peer`.
    pub(crate) fn get<S: Store>(
        &mut self,
        device: &Device<S>,
        peer: &IdentityKey,
    ) -> Result<Secret32> {
        self.cached(device, peer, true)
    }

    /// The key of what the peer device `peer` sends to `device`.
    pub(crate) fn get_from<S: Store>(
        &mut self,
        device: &Device<S>,
        peer: &IdentityKey,
    ) -> Result<Secret32> {
        self.cached(device, peer, false)
    }

    fn cached<S: Store>(
        &mut self,
        device: &Device<S>,
        peer: &IdentityKey,
        sending: bool,
    ) -> Result<Secret32> {
        let k = (*peer.as_bytes(), sending);
        if let Some(key) = self.0.get(&k) {
            return Ok(key.clone());
        }
        let key = if sending {
            device.sender_mac_key(device.identity(), peer)?
        } else {
            device.sender_mac_key(peer, device.identity())?
        };
        if self.0.len() >= MAC_KEY_CACHE {
            self.0.clear();
        }
        self.0.insert(k, key.clone());
        Ok(key)
    }
}

/// Length of the truncated MAC.
pub const SENDER_MAC_LEN: usize = 16;

fn mac(key: &Secret32, user: &[u8; 32], device: u32, message: &[u8]) -> [u8; SENDER_MAC_LEN] {
    mac_in(key, b"", user, device, message)
}

fn mac_in(
    key: &Secret32,
    domain: &[u8],
    user: &[u8; 32],
    device: u32,
    message: &[u8],
) -> [u8; SENDER_MAC_LEN] {
    let mut h = match <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()) {
        Ok(h) => h,
        // HMAC takes keys of any length.
        Err(_) => return [0u8; SENDER_MAC_LEN],
    };
    h.update(domain);
    h.update(user);
    h.update(&device.to_be_bytes());
    h.update(message);
    let full = h.finalize().into_bytes();
    let mut out = [0u8; SENDER_MAC_LEN];
    out.copy_from_slice(&full[..SENDER_MAC_LEN]);
    out
}

/// `HMAC-SHA256(key, sender_user || u32be(sender_device) || message)[..16]`.
pub fn sender_mac(
    key: &Secret32,
    user: &[u8; 32],
    device: u32,
    message: &[u8],
) -> [u8; SENDER_MAC_LEN] {
    mac(key, user, device, message)
}

/// Checks a received MAC in constant time.
pub(crate) fn verify_sender_mac(
    key: &Secret32,
    user: &[u8; 32],
    device: u32,
    message: &[u8],
    tag: &[u8],
) -> bool {
    tag.len() == SENDER_MAC_LEN && bool::from(mac(key, user, device, message).ct_eq(tag))
}

/// The domain of a live signal's MAC: never equal to a sealed envelope's
/// (which has no prefix, and whose message starts with a Part I version
/// byte), so neither can pass for the other.
pub const LIVE_MAC_DOMAIN: &[u8] = b"Sotto_v1_LiveSignal";

/// One end of a live signal: a user's account key and one of its devices.
pub type LiveEnd<'a> = (&'a [u8; 32], u32);

/// `HMAC-SHA256(key, "Sotto_v1_LiveSignal" || sender_user ||
/// u32be(sender_device) || recipient_user || u32be(recipient_device) ||
/// signal)[..16]` (PROTOCOL.md III.14): bound to both ends, so a signal
/// cannot be handed to another device than the one it was made for.
pub fn live_mac(
    key: &Secret32,
    from: LiveEnd<'_>,
    to: LiveEnd<'_>,
    signal: &[u8],
) -> [u8; SENDER_MAC_LEN] {
    let mut m = Vec::with_capacity(36 + signal.len());
    m.extend_from_slice(to.0);
    m.extend_from_slice(&to.1.to_be_bytes());
    m.extend_from_slice(signal);
    mac_in(key, LIVE_MAC_DOMAIN, from.0, from.1, &m)
}

/// Checks a live signal's MAC in constant time.
pub(crate) fn verify_live_mac(
    key: &Secret32,
    from: LiveEnd<'_>,
    to: LiveEnd<'_>,
    signal: &[u8],
    tag: &[u8],
) -> bool {
    tag.len() == SENDER_MAC_LEN && bool::from(live_mac(key, from, to, signal).ct_eq(tag))
}
