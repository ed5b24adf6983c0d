//! Replays every committed corpus entry (and the seeds each corpus started
//! from) through its fuzz target: what the fuzzers found stays found. Runs
//! in the ordinary test command; the coverage-guided runs are
//! `./dev fuzz TARGET SECONDS`.

use std::path::Path;

#[test]
fn every_corpus_entry_runs_to_completion() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut total = 0usize;
    for (name, target) in sotto_fuzz::TARGETS {
        for seed in sotto_fuzz::seeds(name) {
            target(&seed);
            total += 1;
        }
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for entry in entries.flatten() {
                if let Ok(bytes) = std::fs::read(entry.path()) {
                    target(&bytes);
                    total += 1;
                }
            }
        }
    }
    assert!(total >= sotto_fuzz::TARGETS.len());
}

#[test]
fn every_target_has_a_cargo_fuzz_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("targets/fuzz_targets");
    for (name, _) in sotto_fuzz::TARGETS {
        assert!(root.join(format!("{name}.rs")).is_file(), "{name}");
    }
}
