//! Contents too large for one envelope (a big group's state: 1,000 member
//! addresses are about 150 KB, the relay takes 96 KiB envelopes): split into
//! [`pb::Fragment`]s as the item is queued, each its own pairwise message,
//! and joined by the receiver (PROTOCOL.md III.13).
//!
//! What a peer can make us keep is bounded: a transfer is at most
//! [`MAX_FRAGMENTS`] pieces; each sending device has at most
//! [`MAX_TRANSFERS_PER_DEVICE`] transfers open, and users this user has not
//! accepted at most [`MAX_STRANGER_TRANSFERS`] between them (each transfer
//! a stranger opens also takes one of its 50 held items, §III.7); a new
//! transfer past a bound replaces the open one touched longest ago; a
//! transfer untouched for 45 days is pruned, and a device's transfers go
//! when its list drops it. A piece seen twice changes nothing; a whole that
//! does not match its digest is refused, and only a group change or a group
//! sync may be a whole.
//!
//! Rows: `fr/` + user + u32be(device) + digest + count (1 byte) + index
//! (1 byte) → the piece's bytes; the same prefix + 0xFF → u64be(last
//! touched, ms) || (1 if a stranger opened it, else 0).

use sha2::{Digest, Sha256};
use sotto_core::store::{Table, Txn};
use sotto_proto::client as pb;

use crate::error::{Error, Result};

/// Bytes of content one piece carries (with the ratchet header, padding and
/// sealing, well inside the relay's 96 KiB envelope).
pub(crate) const FRAGMENT_BYTES: usize = 60 * 1024;
/// Pieces of one content at most (so a content is at most 1,966,080 bytes).
pub(crate) const MAX_FRAGMENTS: usize = 32;
/// The largest content that can be sent.
pub(crate) const MAX_CONTENT_BYTES: usize = FRAGMENT_BYTES * MAX_FRAGMENTS;
/// Open transfers per sending device.
pub(crate) const MAX_TRANSFERS_PER_DEVICE: usize = 2;
/// Open transfers from users this user has not accepted, together.
pub(crate) const MAX_STRANGER_TRANSFERS: usize = 8;

const PREFIX: &[u8] = b"fr/";
/// The index byte of a transfer's own row (pieces are 0..32).
const META: u8 = 0xFF;
/// Length of a transfer's prefix: `fr/` + user + device + digest + count.
const TRANSFER_PREFIX: usize = 3 + 32 + 4 + 32 + 1;

/// The pieces of `content` (more than [`FRAGMENT_BYTES`]), each an encoded
/// `Content`; an error past [`MAX_CONTENT_BYTES`].
pub(crate) fn split(content: &[u8]) -> Result<Vec<Vec<u8>>> {
    if content.len() > MAX_CONTENT_BYTES {
        return Err(Error::invalid_argument(
            "content larger than 32 envelopes of 60 KiB",
        ));
    }
    let digest = Sha256::digest(content).to_vec();
    let count = content.len().div_ceil(FRAGMENT_BYTES);
    let count_u32 = u32::try_from(count).map_err(|_| Error::invalid_argument("too many pieces"))?;
    Ok(content
        .chunks(FRAGMENT_BYTES)
        .zip(0u32..)
        .map(|(data, index)| {
            use prost::Message as _;
            pb::Content {
                sender_relay: String::new(),
                delivery_token: Vec::new(),
                body: Some(pb::content::Body::Fragment(pb::Fragment {
                    digest: digest.clone(),
                    index,
                    count: count_u32,
                    data: data.to_vec(),
                })),
            }
            .encode_to_vec()
        })
        .collect())
}

/// True if `content` (an encoded `Content`) is a piece.
pub(crate) fn is_piece(content: &[u8]) -> bool {
    use prost::Message as _;
    content.len() > FRAGMENT_BYTES
        && matches!(
            pb::Content::decode(content).map(|c| c.body),
            Ok(Some(pb::content::Body::Fragment(_)))
        )
}

/// What one received piece gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Joined {
    /// More pieces to come (or this one was seen before).
    Waiting,
    /// The whole content, digest checked.
    Whole(Vec<u8>),
    /// The piece, or the whole it completed, is malformed.
    Refused(&'static str),
}

fn device_prefix(user: &[u8; 32], device: u32) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(user);
    k.extend_from_slice(&device.to_be_bytes());
    k
}

fn transfer_prefix(user: &[u8; 32], device: u32, f: &pb::Fragment) -> Vec<u8> {
    let mut k = device_prefix(user, device);
    k.extend_from_slice(&f.digest);
    k.push(f.count as u8);
    k
}

/// A piece's checks (before anything is stored).
fn well_formed(f: &pb::Fragment) -> bool {
    let count = f.count as usize;
    f.digest.len() == 32
        && (2..=MAX_FRAGMENTS).contains(&count)
        && f.index < f.count
        && !f.data.is_empty()
        && f.data.len() <= FRAGMENT_BYTES
        && (f.index + 1 == f.count || f.data.len() == FRAGMENT_BYTES)
}

/// The open transfers among `keys` (their meta rows): (prefix, last
/// touched, opened by a stranger).
fn open_transfers(tx: &impl Txn, keys: &[Vec<u8>]) -> Result<Vec<(Vec<u8>, u64, bool)>> {
    let mut out = Vec::new();
    for k in keys {
        if k.len() != TRANSFER_PREFIX + 1 || k[TRANSFER_PREFIX] != META {
            continue;
        }
        let v = tx.get(Table::App, k)?.unwrap_or_default();
        let at = v
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_be_bytes);
        out.push((k[..TRANSFER_PREFIX].to_vec(), at, v.get(8) == Some(&1)));
    }
    Ok(out)
}

fn drop_prefix(tx: &mut impl Txn, prefix: &[u8]) -> Result<()> {
    for k in tx.keys_with_prefix(Table::App, prefix)? {
        tx.delete(Table::App, &k)?;
    }
    Ok(())
}

/// Drops the open transfer touched longest ago among `open`.
fn evict_oldest(tx: &mut impl Txn, open: &[(Vec<u8>, u64, bool)]) -> Result<()> {
    if let Some((p, _, _)) = open.iter().min_by_key(|(p, at, _)| (*at, p.clone())) {
        drop_prefix(tx, p)?;
    }
    Ok(())
}

/// True if piece `f` from `(user, device)` would open a transfer (none of
/// its pieces is held): a stranger's counts against its held items.
pub(crate) fn opens(tx: &impl Txn, user: &[u8; 32], device: u32, f: &pb::Fragment) -> Result<bool> {
    if !well_formed(f) {
        return Ok(false);
    }
    let mut meta = transfer_prefix(user, device, f);
    meta.push(META);
    Ok(tx.get(Table::App, &meta)?.is_none())
}

/// Keeps piece `f` from `(user, device)` (`stranger`: a user this user has
/// not accepted) at `now_ms`; the whole content once every piece is in.
pub(crate) fn join(
    tx: &mut impl Txn,
    stranger: bool,
    user: &[u8; 32],
    device: u32,
    f: &pb::Fragment,
    now_ms: u64,
) -> Result<Joined> {
    if !well_formed(f) {
        return Ok(Joined::Refused("malformed fragment"));
    }
    let transfer = transfer_prefix(user, device, f);
    let mut meta = transfer.clone();
    meta.push(META);
    let mut row = transfer.clone();
    row.push(f.index as u8);
    if tx.get(Table::App, &row)?.is_some() {
        return Ok(Joined::Waiting);
    }
    let opened_by_stranger = match tx.get(Table::App, &meta)? {
        Some(v) => v.get(8) == Some(&1),
        None => {
            // A new transfer: make room within this device's and
            // strangers' bounds by dropping the one touched longest ago.
            let mine = device_prefix(user, device);
            let open = open_transfers(tx, &tx.keys_with_prefix(Table::App, &mine)?)?;
            if open.len() >= MAX_TRANSFERS_PER_DEVICE {
                evict_oldest(tx, &open)?;
            }
            if stranger {
                let all = open_transfers(tx, &tx.keys_with_prefix(Table::App, PREFIX)?)?;
                let strangers: Vec<_> = all.into_iter().filter(|(_, _, s)| *s).collect();
                if strangers.len() >= MAX_STRANGER_TRANSFERS {
                    evict_oldest(tx, &strangers)?;
                }
            }
            stranger
        }
    };
    let pieces: Vec<Vec<u8>> = tx
        .keys_with_prefix(Table::App, &transfer)?
        .into_iter()
        .filter(|k| k.last() != Some(&META))
        .collect();
    let count = f.count as usize;
    if pieces.len() + 1 < count {
        tx.put(Table::App, &row, &f.data)?;
        let mut touched = now_ms.to_be_bytes().to_vec();
        touched.push(u8::from(opened_by_stranger));
        tx.put(Table::App, &meta, &touched)?;
        return Ok(Joined::Waiting);
    }
    // The last piece: join in index order (keys sort by index).
    let mut whole = Vec::with_capacity(count * FRAGMENT_BYTES);
    let mut keys = pieces;
    keys.push(row);
    keys.sort();
    for (index, k) in keys.iter().enumerate() {
        if k.last().copied() != u8::try_from(index).ok() {
            return Err(Error::corrupt("app"));
        }
        if k.last().copied() == Some(f.index as u8) {
            whole.extend_from_slice(&f.data);
        } else {
            let piece = tx.get(Table::App, k)?.ok_or(Error::corrupt("app"))?;
            whole.extend_from_slice(&piece);
        }
    }
    drop_prefix(tx, &transfer)?;
    if Sha256::digest(&whole).as_slice() != f.digest.as_slice() {
        return Ok(Joined::Refused("fragments do not match their digest"));
    }
    Ok(Joined::Whole(whole))
}

/// Drops transfers last touched before `cutoff_ms`.
pub(crate) fn prune(tx: &mut impl Txn, cutoff_ms: u64) -> Result<()> {
    for (p, at, _) in open_transfers(tx, &tx.keys_with_prefix(Table::App, PREFIX)?)? {
        if at < cutoff_ms {
            drop_prefix(tx, &p)?;
        }
    }
    Ok(())
}

/// Drops a device's transfers (its user's list no longer names it).
pub(crate) fn forget_device(tx: &mut impl Txn, user: &[u8; 32], device: u32) -> Result<()> {
    drop_prefix(tx, &device_prefix(user, device))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use prost::Message as _;
    use sotto_core::store::memory::MemoryStore;
    use sotto_core::store::Store;

    use super::*;

    fn pieces(content: &[u8]) -> Vec<pb::Fragment> {
        split(content)
            .unwrap()
            .into_iter()
            .map(|c| match pb::Content::decode(c.as_slice()).unwrap().body {
                Some(pb::content::Body::Fragment(f)) => f,
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn pieces_in_any_order_and_repeated_join_once_into_the_content() {
        let mut store = MemoryStore::default();
        let content: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let mut p = pieces(&content);
        assert_eq!(p.len(), 3);
        p.swap(0, 2);
        let mut got = Vec::new();
        for f in p.iter().chain(p.iter().take(1)) {
            got.push(
                store
                    .transaction(|tx| join(tx, false, &[7; 32], 1, f, 1))
                    .unwrap(),
            );
        }
        assert_eq!(got[0], Joined::Waiting);
        assert_eq!(got[1], Joined::Waiting);
        assert_eq!(got[2], Joined::Whole(content));
        // The last repeat starts a transfer again; nothing else is left.
        assert_eq!(got[3], Joined::Waiting);
    }

    #[test]
    fn a_forged_piece_or_too_many_transfers_cannot_grow_what_is_kept() {
        let mut store = MemoryStore::default();
        let content = vec![1u8; 2 * FRAGMENT_BYTES + 5];
        let mut p = pieces(&content);
        // A piece swapped for another of the same length: the digest says so.
        p[1].data[0] ^= 1;
        for f in &p[..2] {
            store
                .transaction(|tx| join(tx, false, &[7; 32], 1, f, 1))
                .unwrap();
        }
        let last = store
            .transaction(|tx| join(tx, false, &[7; 32], 1, &p[2], 1))
            .unwrap();
        assert_eq!(last, Joined::Refused("fragments do not match their digest"));
        // Malformed: short middle piece, index past count, one piece.
        let mut short = p[0].clone();
        short.data.truncate(10);
        let mut past = p[0].clone();
        past.index = 3;
        let mut single = p[2].clone();
        single.count = 1;
        single.index = 0;
        for f in [short, past, single] {
            let r = store
                .transaction(|tx| join(tx, false, &[7; 32], 1, &f, 1))
                .unwrap();
            assert_eq!(r, Joined::Refused("malformed fragment"));
        }
        // Strangers open many transfers: at most 8 stay, 2 per device.
        for n in 0..20u8 {
            let mut f = pieces(&vec![n; FRAGMENT_BYTES + 1]).remove(0);
            f.index = 0;
            store
                .transaction(|tx| join(tx, true, &[n / 3; 32], u32::from(n % 3), &f, u64::from(n)))
                .unwrap();
        }
        let rows = |store: &mut MemoryStore| {
            store
                .transaction(|tx| Ok::<_, Error>(tx.keys_with_prefix(Table::App, PREFIX)?.len()))
                .unwrap()
        };
        // A piece and the transfer's own row each: the 8 touched last.
        assert_eq!(rows(&mut store), 2 * MAX_STRANGER_TRANSFERS);
        // Untouched since before 15: pruned.
        store.transaction(|tx| prune(tx, 15)).unwrap();
        assert_eq!(rows(&mut store), 2 * 5);
        assert!(split(&vec![0u8; MAX_CONTENT_BYTES + 1]).is_err());
    }
}
