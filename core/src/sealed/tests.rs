//! The sealed layer: round trips, what a wrong key or a changed byte gives,
//! the sizes the relay sees, and the vector of PROTOCOL.md I.14.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use rand_core::OsRng;

use super::*;

#[test]
fn a_sealed_message_opens_only_for_its_device_and_any_changed_byte_is_refused() {
    let bob = IdentityKeyPair::generate(&mut OsRng);
    let eve = IdentityKeyPair::generate(&mut OsRng);
    let sealed = seal(
        bob.public().dh_public(),
        b"hello bob",
        Padding::Buckets,
        &mut OsRng,
    )
    .unwrap();
    assert_eq!(open(&bob, &sealed).unwrap(), b"hello bob");
    assert!(matches!(open(&eve, &sealed), Err(Error::DecryptFailed)));
    for i in [0usize, 1, 20, 33, sealed.len() - 1] {
        let mut bad = sealed.clone();
        bad[i] ^= 1;
        assert!(open(&bob, &bad).is_err(), "byte {i}");
    }
    assert!(open(&bob, &sealed[..40]).is_err());
    // A low-order ephemeral key gives no key at all.
    let mut low = sealed.clone();
    low[1..33].copy_from_slice(&[0u8; 32]);
    assert!(matches!(open(&bob, &low), Err(Error::InvalidKey { .. })));
    let mut v2 = sealed;
    v2[0] = 0x24;
    assert!(matches!(open(&bob, &v2), Err(Error::UnsupportedVersion(2))));
}

#[test]
fn the_relay_sees_one_of_few_sizes() {
    let bob = IdentityKeyPair::generate(&mut OsRng);
    for len in [
        0usize, 1, 200, 254, 255, 256, 1000, 16_382, 16_383, 16_384, 40_000,
    ] {
        let sealed = seal(
            bob.public().dh_public(),
            &vec![7; len],
            Padding::Buckets,
            &mut OsRng,
        )
        .unwrap();
        let body = sealed.len() - SEALED_OVERHEAD;
        assert!(
            (body % 256 == 0 && body <= 16_384) || body % 16_384 == 0,
            "{len} -> {body}"
        );
        assert_eq!(open(&bob, &sealed).unwrap(), vec![7; len]);
    }
}

#[test]
fn a_shared_seal_opens_with_its_key_only() {
    let (k, other) = ([9u8; 32], [8u8; 32]);
    let sealed = seal_shared(&k, b"to the group", Padding::Buckets, &mut OsRng).unwrap();
    assert_eq!(open_shared(&k, &sealed).unwrap(), b"to the group");
    assert!(matches!(
        open_shared(&other, &sealed),
        Err(Error::DecryptFailed)
    ));
    let again = seal_shared(&k, b"to the group", Padding::Buckets, &mut OsRng).unwrap();
    assert_ne!(
        sealed, again,
        "a fresh nonce each time: nothing links two copies"
    );
    // A changed hint (bytes 25..29) or ciphertext is refused.
    for i in [26, 30] {
        let mut bad = sealed.clone();
        bad[i] ^= 1;
        assert!(open_shared(&k, &bad).is_err(), "byte {i}");
    }
}

/// PROTOCOL.md I.14, reproduced with Python's `cryptography`.
#[test]
fn protocol_vector() {
    let e = X25519KeyPair::from_secret_bytes([0x11; 32]);
    let r = X25519KeyPair::from_secret_bytes([0x22; 32]);
    let sealed = seal_with(&e, r.public(), b"sealed hello", Padding::None).unwrap();
    assert_eq!(hex::encode(&sealed), VECTOR_SEALED);
    let shared = seal_shared_with(&[0x33; 32], &[0x44; 24], b"group hello", Padding::None).unwrap();
    assert_eq!(hex::encode(&shared), VECTOR_SHARED);
}

const VECTOR_SEALED: &str = "147b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13da772dc8f99890edda44f26606e6edaf51283300b14e4398c51b6f8336";
const VECTOR_SHARED: &str = "154444444444444444444444444444444444444444444444441a285a0a7fd41fa140c25fe6fe1c249ed41198d63106474d54a26462155b82ce";

proptest! {
    #[test]
    fn any_bytes_never_panic_on_open(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let bob = IdentityKeyPair::generate(&mut OsRng);
        let _ = open(&bob, &bytes);
        let _ = open_shared(&[1; 32], &bytes);
    }
}
