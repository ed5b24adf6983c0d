//! Sender keys: what a member, a late joiner, a forger and a replaying relay
//! can and cannot do, the fixed vector of PROTOCOL.md I.13, and a property
//! test over reordered, lost and duplicated messages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const GROUP: [u8; 32] = [7u8; 32];

fn pair(seed: u64) -> (SendingChain, ReceivingChain) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let s = SendingChain::generate(&mut rng);
    let r = ReceivingChain::from_distribution(&s.distribution()).unwrap();
    (s, r)
}

#[test]
fn a_member_reads_each_message_once_in_any_order() {
    let (mut s, mut r) = pair(1);
    let m: Vec<Vec<u8>> = (0..5)
        .map(|i| {
            s.encrypt(&GROUP, format!("m{i}").as_bytes(), Padding::Padme)
                .unwrap()
        })
        .collect();
    assert_eq!(r.decrypt(&GROUP, &m[3]).unwrap(), b"m3");
    assert_eq!(r.decrypt(&GROUP, &m[0]).unwrap(), b"m0");
    assert_eq!(r.decrypt(&GROUP, &m[4]).unwrap(), b"m4");
    assert_eq!(r.decrypt(&GROUP, &m[2]).unwrap(), b"m2");
    assert_eq!(r.decrypt(&GROUP, &m[1]).unwrap(), b"m1");
    for msg in &m {
        assert!(matches!(
            r.decrypt(&GROUP, msg),
            Err(Error::DuplicateMessage { .. })
        ));
    }
}

#[test]
fn a_late_joiner_cannot_read_what_was_sent_before_it_got_the_chain() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut s = SendingChain::generate(&mut rng);
    let before = s.encrypt(&GROUP, b"before", Padding::Padme).unwrap();
    let mut late = ReceivingChain::from_distribution(&s.distribution()).unwrap();
    let after = s.encrypt(&GROUP, b"after", Padding::Padme).unwrap();
    assert!(late.decrypt(&GROUP, &before).is_err());
    assert_eq!(late.decrypt(&GROUP, &after).unwrap(), b"after");
}

#[test]
fn a_member_holding_the_chain_key_cannot_forge_another_senders_message() {
    let (mut s, mut r) = pair(3);
    let genuine = s.encrypt(&GROUP, b"genuine", Padding::Padme).unwrap();
    // Mallory, a member, knows the chain key and id but not the signing key.
    let d = s.distribution();
    let mut forger = SendingChain::from_parts(d.chain_id, d.iteration, d.chain_key, &[9u8; 32]);
    let forged = forger.encrypt(&GROUP, b"forged", Padding::Padme).unwrap();
    let before = r.to_record();
    assert!(matches!(
        r.decrypt(&GROUP, &forged),
        Err(Error::BadSignature { .. })
    ));
    assert_eq!(*r.to_record(), *before, "a refused message changes nothing");
    assert_eq!(r.decrypt(&GROUP, &genuine).unwrap(), b"genuine");
}

#[test]
fn every_flipped_bit_and_another_group_are_refused_without_changing_the_chain() {
    let (mut s, mut r) = pair(4);
    let m = s.encrypt(&GROUP, b"hello", Padding::None).unwrap();
    let before = r.to_record();
    for i in 0..m.len() {
        let mut bad = m.clone();
        bad[i] ^= 0x01;
        assert!(r.decrypt(&GROUP, &bad).is_err(), "byte {i}");
    }
    assert!(r.decrypt(&[8u8; 32], &m).is_err());
    assert!(r.decrypt(&GROUP, &m[..m.len() - 1]).is_err());
    assert_eq!(*r.to_record(), *before);
    assert_eq!(r.decrypt(&GROUP, &m).unwrap(), b"hello");
}

#[test]
fn a_jump_past_the_gap_is_refused_and_skipped_keys_are_bounded() {
    let (mut s, mut r) = pair(5);
    let far = SendingChain::from_parts(
        *s.chain_id(),
        MAX_MESSAGE_GAP + 1,
        ChainKey::from_bytes([1; 32]),
        &[2; 32],
    );
    let mut far = far;
    let m = far.encrypt(&GROUP, b"x", Padding::None).unwrap();
    assert!(matches!(
        r.decrypt(&GROUP, &m),
        Err(Error::TooFarInFuture { .. }) | Err(Error::BadSignature { .. })
    ));
    // Two jumps of the full gap keep only the newest MAX_SKIPPED_SENDER_KEYS.
    let mut last = Vec::new();
    for _ in 0..=(2 * MAX_MESSAGE_GAP + 1) {
        last = s.encrypt(&GROUP, b"y", Padding::None).unwrap();
        if s.iteration() == MAX_MESSAGE_GAP + 1 {
            r.decrypt(&GROUP, &last).unwrap();
        }
    }
    r.decrypt(&GROUP, &last).unwrap();
    assert!(r.skipped.len() <= MAX_SKIPPED_SENDER_KEYS);
    let rec = ReceivingChain::from_record(&r.to_record()).unwrap();
    assert_eq!(rec.skipped.len(), r.skipped.len());
}

#[test]
fn records_round_trip_and_hostile_records_are_refused() {
    let (mut s, mut r) = pair(6);
    let m0 = s.encrypt(&GROUP, b"0", Padding::None).unwrap();
    let m1 = s.encrypt(&GROUP, b"1", Padding::None).unwrap();
    r.decrypt(&GROUP, &m1).unwrap();
    let mut s2 = SendingChain::from_record(&s.to_record()).unwrap();
    let mut r2 = ReceivingChain::from_record(&r.to_record()).unwrap();
    assert_eq!(r2.decrypt(&GROUP, &m0).unwrap(), b"0");
    let m2 = s2.encrypt(&GROUP, b"2", Padding::None).unwrap();
    assert_eq!(r2.decrypt(&GROUP, &m2).unwrap(), b"2");
    // A receiving record is no sending chain; garbage is a typed error.
    assert!(SendingChain::from_record(&r.to_record()).is_err());
    assert!(ReceivingChain::from_record(&[0xff, 0xff]).is_err());
    let mut bad = pb::SenderKeyRecord::decode(r.to_record().as_slice()).unwrap();
    bad.skipped.push(pb::SkippedSenderKey {
        iteration: bad.iteration,
        message_key: vec![0; 32],
    });
    assert!(ReceivingChain::from_record(&bad.encode_to_vec()).is_err());
}

#[test]
fn debug_output_shows_no_secret() {
    let (s, r) = pair(7);
    let key = hex::encode(s.distribution().chain_key.as_bytes());
    for shown in [
        format!("{s:?}"),
        format!("{r:?}"),
        format!("{:?}", s.distribution()),
    ] {
        assert!(!shown.contains(&key), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }
}

/// PROTOCOL.md I.13 vector: chain key 32 x 0x01, signing seed 32 x 0x02,
/// chain id 16 x 0x03, iteration 5, context 32 x 0x07, no padding.
#[test]
fn protocol_vector() {
    let mut s = SendingChain::from_parts([3; 16], 5, ChainKey::from_bytes([1; 32]), &[2; 32]);
    let m = s.encrypt(&GROUP, b"group hello", Padding::None).unwrap();
    let mut r = ReceivingChain::from_distribution(
        &SendingChain::from_parts([3; 16], 5, ChainKey::from_bytes([1; 32]), &[2; 32])
            .distribution(),
    )
    .unwrap();
    assert_eq!(r.decrypt(&GROUP, &m).unwrap(), b"group hello");
    assert_eq!(
        hex::encode(&m),
        "1303030303030303030303030303030303000000059b0794d397214a03bf8ebe4dca41ecb0e26c967f801baab26029c4b1e220c7bb676e1c2787a06daa697531f7a181d27818880959140d6e211ddc4ebe6cf811991566105c3633367f318e711367ff975fb93f2d04b5bcc730675efb0d"
    );
}

proptest! {
    /// Any mix of reordering, loss and duplication: each message decrypts at
    /// most once, to its own plaintext, and nothing else decrypts.
    #[test]
    fn reordered_lost_and_duplicated_messages_decrypt_at_most_once(
        order in proptest::collection::vec(0usize..40, 0..80),
        seed in any::<u64>(),
    ) {
        let (mut s, mut r) = pair(seed);
        let msgs: Vec<Vec<u8>> = (0..40)
            .map(|i| s.encrypt(&GROUP, &[i as u8; 3], Padding::Padme).unwrap())
            .collect();
        let mut seen = std::collections::HashSet::new();
        for i in order {
            match r.decrypt(&GROUP, &msgs[i]) {
                Ok(p) => {
                    prop_assert_eq!(p, vec![i as u8; 3]);
                    prop_assert!(seen.insert(i), "message {} decrypted twice", i);
                }
                Err(Error::DuplicateMessage { .. }) => prop_assert!(seen.contains(&i)),
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
            // A restart (record round trip) at any point keeps all of it.
            r = ReceivingChain::from_record(&r.to_record()).unwrap();
        }
    }
}

#[test]
fn an_earlier_distribution_arriving_late_restores_only_keys_never_held() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let mut s = SendingChain::generate(&mut rng);
    let early = s.distribution();
    let m0 = s.encrypt(&GROUP, b"0", Padding::None).unwrap();
    let late = s.distribution();
    let m1 = s.encrypt(&GROUP, b"1", Padding::None).unwrap();
    // The later position came first: m0 is unreadable, m1 reads.
    let mut r = ReceivingChain::from_distribution(&late).unwrap();
    assert!(r.decrypt(&GROUP, &m0).is_err());
    assert_eq!(r.decrypt(&GROUP, &m1).unwrap(), b"1");
    // The earlier one arrives: m0 reads once; m1's used key stays gone.
    r.extend_back(&early).unwrap();
    assert_eq!(r.decrypt(&GROUP, &m0).unwrap(), b"0");
    assert!(matches!(
        r.decrypt(&GROUP, &m1),
        Err(Error::DuplicateMessage { .. })
    ));
    assert!(matches!(
        r.decrypt(&GROUP, &m0),
        Err(Error::DuplicateMessage { .. })
    ));
    // A distribution of the same chain id with another signing key is refused.
    let mut other = early.clone();
    other.signing_public = SendingChain::generate(&mut rng)
        .distribution()
        .signing_public;
    assert!(r.extend_back(&other).is_err());
    // And it survives a restart.
    let r2 = ReceivingChain::from_record(&r.to_record()).unwrap();
    assert_eq!(r2.first, r.first);
}
