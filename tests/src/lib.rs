//! Support for Sotto's cross-crate end-to-end tests.
//!
//! The tests drive the real `sotto-relay` binary, built by
//! `cargo build --workspace --bins` (which `./dev test` runs first) into the
//! same target directory as the test executables.

use std::path::PathBuf;

/// Path of the `sotto-relay` binary: `$SOTTO_RELAY_BIN`, or the one beside
/// the running test executable's `deps/` directory.
pub fn relay_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SOTTO_RELAY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/<test> -> target/debug/sotto-relay
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    dir.join("sotto-relay")
}

pub use sotto_examples::relay_process::RelayProcess;
