//! Criterion benches of attachment encryption: throughput of the streaming
//! encryptor and decryptor (ChaCha20-Poly1305 STREAM + SHA-256 of the blob)
//! from memory to a sink, for a photo-sized and a video-sized file. Run with
//! `cargo bench -p sotto-core --bench attachment -- --warm-up-time 1 --measurement-time 3`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand_core::OsRng;
use sotto_core::attachment::{decrypt, encrypt};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("attachment");
    group.sample_size(10);
    for (name, len) in [("256KiB", 256 * 1024), ("16MiB", 16 * 1024 * 1024)] {
        let plaintext: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut blob = Vec::new();
        let ptr = encrypt(&plaintext[..], &mut blob, &mut OsRng).unwrap();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(format!("encrypt/{name}"), |b| {
            b.iter(|| encrypt(&plaintext[..], std::io::sink(), &mut OsRng).unwrap())
        });
        group.bench_function(format!("decrypt/{name}"), |b| {
            b.iter(|| decrypt(&blob[..], std::io::sink(), &ptr).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
