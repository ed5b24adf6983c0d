//! Writes the seed inputs of one fuzz target into a corpus directory (what
//! `./dev fuzz` starts an empty corpus from).
//!
//! Usage: `fuzz-seeds TARGET DIR`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, target, dir] = args.as_slice() else {
        eprintln!("usage: fuzz-seeds TARGET DIR");
        return ExitCode::from(2);
    };
    if !sotto_fuzz::TARGETS.iter().any(|(n, _)| n == target) {
        eprintln!("unknown target {target}");
        return ExitCode::from(2);
    }
    if std::fs::create_dir_all(dir).is_err() {
        return ExitCode::FAILURE;
    }
    for (i, seed) in sotto_fuzz::seeds(target).iter().enumerate() {
        let path = std::path::Path::new(dir).join(format!("seed-{i}"));
        if std::fs::write(&path, seed).is_err() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
