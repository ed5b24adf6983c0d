//! Support for Sotto's cross-crate end-to-end tests.
//!
//! The tests drive the real `sotto-relay` binary, built by
//! `cargo build --workspace --bins` (which `./dev test` runs first) into the
//! same target directory as the test executables.

use std::path::PathBuf;

/// Path of the workspace binary `name`: the path in `$env_var` if set, else
/// the one in the target directory this test executable was built into
/// (`target/debug/deps/<test>` -> `target/debug/<name>`).
pub fn workspace_binary(name: &str, env_var: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join(name))
        .unwrap_or_default()
}

/// Path of the `sotto-relay` binary (`$SOTTO_RELAY_BIN` overrides).
pub fn relay_binary() -> PathBuf {
    workspace_binary("sotto-relay", "SOTTO_RELAY_BIN")
}

pub mod relay_process;
pub use relay_process::{RelayMetrics, RelayProcess};

pub mod attacker;
