//! Length padding, so the relay sees a size bucket rather than the exact
//! plaintext length.
//!
//! Every plaintext is framed as `plaintext || 0x80 || 0x00*` (ISO/IEC 7816-4)
//! before encryption; the receiver strips trailing zeros and the 0x80 marker.
//! The sender alone chooses how many zeros, so padding needs no negotiation
//! and a receiver accepts any amount. [`Padding::Padme`] rounds the framed
//! length up with the Padmé rule (at most ~12% overhead, and the padded length
//! reveals only O(log log L) bits of the true length); [`Padding::Buckets`]
//! (the sealed layer's) to one of few sizes.

use crate::error::{Error, Result};

/// Padding policy for outgoing messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Padding {
    /// Only the one-byte 0x80 marker.
    None,
    /// Round the framed length up to the Padmé bucket, with a 64-byte minimum.
    #[default]
    Padme,
    /// Round the framed length up to a multiple of 256 bytes up to 16 KiB,
    /// then to a multiple of 16 KiB (the sealed layer's default: what the
    /// relay stores is one of few sizes, and powers of two would push a
    /// 64 KiB content past the relay's 96 KiB envelope).
    Buckets,
}

/// Smallest padded size with [`Padding::Padme`]: hides the length of short texts entirely.
pub const PADME_MIN: usize = 64;

/// The framed length for a plaintext of `len` bytes.
pub fn padded_len(len: usize, padding: Padding) -> usize {
    let framed = len + 1;
    match padding {
        Padding::None => framed,
        Padding::Padme => padme(framed.max(PADME_MIN)),
        Padding::Buckets => buckets(framed),
    }
}

/// Largest size padded to a multiple of [`BUCKET_STEP`]; past it,
/// multiples of [`BUCKET_LARGE_STEP`].
pub const BUCKET_LINEAR_MAX: usize = 16 * 1024;
/// Step of the small buckets.
pub const BUCKET_STEP: usize = 256;
/// Step of the large buckets.
pub const BUCKET_LARGE_STEP: usize = 16 * 1024;

fn buckets(l: usize) -> usize {
    let step = if l <= BUCKET_LINEAR_MAX {
        BUCKET_STEP
    } else {
        BUCKET_LARGE_STEP
    };
    l.max(1).div_ceil(step).saturating_mul(step)
}

/// Padmé: keep the top `floor(log2 E) + 1` bits of L where `E = floor(log2 L)`.
fn padme(l: usize) -> usize {
    if l < 2 {
        return l;
    }
    let e = usize::BITS - 1 - l.leading_zeros(); // floor(log2 L)
    let s = u32::BITS - e.leading_zeros(); // floor(log2 E) + 1
    let last_bits = e.saturating_sub(s);
    let mask = (1usize << last_bits) - 1;
    (l + mask) & !mask
}

/// Appends the framed plaintext to `out`.
pub(crate) fn pad_into(out: &mut Vec<u8>, plaintext: &[u8], padding: Padding) {
    let total = padded_len(plaintext.len(), padding);
    out.extend_from_slice(plaintext);
    out.push(0x80);
    out.resize(out.len() + (total - plaintext.len() - 1), 0);
}

/// Removes the framing in place.
pub(crate) fn unpad(buf: &mut Vec<u8>) -> Result<()> {
    let marker = buf
        .iter()
        .rposition(|b| *b != 0)
        .ok_or(Error::Malformed { what: "padding" })?;
    if buf[marker] != 0x80 {
        return Err(Error::Malformed { what: "padding" });
    }
    buf.truncate(marker);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn round_trip_every_small_length() {
        for len in 0..600 {
            for mode in [Padding::None, Padding::Padme] {
                let pt: Vec<u8> = (0..len).map(|i| (i % 7) as u8).collect();
                let mut buf = Vec::new();
                pad_into(&mut buf, &pt, mode);
                assert_eq!(buf.len(), padded_len(len, mode));
                unpad(&mut buf).unwrap();
                assert_eq!(buf, pt);
            }
        }
    }

    #[test]
    fn padme_buckets_hide_small_differences_and_bound_overhead() {
        assert_eq!(padded_len(0, Padding::Padme), 64);
        assert_eq!(padded_len(40, Padding::Padme), 64);
        assert_eq!(
            padded_len(1000, Padding::Padme),
            padded_len(1001, Padding::Padme)
        );
        for len in [100usize, 1000, 10_000, 65_536, 1_000_000] {
            let p = padded_len(len, Padding::Padme);
            assert!(
                p > len && p as f64 <= (len + 1) as f64 * 1.13,
                "{len} -> {p}"
            );
        }
    }

    #[test]
    fn missing_marker_is_an_error() {
        assert!(unpad(&mut vec![0, 0, 0]).is_err());
        assert!(unpad(&mut vec![1, 2, 0]).is_err());
        assert!(unpad(&mut Vec::new()).is_err());
    }
}
