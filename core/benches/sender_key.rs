//! Sender keys (PROTOCOL.md I.13): what one group message costs its sender
//! (one encryption and one signature, whatever the group's size) and each
//! receiver (one verification and one decryption).
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use rand_core::OsRng;
use sotto_core::padding::Padding;
use sotto_core::sender_key::{ReceivingChain, SendingChain};

fn sender_key(c: &mut Criterion) {
    let group = [7u8; 32];
    let plaintext = [0x61u8; 256];
    let mut sender = SendingChain::generate(&mut OsRng);
    c.bench_function("sender_key/encrypt_256B", |b| {
        b.iter(|| sender.encrypt(&group, &plaintext, Padding::Padme).unwrap())
    });
    let base = SendingChain::generate(&mut OsRng);
    let receiver = ReceivingChain::from_distribution(&base.distribution()).unwrap();
    c.bench_function("sender_key/decrypt_256B_in_order", |b| {
        b.iter_batched(
            || {
                (
                    receiver.clone(),
                    base.clone()
                        .encrypt(&group, &plaintext, Padding::Padme)
                        .unwrap(),
                )
            },
            |(mut r, m)| r.decrypt(&group, &m).unwrap(),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, sender_key);
criterion_main!(benches);
