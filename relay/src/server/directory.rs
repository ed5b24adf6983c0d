//! Prekey directory and user device lists.
//!
//! Prekeys are opaque to the relay. Each device has one signed bundle blob
//! (replaced on upload) and two pools of one-time items (EC and KEM). A fetch
//! takes the lowest id of each pool out of the in-memory index under a lock
//! (so concurrent fetches can never pick the same item), deletes it durably,
//! and only then replies: an item is handed out at most once, across crashes
//! too. With a pool empty the reply carries only the bundle, whose last-resort
//! key the client then uses.
//!
//! Device lists are signed by the user's identity key over a domain-separated
//! transcript ([`crate::auth::device_list_transcript`]) and only accepted with
//! an increasing version.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use sotto_proto::relay::{
    Bundle, ErrorCode, PrekeyCounts, PrekeyItem, PublishPrekeys, SignedDeviceList,
};

use super::db::{Cf, Db};
use super::metrics::Metrics;
use super::writer::{DbOp, Writer};
use crate::error::{RelayError, Result};
use crate::ids::MailboxId;
use crate::limits::BucketMap;

/// Most requesters (and targets) with a rate-limit bucket in memory at once;
/// buckets that refilled are pruned, so only keys active in the last
/// `burst / rate` seconds count. Past this bound new keys are refused.
const MAX_TRACKED: usize = 1 << 18;

/// Largest version increase a published device list may make (clients
/// apply the same bound to the lists they pin).
pub const MAX_DEVICE_LIST_VERSION_STEP: u64 = 1_000;

const KIND_EC: u8 = 1;
const KIND_KEM: u8 = 2;

fn item_key(m: &MailboxId, kind: u8, id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(37);
    k.extend_from_slice(&m.0);
    k.push(kind);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

#[derive(Debug, Default)]
struct Pools {
    ec: BTreeSet<u32>,
    kem: BTreeSet<u32>,
    has_bundle: bool,
}

impl Pools {
    fn counts(&self) -> PrekeyCounts {
        PrekeyCounts {
            one_time_ec: u32::try_from(self.ec.len()).unwrap_or(u32::MAX),
            one_time_kem: u32::try_from(self.kem.len()).unwrap_or(u32::MAX),
            has_signed_bundle: self.has_bundle,
        }
    }
}

/// Directory limits.
#[derive(Debug, Clone, Copy)]
pub struct DirectoryLimits {
    /// Largest signed bundle.
    pub max_bundle: usize,
    /// Largest one-time item.
    pub max_item: usize,
    /// Most stored items per kind.
    pub max_items: usize,
    /// Low-water mark for owner notices.
    pub low: u32,
    /// Largest device-list body.
    pub max_device_list: usize,
    /// Fetch rate-limit burst per requester.
    pub requester_burst: u32,
    /// Fetch rate-limit burst per target.
    pub target_burst: u32,
    /// Sustained fetch rate.
    pub rate: f64,
}

/// The directory service.
#[derive(Debug)]
pub struct Directory {
    db: Arc<Db>,
    writer: Arc<Writer>,
    metrics: Arc<Metrics>,
    pools: Arc<Mutex<HashMap<MailboxId, Pools>>>,
    /// Per-requester and per-target bundle-fetch buckets.
    buckets: Mutex<(BucketMap<MailboxId>, BucketMap<MailboxId>)>,
    device_list_lock: tokio::sync::Mutex<()>,
    limits: DirectoryLimits,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Directory {
    /// Loads the prekey index from disk.
    pub fn load(
        db: Arc<Db>,
        writer: Arc<Writer>,
        metrics: Arc<Metrics>,
        limits: DirectoryLimits,
    ) -> Result<Self> {
        let mut pools: HashMap<MailboxId, Pools> = HashMap::new();
        db.scan(Cf::Prekeys, &[], &[0xff; 38], |k, _| {
            if k.len() == 37 {
                let m = MailboxId::from_slice(&k[..32])?;
                let id = u32::from_be_bytes([k[33], k[34], k[35], k[36]]);
                let p = pools.entry(m).or_default();
                match k[32] {
                    KIND_EC => p.ec.insert(id),
                    KIND_KEM => p.kem.insert(id),
                    _ => false,
                };
            }
            Ok(true)
        })?;
        db.scan(Cf::Bundles, &[], &[0xff; 33], |k, _| {
            if let Ok(m) = MailboxId::from_slice(k) {
                pools.entry(m).or_default().has_bundle = true;
            }
            Ok(true)
        })?;
        Ok(Self {
            db,
            writer,
            metrics,
            pools: Arc::new(Mutex::new(pools)),
            buckets: Mutex::new((
                BucketMap::new(limits.requester_burst, limits.rate, MAX_TRACKED),
                BucketMap::new(limits.target_burst, limits.rate, MAX_TRACKED),
            )),
            device_list_lock: tokio::sync::Mutex::new(()),
            limits,
        })
    }

    /// Stores the owner's bundle and/or one-time items; returns the counts.
    pub async fn publish(&self, owner: &MailboxId, p: PublishPrekeys) -> Result<PrekeyCounts> {
        let l = &self.limits;
        if p.signed_bundle.len() > l.max_bundle
            || p.one_time_ec
                .iter()
                .chain(&p.one_time_kem)
                .any(|i| i.key.len() > l.max_item || i.key.is_empty())
        {
            return Err(RelayError::refusal(
                ErrorCode::InvalidArgument,
                "prekey item or bundle size",
            ));
        }
        {
            let pools = lock(&self.pools);
            let cur = pools.get(owner);
            let (ec, kem) = cur.map(|c| (c.ec.len(), c.kem.len())).unwrap_or((0, 0));
            if ec + p.one_time_ec.len() > l.max_items || kem + p.one_time_kem.len() > l.max_items {
                return Err(RelayError::refusal(
                    ErrorCode::TooManyItems,
                    "too many one-time prekeys",
                ));
            }
        }
        let mut ops = Vec::new();
        let has_bundle = !p.signed_bundle.is_empty();
        if has_bundle {
            ops.push(DbOp::Put(Cf::Bundles, owner.0.to_vec(), p.signed_bundle));
        }
        let ec_ids: Vec<u32> = p.one_time_ec.iter().map(|i| i.id).collect();
        let kem_ids: Vec<u32> = p.one_time_kem.iter().map(|i| i.id).collect();
        for i in p.one_time_ec {
            ops.push(DbOp::Put(
                Cf::Prekeys,
                item_key(owner, KIND_EC, i.id),
                i.key,
            ));
        }
        for i in p.one_time_kem {
            ops.push(DbOp::Put(
                Cf::Prekeys,
                item_key(owner, KIND_KEM, i.id),
                i.key,
            ));
        }
        let pools = self.pools.clone();
        let o = *owner;
        // Items become fetchable only once durable.
        self.writer
            .write(
                ops,
                Some(Box::new(move |ok| {
                    if ok {
                        let mut pools = lock(&pools);
                        let e = pools.entry(o).or_default();
                        e.ec.extend(ec_ids);
                        e.kem.extend(kem_ids);
                        e.has_bundle |= has_bundle;
                    }
                })),
            )
            .await?;
        Ok(self.counts(owner))
    }

    /// The owner's remaining counts.
    pub fn counts(&self, owner: &MailboxId) -> PrekeyCounts {
        lock(&self.pools)
            .get(owner)
            .map(Pools::counts)
            .unwrap_or_default()
    }

    fn rate_ok(&self, requester: &MailboxId, target: &MailboxId) -> bool {
        let now = Instant::now();
        let mut b = lock(&self.buckets);
        let (req, tgt) = &mut *b;
        req.try_take(*requester, 1, now) && tgt.try_take(*target, 1, now)
    }

    /// Forgets rate-limit buckets that have refilled (periodic sweep);
    /// returns how many are still tracked.
    pub fn prune_rate_limits(&self) -> usize {
        let now = Instant::now();
        let mut b = lock(&self.buckets);
        let (req, tgt) = &mut *b;
        req.prune(now);
        tgt.prune(now);
        req.len() + tgt.len()
    }

    /// Hands out `target`'s bundle with at most one one-time item per kind.
    /// Returns the bundle and, if the target is now low, its counts.
    pub async fn fetch(
        &self,
        requester: &MailboxId,
        target: &MailboxId,
    ) -> Result<(Bundle, Option<PrekeyCounts>)> {
        let (ec, kem, counts) = {
            let mut pools = lock(&self.pools);
            let Some(p) = pools.get_mut(target).filter(|p| p.has_bundle) else {
                return Err(RelayError::refusal(
                    ErrorCode::NotFound,
                    "no bundle for target",
                ));
            };
            if !self.rate_ok(requester, target) {
                return Err(RelayError::refusal(
                    ErrorCode::RateLimited,
                    "bundle fetch rate limited",
                ));
            }
            (p.ec.pop_first(), p.kem.pop_first(), p.counts())
        };
        let signed_bundle = self
            .db
            .get(Cf::Bundles, &target.0)?
            .ok_or_else(|| RelayError::refusal(ErrorCode::NotFound, "no bundle for target"))?;
        let mut ops = Vec::new();
        let mut item = |kind: u8, id: Option<u32>| -> Result<Option<PrekeyItem>> {
            let Some(id) = id else { return Ok(None) };
            let k = item_key(target, kind, id);
            let v = self.db.get(Cf::Prekeys, &k)?;
            ops.push(DbOp::Delete(Cf::Prekeys, k));
            Ok(v.map(|key| PrekeyItem { id, key }))
        };
        let one_time_ec = item(KIND_EC, ec)?;
        let one_time_kem = item(KIND_KEM, kem)?;
        if !ops.is_empty() {
            // Durably consumed before anyone sees it.
            self.writer.write(ops, None).await?;
        }
        let handed = u64::from(one_time_ec.is_some()) + u64::from(one_time_kem.is_some());
        self.metrics.prekeys_handed_out.fetch_add(handed, Relaxed);
        let low = (counts.one_time_ec < self.limits.low || counts.one_time_kem < self.limits.low)
            .then_some(counts);
        Ok((
            Bundle {
                signed_bundle,
                one_time_ec,
                one_time_kem,
            },
            low,
        ))
    }

    /// Verifies and stores a device list with a strictly higher version, at
    /// most [`MAX_DEVICE_LIST_VERSION_STEP`] above the stored one (0 when
    /// none): a signer cannot freeze its list by publishing `u64::MAX`.
    pub async fn publish_device_list(&self, l: SignedDeviceList) -> Result<()> {
        let uk: [u8; 32] =
            l.user_key.as_slice().try_into().map_err(|_| {
                RelayError::refusal(ErrorCode::Malformed, "user key must be 32 bytes")
            })?;
        if l.body.len() > self.limits.max_device_list {
            return Err(RelayError::refusal(
                ErrorCode::InvalidArgument,
                "device list too large",
            ));
        }
        if !crate::auth::verify_device_list(&uk, l.version, &l.body, &l.signature) {
            return Err(RelayError::refusal(
                ErrorCode::BadSignature,
                "device list signature invalid",
            ));
        }
        let _g = self.device_list_lock.lock().await;
        let stored = match self.db.get(Cf::DeviceLists, &uk)? {
            Some(cur) => cur
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0),
            None => 0,
        };
        if l.version <= stored {
            return Err(RelayError::refusal(
                ErrorCode::StaleVersion,
                "device list version not increasing",
            ));
        }
        if l.version - stored > MAX_DEVICE_LIST_VERSION_STEP {
            return Err(RelayError::refusal(
                ErrorCode::InvalidArgument,
                "device list version jumps too far",
            ));
        }
        let mut value = Vec::with_capacity(72 + l.body.len());
        value.extend_from_slice(&l.version.to_be_bytes());
        value.extend_from_slice(&l.signature);
        value.extend_from_slice(&l.body);
        self.writer
            .write(vec![DbOp::Put(Cf::DeviceLists, uk.to_vec(), value)], None)
            .await
    }

    /// A user's current device list.
    pub fn fetch_device_list(&self, user_key: &[u8]) -> Result<SignedDeviceList> {
        if user_key.len() != 32 {
            return Err(RelayError::refusal(
                ErrorCode::Malformed,
                "user key must be 32 bytes",
            ));
        }
        let v = self
            .db
            .get(Cf::DeviceLists, user_key)?
            .filter(|v| v.len() >= 72)
            .ok_or_else(|| RelayError::refusal(ErrorCode::NotFound, "no device list"))?;
        let version = v[..8].try_into().map(u64::from_be_bytes).unwrap_or(0);
        Ok(SignedDeviceList {
            user_key: user_key.to_vec(),
            version,
            signature: v[8..72].to_vec(),
            body: v[72..].to_vec(),
        })
    }
}
