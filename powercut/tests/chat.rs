//! The `sotto-chat` example's data directory on a LazyFs: a registration
//! that the chat reported done must survive a power cut.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use common::{relay_flags, workspace_binary, Mount, RelayProc};
use sotto_messenger::RelayAddress;

/// `sotto-chat --data DIR [--relay R]` with stdin held open; its stdout and
/// stderr lines arrive on the receiver.
fn chat(data: &Path, relay: Option<&str>) -> (Child, Receiver<String>) {
    let mut cmd = Command::new(workspace_binary("sotto-chat", "SOTTO_CHAT_BIN"));
    cmd.arg("--data").arg(data);
    if let Some(r) = relay {
        cmd.args(["--relay", r]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for out in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    (child, rx)
}

/// The address the chat prints, or everything it said if it printed none.
fn address(rx: &Receiver<String>) -> Result<String, Vec<String>> {
    let mut said = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(60)) {
        if let Some(a) = l.strip_prefix("address: ") {
            return Ok(a.to_owned());
        }
        said.push(l);
    }
    Err(said)
}

/// Failed before the fix: `sotto-chat` wrote its `registered` marker
/// (examples/src/profile.rs, `mark_registered`) with `fs::write` and synced
/// neither the file nor the directory. SQLite fsyncs the directory only when
/// it creates the WAL, before registration, so a power cut after the chat
/// printed its address could lose the marker; the next start then took the
/// device for an unfinished registration and deleted its store
/// (`discard_unregistered`): the user's account was gone.
#[test]
fn chat_registration_survives_a_power_cut() {
    let disk = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(
        &disk.path().join("relay"),
        &disk.path().join("relay.log"),
        &relay_flags(),
    )
    .unwrap();
    let mut m = Mount::new();
    // The data dir exists durably, as if made by an installer.
    let data = m.path().join("chat");
    std::fs::create_dir(&data).unwrap();
    std::fs::File::open(m.path()).unwrap().sync_all().unwrap();

    let relay_addr = RelayAddress::new(relay.addr, relay.pin).to_string();
    let (mut first, rx) = chat(&data, Some(&relay_addr));
    let registered = address(&rx).unwrap_or_else(|said| panic!("no address: {said:?}"));
    first.kill().unwrap();
    first.wait().unwrap();
    m.cut();

    let (mut second, rx) = chat(&data, None);
    let reopened = address(&rx);
    second.kill().unwrap();
    second.wait().unwrap();
    let left: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        reopened,
        Ok(registered),
        "the registered device did not survive the cut; its data dir now holds {left:?}"
    );
}
