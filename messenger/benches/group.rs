//! One 256-byte message to a group of 10, 100 and 1,000 members (the
//! sender with one device, every other member with 3), next to the same message sent pairwise (one envelope per device,
//! the only way before groups): the sender's CPU for the whole send (queue,
//! plan, encrypt, seal, commit; the simulated relays' time is left out)
//! and the bytes it uploads; and a member
//! device's CPU to receive one group message. Relays are simulated in
//! memory: the relay's own cost per recipient is the load generator's.
//!
//! `cargo bench -p sotto-messenger --features fuzzing --bench group`
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sotto_messenger::harness::GroupBench;

const TEXT: usize = 256;
const DEVICES: u32 = 3;

/// Group sizes from the comma-separated variable `var`, else `default`.
fn sizes(var: &str, default: &str) -> Vec<usize> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

fn sender(c: &mut Criterion) {
    let mut g = c.benchmark_group("group_send");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    // SOTTO_BENCH_MEMBERS=10,100 picks sizes (setting up 1,000 members,
    // 3,000 sessions, takes a while).
    for members in sizes("SOTTO_BENCH_MEMBERS", "10,100,1000") {
        let mut bench = GroupBench::new(members, DEVICES);
        let group = bench.send_group(TEXT);
        bench.drop_mailboxes();
        let pairwise = bench.send_pairwise(TEXT);
        bench.drop_mailboxes();
        println!(
            "{members} members ({DEVICES} devices each but the sender's): group send uploads {} B for {} envelopes \
             (one {} B envelope); pairwise uploads {} B for {} envelopes",
            group.uploaded_bytes,
            group.envelopes,
            group.envelope_bytes,
            pairwise.uploaded_bytes,
            pairwise.envelopes
        );
        // The sender's own time, without the simulated relays' part.
        g.bench_function(BenchmarkId::new("group", members), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let t = bench.send_group(TEXT).sender_time;
                        bench.drop_mailboxes();
                        t
                    })
                    .sum()
            })
        });
        if members <= 100 {
            g.bench_function(BenchmarkId::new("pairwise", members), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            let t = bench.send_pairwise(TEXT).sender_time;
                            bench.drop_mailboxes();
                            t
                        })
                        .sum()
                })
            });
        }
    }
    g.finish();
}

fn receiver(c: &mut Criterion) {
    let mut g = c.benchmark_group("group_receive");
    // A member's cost must not grow with the group (SOTTO_BENCH_RECEIVE
    // picks sizes).
    for members in sizes("SOTTO_BENCH_RECEIVE", "10,1000") {
        let mut bench = GroupBench::new(members, DEVICES);
        g.bench_function(BenchmarkId::new("one_message_256B", members), |b| {
            b.iter_custom(|iters| bench.receive_group(iters as usize))
        });
    }
    g.finish();
}

criterion_group!(benches, sender, receiver);
criterion_main!(benches);
