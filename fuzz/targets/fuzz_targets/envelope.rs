//! cargo-fuzz entry for `sotto_fuzz::TARGETS["envelope"]`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((_, run)) = sotto_fuzz::TARGETS.iter().find(|(n, _)| *n == "envelope") {
        run(data);
    }
});
