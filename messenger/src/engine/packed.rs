//! Sets of users and of member devices packed into one `bytes` field,
//! sorted and without repeats: a group has up to 16,000 member devices, and
//! a protobuf field per entry would cost an allocation per entry on every
//! read and write of the row that holds them (the send of one group
//! message reads and writes several such rows).
//!
//! A device is `user (32) || u32be(device)`; a delivery entry is a device
//! followed by its state byte. Rows are read from a disk we do not trust:
//! a length that is not a whole number of entries, or entries out of order,
//! is corruption.

use crate::error::{Error, Result};

/// Bytes of one device (`user || u32be(device)`).
pub(crate) const DEVICE: usize = 36;

/// `user || u32be(device)`.
pub(crate) fn device_key(user: &[u8; 32], device: u32) -> [u8; DEVICE] {
    let mut k = [0u8; DEVICE];
    k[..32].copy_from_slice(user);
    k[32..].copy_from_slice(&device.to_be_bytes());
    k
}

/// Splits a device key.
pub(crate) fn split_device(k: &[u8]) -> ([u8; 32], u32) {
    let mut user = [0u8; 32];
    user.copy_from_slice(&k[..32]);
    let mut id = [0u8; 4];
    id.copy_from_slice(&k[32..DEVICE]);
    (user, u32::from_be_bytes(id))
}

/// Checks that `bytes` holds sorted, distinct entries of `width` bytes whose
/// first `key` bytes order them.
fn check(bytes: &[u8], width: usize, key: usize) -> Result<()> {
    if bytes.len() % width != 0 {
        return Err(Error::corrupt("app"));
    }
    let mut prev: Option<&[u8]> = None;
    for e in bytes.chunks_exact(width) {
        if prev.is_some_and(|p| p >= &e[..key]) {
            return Err(Error::corrupt("app"));
        }
        prev = Some(&e[..key]);
    }
    Ok(())
}

/// Where `key` is among the sorted entries of `width` bytes in `bytes`
/// (ordered by their first `key.len()` bytes): `Ok(index)`, or
/// `Err(index)` where it would go.
fn search(bytes: &[u8], width: usize, key: &[u8]) -> std::result::Result<usize, usize> {
    let (mut lo, mut hi) = (0, bytes.len() / width);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match bytes[mid * width..mid * width + key.len()].cmp(key) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Ok(mid),
        }
    }
    Err(lo)
}

/// A set of member devices.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct DeviceSet(Vec<u8>);

impl std::fmt::Debug for DeviceSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceSet({} devices)", self.len())
    }
}

impl DeviceSet {
    /// A stored set, checked.
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        check(&bytes, DEVICE, DEVICE)?;
        Ok(DeviceSet(bytes))
    }

    /// The stored form.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// How many devices.
    pub(crate) fn len(&self) -> usize {
        self.0.len() / DEVICE
    }

    fn find(&self, k: &[u8; DEVICE]) -> std::result::Result<usize, usize> {
        search(&self.0, DEVICE, k)
    }

    /// True if `(user, device)` is in the set.
    pub(crate) fn contains(&self, user: &[u8; 32], device: u32) -> bool {
        self.find(&device_key(user, device)).is_ok()
    }

    /// Adds `(user, device)`; false if it was there.
    pub(crate) fn insert(&mut self, user: &[u8; 32], device: u32) -> bool {
        let k = device_key(user, device);
        match self.find(&k) {
            Ok(_) => false,
            Err(i) => {
                let at = i * DEVICE;
                self.0.splice(at..at, k);
                true
            }
        }
    }

    /// Adds many (one sort, not one shift per device).
    pub(crate) fn extend(&mut self, devices: impl IntoIterator<Item = [u8; DEVICE]>) {
        let mut all: Vec<[u8; DEVICE]> = self.iter_keys().collect();
        all.extend(devices);
        all.sort_unstable();
        all.dedup();
        self.0 = all.concat();
    }

    fn iter_keys(&self) -> impl Iterator<Item = [u8; DEVICE]> + '_ {
        self.0.chunks_exact(DEVICE).map(|c| {
            let mut k = [0u8; DEVICE];
            k.copy_from_slice(c);
            k
        })
    }

    /// The devices, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = ([u8; 32], u32)> + '_ {
        self.0.chunks_exact(DEVICE).map(split_device)
    }
}

/// A sorted set of 32-byte user ids.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct UserSet(Vec<u8>);

impl std::fmt::Debug for UserSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserSet({} users)", self.0.len() / 32)
    }
}

impl UserSet {
    /// A stored set, checked.
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        check(&bytes, 32, 32)?;
        Ok(UserSet(bytes))
    }

    /// The set of these users (in any order, repeats dropped).
    pub(crate) fn of<'a>(users: impl IntoIterator<Item = &'a [u8; 32]>) -> Self {
        let mut all: Vec<[u8; 32]> = users.into_iter().copied().collect();
        all.sort_unstable();
        all.dedup();
        UserSet(all.concat())
    }

    /// True if `user` is in the set.
    pub(crate) fn contains(&self, user: &[u8; 32]) -> bool {
        search(&self.0, 32, user).is_ok()
    }

    /// The stored form.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// The users, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = [u8; 32]> + '_ {
        self.0.chunks_exact(32).map(|c| {
            let mut u = [0u8; 32];
            u.copy_from_slice(c);
            u
        })
    }
}

/// Bytes of one delivery entry (a device and its state).
const DELIVERY: usize = DEVICE + 1;

/// The per-device delivery states of one sent message.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Deliveries(Vec<u8>);

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Deliveries({} devices)", self.0.len() / DELIVERY)
    }
}

impl Deliveries {
    /// A stored record's entries, checked.
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        check(&bytes, DELIVERY, DEVICE)?;
        Ok(Deliveries(bytes))
    }

    /// The stored form.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// Each device and its state, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = ([u8; 32], u32, u8)> + '_ {
        self.0.chunks_exact(DELIVERY).map(|c| {
            let (user, device) = split_device(c);
            (user, device, c[DEVICE])
        })
    }

    fn find(&self, k: &[u8; DEVICE]) -> std::result::Result<usize, usize> {
        search(&self.0, DELIVERY, k)
    }

    /// The state of `(user, device)`, if the message went to it.
    pub(crate) fn state(&self, user: &[u8; 32], device: u32) -> Option<u8> {
        self.find(&device_key(user, device))
            .ok()
            .map(|at| self.0[at * DELIVERY + DEVICE])
    }

    /// Raises each of `devices` to `state` (never lowers one). A device not
    /// in the record is added only if `add`. Returns the indexes into
    /// `devices` whose state changed.
    pub(crate) fn raise(&mut self, devices: &[(&[u8], u32)], state: u8, add: bool) -> Vec<usize> {
        let mut changed = Vec::new();
        let mut added: Vec<[u8; DELIVERY]> = Vec::new();
        for (i, (user, device)) in devices.iter().enumerate() {
            let Ok(user) = <&[u8; 32]>::try_from(*user) else {
                continue;
            };
            let k = device_key(user, *device);
            match self.find(&k) {
                Ok(at) => {
                    let s = &mut self.0[at * DELIVERY + DEVICE];
                    if *s < state {
                        *s = state;
                        changed.push(i);
                    }
                }
                Err(_) if add => {
                    let mut e = [0u8; DELIVERY];
                    e[..DEVICE].copy_from_slice(&k);
                    e[DEVICE] = state;
                    added.push(e);
                    changed.push(i);
                }
                Err(_) => {}
            }
        }
        if !added.is_empty() {
            added.sort_unstable_by(|a, b| a[..DEVICE].cmp(&b[..DEVICE]));
            added.dedup_by(|a, b| a[..DEVICE] == b[..DEVICE]);
            let mut all: Vec<[u8; DELIVERY]> = self
                .0
                .chunks_exact(DELIVERY)
                .map(|c| {
                    let mut e = [0u8; DELIVERY];
                    e.copy_from_slice(c);
                    e
                })
                .collect();
            all.extend(added);
            all.sort_unstable_by(|a, b| a[..DEVICE].cmp(&b[..DEVICE]));
            self.0 = all.concat();
        }
        changed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_device_set_stays_sorted_and_refuses_a_stored_one_that_is_not() {
        let mut s = DeviceSet::default();
        assert!(s.insert(&[2; 32], 1));
        assert!(s.insert(&[1; 32], 7));
        assert!(!s.insert(&[2; 32], 1));
        s.extend([device_key(&[1; 32], 3), device_key(&[2; 32], 1)]);
        let all: Vec<_> = s.iter().collect();
        assert_eq!(all, vec![([1; 32], 3), ([1; 32], 7), ([2; 32], 1)]);
        assert!(s.contains(&[1; 32], 7) && !s.contains(&[1; 32], 8));
        let bytes = s.clone().into_bytes();
        assert_eq!(DeviceSet::from_bytes(bytes.clone()).unwrap(), s);
        let mut swapped = bytes[DEVICE..2 * DEVICE].to_vec();
        swapped.extend_from_slice(&bytes[..DEVICE]);
        assert!(DeviceSet::from_bytes(swapped).is_err());
        assert!(DeviceSet::from_bytes(bytes[..DEVICE - 1].to_vec()).is_err());
        let mut twice = bytes[..DEVICE].to_vec();
        twice.extend_from_slice(&bytes[..DEVICE]);
        assert!(DeviceSet::from_bytes(twice).is_err());
    }

    #[test]
    fn a_delivery_state_only_rises_and_only_known_devices_take_receipts() {
        let mut d = Deliveries::default();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(d.raise(&[(&b, 1), (&a, 2)], 0, true), vec![0, 1]);
        assert_eq!(d.raise(&[(&a, 2)], 1, true), vec![0]);
        assert_eq!(d.raise(&[(&a, 2)], 0, true), Vec::<usize>::new());
        // A receipt from a device the message never went to changes nothing.
        assert_eq!(d.raise(&[(&a, 9)], 3, false), Vec::<usize>::new());
        let all: Vec<_> = d.iter().collect();
        assert_eq!(all, vec![(a, 2, 1), (b, 1, 0)]);
        assert_eq!(Deliveries::from_bytes(d.clone().into_bytes()).unwrap(), d);
        assert!(UserSet::from_bytes(vec![0; 33]).is_err());
        let users = UserSet::of([&b, &a, &b]);
        assert_eq!(users.iter().collect::<Vec<_>>(), vec![a, b]);
    }
}
