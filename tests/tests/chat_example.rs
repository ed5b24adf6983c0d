//! The terminal chat example as people use it: two real `sotto-chat`
//! processes, driven through their stdin and read through their stdout,
//! against a real relay process. Alice's message reaches Bob, her screen
//! shows it delivered, Bob's reply and read receipt come back, a file
//! arrives intact, and a restarted chat keeps its identity and address book;
//! a second device links with the same digits on both screens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use sotto_e2e::{relay_binary, workspace_binary, RelayProcess};
use sotto_messenger::RelayAddress;

const WAIT: Duration = Duration::from_secs(20);

/// Path of the `sotto-chat` binary: `$SOTTO_CHAT_BIN`; else the one in the
/// target directory this test was built into (the freshest build, the same
/// one `cargo test --workspace` just made); else the one beside the relay.
fn chat_binary() -> PathBuf {
    let own = workspace_binary("sotto-chat", "SOTTO_CHAT_BIN");
    if own.exists() {
        return own;
    }
    let beside_relay = relay_binary().with_file_name("sotto-chat");
    assert!(
        beside_relay.exists(),
        "sotto-chat not found at {} nor {}: build it with `cargo build -p sotto-examples` \
         or set SOTTO_CHAT_BIN",
        own.display(),
        beside_relay.display()
    );
    beside_relay
}

/// A running chat; killed if the test ends early.
struct Chat {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Chat {
    fn start(name: &'static str, data: &Path, relay: &[&str]) -> Chat {
        let mut child = Command::new(chat_binary())
            .arg("--data")
            .arg(data)
            .args(relay)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sotto-chat");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Chat {
            name,
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// The next output line `want` accepts (earlier lines are kept for the
    /// failure message).
    fn expect(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        self.expect_within(what, WAIT, want)
    }

    fn expect_within(&mut self, what: &str, wait: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}: no {what} within {wait:?}; output so far:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn address(&mut self) -> String {
        let line = self.expect("address line", |l| l.starts_with("address: "));
        line["address: ".len()..].to_string()
    }

    /// `/quit`, then the process must exit successfully.
    fn quit(mut self) {
        self.type_line("/quit");
        self.expect("goodbye", |l| l == "bye");
        drop(self.stdin.take());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{}: exit status {status}", self.name);
                return;
            }
            assert!(Instant::now() < deadline, "{}: did not exit", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_chats_talk_through_a_relay() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dirs.path().join("alice"), dirs.path().join("bob"));
    // Alice finds the relay through its data dir, Bob through its address.
    let relay_dir = relay.data_dir().to_str().unwrap().to_string();
    let relay_addr = RelayAddress::new(relay.addr, relay.pin).to_string();
    let mut alice = Chat::start("alice", &a_dir, &["--relay-dir", &relay_dir]);
    let mut bob = Chat::start("bob", &b_dir, &["--relay", &relay_addr]);
    let a_addr = alice.address();
    let b_addr = bob.address();
    assert!(
        a_addr.ends_with(&relay_addr),
        "{a_addr} not on {relay_addr}"
    );
    assert_ne!(a_addr, b_addr);

    alice.type_line(&format!("/add bob {b_addr}"));
    alice.type_line("/to bob");
    alice.expect("selection", |l| l == "talking to bob");
    bob.type_line(&format!("/add alice {a_addr}"));
    bob.expect("contact added", |l| l == "added alice");

    alice.type_line("hello from alice over sotto");
    bob.expect("Alice's message", |l| {
        l == "[alice] hello from alice over sotto"
    });
    alice.expect("delivered receipt", |l| {
        l.starts_with("#1 ✓✓ delivered to bob")
    });

    // Bob answers and reads; Alice sees both.
    bob.type_line("/to alice");
    bob.type_line("hi alice, got it");
    alice.expect("Bob's reply", |l| l == "[bob] hi alice, got it");
    bob.type_line("/read");
    bob.expect("read receipts queued", |l| {
        l == "read receipts queued for 1 message(s)"
    });
    alice.expect("read receipt", |l| l.starts_with("#1 ✓✓ read by bob"));

    // A file: encrypted, uploaded, announced, downloaded and verified.
    let src = dirs.path().join("notes.txt");
    std::fs::write(&src, "bring the blue folder\n").unwrap();
    alice.type_line(&format!("/file {} the notes", src.display()));
    bob.expect("file message", |l| l == "[alice] the notes");
    bob.expect("attachment line", |l| {
        l.trim_start()
            .starts_with("attachment 1: notes.txt (22 bytes)")
    });
    let dest = dirs.path().join("received.txt");
    bob.type_line(&format!("/get 1 {}", dest.display()));
    bob.expect("saved", |l| {
        l.starts_with("saved notes.txt (22 bytes, verified)")
    });
    assert_eq!(std::fs::read(&dest).unwrap(), b"bring the blue folder\n");

    // A restarted chat opens the same identity and address book: no relay
    // flag needed, the same address, and the contact still there.
    alice.quit();
    let mut alice = Chat::start("alice again", &a_dir, &[]);
    assert_eq!(alice.address(), a_addr);
    alice.type_line("/to bob");
    alice.type_line("back again");
    bob.expect("message after restart", |l| l == "[alice] back again");

    alice.quit();
    bob.quit();
}

#[test]
fn a_second_device_links_with_matching_digits_and_reads_along() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let relay_dir = relay.data_dir().to_str().unwrap().to_string();
    let relay_flag = ["--relay-dir", relay_dir.as_str()];
    let mut alice = Chat::start("alice", &dirs.path().join("alice"), &relay_flag);
    let mut phone = Chat::start("bob/phone", &dirs.path().join("phone"), &relay_flag);
    let a_addr = alice.address();
    let b_addr = phone.address();
    alice.type_line(&format!("/add bob {b_addr}"));
    alice.type_line("/to bob");
    alice.type_line("before the laptop");
    phone.expect("first message", |l| l.ends_with("] before the laptop"));

    // The new device shows a code; the existing one reads it; both show
    // the same six digits; the user confirms on both.
    let mut laptop_args = relay_flag.to_vec();
    laptop_args.push("--link");
    let mut laptop = Chat::start("bob/laptop", &dirs.path().join("laptop"), &laptop_args);
    let code = laptop.expect("link code", |l| l.starts_with("link code: "))["link code: ".len()..]
        .to_string();
    phone.type_line("/link");
    phone.type_line(&code);
    let on_phone = phone.expect("digits", |l| l.starts_with("digits: "));
    let on_laptop = laptop.expect("digits", |l| l.starts_with("digits: "));
    assert_eq!(on_phone, on_laptop);
    assert_eq!(on_phone.len(), "digits: ".len() + 6);
    phone.type_line("yes");
    phone.expect("link confirmed", |l| l.starts_with("device 2 linked"));
    laptop.type_line("yes");
    laptop.expect("linked", |l| l == "linked as device 2");
    assert_eq!(laptop.address(), b_addr, "the laptop is the same user");
    phone.type_line("/devices");
    phone.expect("device list", |l| l == "device 2");

    // Alice is told about the new device, and her message reaches both.
    alice.type_line("to both of your devices");
    // Alice is still a stranger to Bob (he never named her): a request on
    // the phone, and on the laptop too (it inherited no contact for her).
    for dev in [&mut phone, &mut laptop] {
        dev.expect("Alice's message", |l| {
            l.starts_with("[request from unknown ") && l.ends_with("] to both of your devices")
        });
    }
    alice.expect("new device notice", |l| {
        l == "! bob added a device (device 2)"
    });
    // The laptop answers; the phone shows the copy.
    laptop.type_line(&format!("/add alice {a_addr}"));
    laptop.type_line("/to alice");
    laptop.type_line("from the laptop");
    alice.expect("laptop's reply", |l| l == "[bob] from the laptop");
    phone.expect("sent copy", |l| {
        l.starts_with("[you -> unknown ") && l.ends_with(", from another device] from the laptop")
    });

    for chat in [alice, phone, laptop] {
        chat.quit();
    }
}

/// Presence and typing as people see them (PROTOCOL.md III.14): the
/// contact talked to shows online and typing, and a contact whose chat is
/// killed with SIGKILL (no goodbye) shows offline within the 45 s bound.
#[test]
fn a_killed_contact_shows_offline_within_45_seconds() {
    let relay = RelayProcess::start(&relay_binary(), &[]).unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let relay_addr = RelayAddress::new(relay.addr, relay.pin).to_string();
    let mut alice = Chat::start(
        "alice",
        &dirs.path().join("alice"),
        &["--relay", &relay_addr],
    );
    let mut bob = Chat::start("bob", &dirs.path().join("bob"), &["--relay", &relay_addr]);
    let (a_addr, b_addr) = (alice.address(), bob.address());
    alice.type_line(&format!("/add bob {b_addr}"));
    alice.type_line("/to bob");
    bob.type_line(&format!("/add alice {a_addr}"));
    bob.type_line("/to alice");
    bob.expect("selection", |l| l == "talking to alice");
    alice.type_line("hi bob");
    bob.expect("Alice's message", |l| l == "[alice] hi bob");
    bob.type_line("hi alice");
    alice.expect("Bob's reply", |l| l == "[bob] hi alice");

    // Sessions and tokens are in place both ways: Bob shows online.
    alice.type_line("/to bob");
    alice.expect("Bob online", |l| l == "● bob is online");
    bob.type_line("/typing");
    alice.expect("Bob typing", |l| l == "· bob is typing...");

    bob.child.kill().unwrap(); // SIGKILL: no goodbye, no offline signal
    let killed = Instant::now();
    alice.expect_within("Bob offline", Duration::from_secs(60), |l| {
        l.starts_with("○ bob is offline")
    });
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(46),
        "offline shown {took:?} after the kill"
    );
    alice.quit();
}
