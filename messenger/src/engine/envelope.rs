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

/// Sender-MAC keys by peer device identity: one X25519 per peer device and
/// process, not one per message. Bounded (cleared when full).
#[derive(Default)]
pub(crate) struct MacKeys(std::collections::HashMap<[u8; 64], Secret32>);

impl std::fmt::Debug for MacKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MacKeys")
            .field("cached", &self.0.len())
            .finish()
    }
}

impl MacKeys {
    /// The key between `device` and the peer device `peer`.
    pub(crate) fn get<S: Store>(
        &mut self,
        device: &Device<S>,
        peer: &IdentityKey,
    ) -> Result<Secret32> {
        if let Some(k) = self.0.get(peer.as_bytes()) {
            return Ok(k.clone());
        }
        let key = device.sender_mac_key(device.identity(), peer)?;
        if self.0.len() >= MAC_KEY_CACHE {
            self.0.clear();
        }
        self.0.insert(*peer.as_bytes(), key.clone());
        Ok(key)
    }
}

/// Length of the truncated MAC.
pub const SENDER_MAC_LEN: usize = 16;

fn mac(key: &Secret32, user: &[u8; 32], device: u32, message: &[u8]) -> [u8; SENDER_MAC_LEN] {
    let mut h = match <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()) {
        Ok(h) => h,
        // HMAC takes keys of any length.
        Err(_) => return [0u8; SENDER_MAC_LEN],
    };
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
