//! cargo-fuzz entry for `sotto_fuzz::TARGETS["live"]`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((_, run)) = sotto_fuzz::TARGETS.iter().find(|(n, _)| *n == "live") {
        run(data);
    }
});
