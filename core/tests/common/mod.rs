//! Shared helpers for sotto-core's integration tests: deterministic RNGs and
//! two-device setups over the in-memory or SQLite store.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sotto_core::{Device, DeviceAddress, PrekeyBundle, Store};

pub(crate) const NOW: u64 = 1_700_000_000;

pub(crate) fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub(crate) fn alice_addr() -> DeviceAddress {
    DeviceAddress::new(b"alice".to_vec(), 1)
}

pub(crate) fn bob_addr() -> DeviceAddress {
    DeviceAddress::new(b"bob".to_vec(), 2)
}

/// Bob's bundle with one-time keys (or only the last-resort KEM key).
pub(crate) fn bundle_of<S: Store>(
    bob: &mut Device<S>,
    one_time: bool,
    r: &mut ChaCha20Rng,
) -> PrekeyBundle {
    let blob = bob.signed_bundle().unwrap();
    if one_time {
        let (ec, kem) = bob.generate_one_time_prekeys(1, 1, NOW, r).unwrap();
        PrekeyBundle::assemble(&blob, Some(&ec[0].bytes), Some(&kem[0].bytes)).unwrap()
    } else {
        PrekeyBundle::assemble(&blob, None, None).unwrap()
    }
}
