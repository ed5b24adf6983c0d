//! cargo-fuzz entry for `sotto_fuzz::TARGETS["part1_message"]`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((_, run)) = sotto_fuzz::TARGETS.iter().find(|(n, _)| *n == "part1_message") {
        run(data);
    }
});
