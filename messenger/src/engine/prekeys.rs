//! Keeping this device reachable: when to rotate the signed prekey and how
//! many one-time prekeys to upload, decided from the relay's counts. The
//! driver fetches the counts and uploads what this returns.

use rand_core::CryptoRngCore;
use sotto_core::device::Device;
use sotto_core::store::Store;
use sotto_proto::relay::PrekeyCounts;

use crate::error::Result;

/// One-time prekeys of each kind published at registration and kept
/// available (the relay warns when fewer than a quarter remain).
pub const ONE_TIME_PREKEY_BATCH: u32 = 100;

/// What to upload to the home relay.
#[derive(Debug, Default)]
pub(crate) struct Upload {
    /// The signed bundle (new, rotated, or missing at the relay).
    pub(crate) bundle: Option<Vec<u8>>,
    /// One-time X25519 prekeys, `(id, public key)`.
    pub(crate) one_time_ec: Vec<(u32, Vec<u8>)>,
    /// One-time ML-KEM prekeys, `(id, signed public key)`.
    pub(crate) one_time_kem: Vec<(u32, Vec<u8>)>,
}

/// What to upload given the relay's `counts`: `None` if nothing is needed.
/// `bundle` forces the signed bundle (registration, linking); `rotate`
/// rotates the signed prekeys first, which the driver asks for only once
/// the mailbox backlog is processed (first messages waiting there must
/// still find their keys). One-time keys are topped up to
/// [`ONE_TIME_PREKEY_BATCH`] once a quarter of a batch is missing.
pub(crate) fn top_up<S: Store>(
    device: &mut Device<S>,
    counts: &PrekeyCounts,
    bundle: bool,
    rotate: bool,
    now_ms: u64,
    rng: &mut impl CryptoRngCore,
) -> Result<Option<Upload>> {
    let rotated = rotate && device.rotate_prekeys(now_ms / 1000, rng)?;
    let bundle = bundle || rotated || !counts.has_signed_bundle;
    let want_ec = ONE_TIME_PREKEY_BATCH.saturating_sub(counts.one_time_ec);
    let want_kem = ONE_TIME_PREKEY_BATCH.saturating_sub(counts.one_time_kem);
    if !bundle && want_ec < ONE_TIME_PREKEY_BATCH / 4 && want_kem < ONE_TIME_PREKEY_BATCH / 4 {
        return Ok(None);
    }
    let blob = if bundle {
        Some(device.signed_bundle()?)
    } else {
        None
    };
    let (ec, kem) = device.generate_one_time_prekeys(want_ec, want_kem, now_ms / 1000, rng)?;
    let items = |v: Vec<sotto_core::UploadItem>| v.into_iter().map(|i| (i.id, i.bytes)).collect();
    Ok(Some(Upload {
        bundle: blob,
        one_time_ec: items(ec),
        one_time_kem: items(kem),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand_core::OsRng;
    use sotto_core::MemoryStore;

    fn counts(bundle: bool, ec: u32, kem: u32) -> PrekeyCounts {
        PrekeyCounts {
            has_signed_bundle: bundle,
            one_time_ec: ec,
            one_time_kem: kem,
        }
    }

    #[test]
    fn one_time_keys_are_topped_up_only_once_a_quarter_is_missing() {
        let mut d = Device::create(MemoryStore::new(), 1, 0, &mut OsRng).unwrap();
        let full = counts(true, ONE_TIME_PREKEY_BATCH, ONE_TIME_PREKEY_BATCH);
        assert!(top_up(&mut d, &full, false, false, 0, &mut OsRng)
            .unwrap()
            .is_none());
        let most = counts(true, 76, 100);
        assert!(top_up(&mut d, &most, false, false, 0, &mut OsRng)
            .unwrap()
            .is_none());
        let low = counts(true, 75, 100);
        let u = top_up(&mut d, &low, false, false, 0, &mut OsRng)
            .unwrap()
            .unwrap();
        assert_eq!((u.one_time_ec.len(), u.one_time_kem.len()), (25, 0));
        assert!(u.bundle.is_none());
    }

    #[test]
    fn a_missing_or_forced_bundle_is_uploaded_with_the_top_up() {
        let mut d = Device::create(MemoryStore::new(), 1, 0, &mut OsRng).unwrap();
        let none = counts(false, 0, 0);
        let u = top_up(&mut d, &none, false, false, 0, &mut OsRng)
            .unwrap()
            .unwrap();
        assert!(u.bundle.is_some());
        assert_eq!(u.one_time_ec.len(), ONE_TIME_PREKEY_BATCH as usize);
        assert_eq!(u.one_time_kem.len(), ONE_TIME_PREKEY_BATCH as usize);
        let full = counts(true, ONE_TIME_PREKEY_BATCH, ONE_TIME_PREKEY_BATCH);
        let u = top_up(&mut d, &full, true, false, 0, &mut OsRng)
            .unwrap()
            .unwrap();
        assert!(u.bundle.is_some() && u.one_time_ec.is_empty());
    }
}
