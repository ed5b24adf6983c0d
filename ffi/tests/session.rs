//! The session surface as the bindings call it: two in-memory devices
//! exchange messages through sotto-core, errors keep their core variant,
//! and nothing secret shows in `Debug` output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use sotto_ffi::{Device, PeerAddress, PrekeyBundle, SafetyNumber, SottoError};

fn alice_addr() -> PeerAddress {
    PeerAddress {
        user: b"alice".to_vec(),
        device_id: 1,
    }
}

fn bob_addr() -> PeerAddress {
    PeerAddress {
        user: b"bob".to_vec(),
        device_id: 7,
    }
}

fn bundle_of(device: &Device) -> Arc<PrekeyBundle> {
    let one_time = device.generate_one_time_prekeys(1, 1).unwrap();
    PrekeyBundle::new(
        device.signed_bundle().unwrap(),
        Some(one_time.ec[0].bytes.clone()),
        Some(one_time.kem[0].bytes.clone()),
    )
    .unwrap()
}

fn pair() -> (Arc<Device>, Arc<Device>) {
    let alice = Device::create_in_memory(1).unwrap();
    let bob = Device::create_in_memory(7).unwrap();
    alice.process_bundle(bob_addr(), bundle_of(&bob)).unwrap();
    (alice, bob)
}

#[test]
fn two_devices_talk_both_ways() {
    let (alice, bob) = pair();
    let hello = alice.encrypt(bob_addr(), b"hello".to_vec()).unwrap();
    assert_eq!(bob.decrypt(alice_addr(), hello).unwrap(), b"hello");
    for i in 0..10u8 {
        let reply = bob.encrypt(alice_addr(), vec![i]).unwrap();
        assert_eq!(alice.decrypt(bob_addr(), reply).unwrap(), vec![i]);
    }
}

#[test]
fn core_errors_keep_their_variant() {
    let (alice, bob) = pair();
    assert!(matches!(
        PrekeyBundle::new(vec![1, 2, 3], None, None),
        Err(SottoError::Malformed { .. })
    ));
    assert!(matches!(
        bob.encrypt(alice_addr(), b"x".to_vec()),
        Err(SottoError::NoSession { .. })
    ));
    let msg = alice.encrypt(bob_addr(), b"once".to_vec()).unwrap();
    let mut tampered = msg.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert!(bob.decrypt(alice_addr(), tampered).is_err());
    assert_eq!(bob.decrypt(alice_addr(), msg.clone()).unwrap(), b"once");
    assert!(matches!(
        bob.decrypt(alice_addr(), msg),
        Err(SottoError::DuplicateMessage { .. })
    ));
    assert!(matches!(
        Device::create_persistent("/nonexistent/x.db".into(), vec![0; 31], 1),
        Err(SottoError::InvalidInput { .. })
    ));
}

#[test]
fn safety_numbers_match_across_sides() {
    let (alice, bob) = pair();
    let ab = SafetyNumber::of(alice.identity_key(), bob.identity_key()).unwrap();
    let ba = SafetyNumber::of(bob.identity_key(), alice.identity_key()).unwrap();
    assert_eq!(ab.digits(), ba.digits());
    assert!(ab.matches_scanned(ba.scannable()));
    assert_eq!(
        alice.safety_number(bob_addr()).unwrap().digits(),
        ab.digits()
    );
}

#[test]
fn debug_output_of_a_device_shows_no_key_material() {
    let (alice, _bob) = pair();
    assert_eq!(format!("{alice:?}"), "Device { device_id: 1, .. }");
}
