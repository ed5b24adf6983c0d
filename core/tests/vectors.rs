//! Known-answer vectors: a complete, deterministic exchange (fixed seeds, so
//! fixed keys and randomness) whose every byte is kept in
//! `tests/vectors/sotto_v1.txt`. This test regenerates the exchange and
//! compares it line by line with the file; PROTOCOL.md Part I points
//! implementers at that file. To rewrite it after an intentional format
//! change: `SOTTO_REGEN_VECTORS=1 cargo test -p sotto-core --test vectors`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;

use rand_chacha::rand_core::{CryptoRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sotto_core::keys::Secret32;
use sotto_core::prekeys::{signed_bundle_blob, KemPrekey, OneTimePrekey, SignedPrekey};
use sotto_core::ratchet::{kdf_ck, kdf_rk};
use sotto_core::session::PreKeyMessage;
use sotto_core::{IdentityKeyPair, Padding, PrekeyBundle, SafetyNumber, Session};

/// A seeded ChaCha20 RNG that logs every draw, so the file lists the exact
/// random inputs (in draw order) an independent implementation must use.
struct Recording {
    inner: ChaCha20Rng,
    out: String,
    label: &'static str,
    n: usize,
}

impl RngCore for Recording {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.inner.fill_bytes(dest);
        writeln!(
            self.out,
            "random.{}.{} = {}",
            self.label,
            self.n,
            hex::encode(&*dest)
        )
        .unwrap();
        self.n += 1;
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_chacha::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl CryptoRng for Recording {}

fn line(out: &mut String, name: &str, bytes: &[u8]) {
    writeln!(out, "{name} = {}", hex::encode(bytes)).unwrap();
}

fn generate() -> String {
    let mut out = String::new();
    out.push_str("# Sotto v1 known-answer vectors (see PROTOCOL.md Part I, \"Test vectors\").\n");
    out.push_str(
        "# random.<step>.<n> lines are the RNG outputs consumed, in order, by each step.\n",
    );

    // KDF primitives.
    let rk = Secret32::from_bytes(core::array::from_fn(|i| i as u8));
    let dh = Secret32::from_bytes(core::array::from_fn(|i| 0x20 + i as u8));
    let (rk2, ck) = kdf_rk(&rk, &dh);
    line(&mut out, "kdf_rk.root_key", rk.as_bytes());
    line(&mut out, "kdf_rk.dh_output", dh.as_bytes());
    line(&mut out, "kdf_rk.out.root_key", rk2.as_bytes());
    line(&mut out, "kdf_rk.out.chain_key", ck.as_bytes());
    let (mk, next) = kdf_ck(&ck);
    line(&mut out, "kdf_ck.out.message_key", mk.as_bytes());
    line(&mut out, "kdf_ck.out.next_chain_key", next.as_bytes());

    let mut rng = Recording {
        inner: ChaCha20Rng::from_seed([0x53; 32]),
        out: String::new(),
        label: "bob_keys",
        n: 0,
    };
    let bob = IdentityKeyPair::generate(&mut rng);
    let spk = SignedPrekey::generate(&bob, 2, 1, 1_700_000_000, &mut rng);
    let kem = KemPrekey::generate(&bob, 2, 1, true, 1_700_000_000, &mut rng);
    let okem = KemPrekey::generate(&bob, 2, 2, false, 1_700_000_000, &mut rng);
    let otk = OneTimePrekey::generate(7, &mut rng);
    rng.label = "alice_keys";
    rng.n = 0;
    let alice = IdentityKeyPair::generate(&mut rng);

    let blob = signed_bundle_blob(&bob, 2, &spk, &kem);
    let ec_item = otk.upload_item().bytes;
    let kem_item = okem.upload_item().bytes;
    line(&mut out, "bob.identity_key", bob.public().as_bytes());
    line(&mut out, "alice.identity_key", alice.public().as_bytes());
    line(&mut out, "bob.signed_bundle", &blob);
    line(&mut out, "bob.one_time_ec_item", &ec_item);
    line(&mut out, "bob.one_time_kem_item", &kem_item);
    writeln!(
        out,
        "safety_number = {}",
        SafetyNumber::compute(alice.public(), bob.public()).digits()
    )
    .unwrap();
    line(
        &mut out,
        "safety_number.scannable",
        SafetyNumber::compute(alice.public(), bob.public()).scannable(),
    );

    let bundle = PrekeyBundle::assemble(&blob, Some(&ec_item), Some(&kem_item)).unwrap();
    rng.label = "alice_initiate";
    rng.n = 0;
    let mut a = Session::initiate(&alice, &bundle, 1_700_000_000, &mut rng).unwrap();
    rng.label = "alice_send";
    rng.n = 0;
    let first = a.encrypt(b"Hello Bob", Padding::Padme, &mut rng).unwrap();
    line(&mut out, "message.1.alice_to_bob.prekey", &first.bytes);
    let m = PreKeyMessage::parse(&first.bytes).unwrap();
    let (mut b, pt) = Session::respond(&bob, &m, &spk, Some(&otk), &okem).unwrap();
    assert_eq!(pt, b"Hello Bob");
    rng.label = "bob_send";
    rng.n = 0;
    let reply = b.encrypt(b"Hi Alice", Padding::None, &mut rng).unwrap();
    line(&mut out, "message.2.bob_to_alice.ratchet", &reply.bytes);
    assert_eq!(a.decrypt(&reply.bytes).unwrap(), b"Hi Alice");
    rng.label = "alice_send2";
    rng.n = 0;
    let third = a.encrypt(b"How are you?", Padding::None, &mut rng).unwrap();
    line(&mut out, "message.3.alice_to_bob.ratchet", &third.bytes);
    assert_eq!(b.decrypt(&third.bytes).unwrap(), b"How are you?");

    out.push_str(&rng.out);
    out
}

#[test]
fn known_answer_vectors_match_the_file() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/sotto_v1.txt");
    let fresh = generate();
    // Deterministic: two runs agree.
    assert_eq!(fresh, generate());
    if std::env::var_os("SOTTO_REGEN_VECTORS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let stored = std::fs::read_to_string(&path)
        .expect("vector file missing: run with SOTTO_REGEN_VECTORS=1");
    for (i, (a, b)) in stored.lines().zip(fresh.lines()).enumerate() {
        assert_eq!(a, b, "vector line {} differs", i + 1);
    }
    assert_eq!(stored.lines().count(), fresh.lines().count());
}
