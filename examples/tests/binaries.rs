//! The example binaries as a user starts them: `sotto-demo` runs its whole
//! script against a real relay process and exits 0, and `sotto-chat`
//! refuses a first run without a relay. (Also makes `cargo test` build both
//! binaries, which `tests/tests/chat_example.rs` drives.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

/// `$SOTTO_RELAY_BIN`, or `sotto-relay` beside these binaries.
fn relay_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SOTTO_RELAY_BIN") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_BIN_EXE_sotto-demo")).with_file_name("sotto-relay")
}

#[test]
fn demo_runs_its_script_and_finds_no_plaintext_on_the_relay() {
    let out = Command::new(env!("CARGO_BIN_EXE_sotto-demo"))
        .arg("--relay-bin")
        .arg(relay_binary())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "bob/laptop joins as device 2",
        "alice sees ✓✓ read",
        "marked verified",
        "alice, bob/phone, bob/laptop read it (3 members)",
        "none of the 10 plaintexts is on its disk",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

#[test]
fn chat_first_run_needs_a_relay() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sotto-chat"))
        .arg("--data")
        .arg(dir.path().join("me"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--relay"), "{err}");
}
