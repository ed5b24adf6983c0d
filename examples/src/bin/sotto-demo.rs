//! `./dev demo`: a relay and a scripted conversation through it.
//!
//! Starts a real `sotto-relay` process on a temp dir, lets Alice and Bob
//! (each one device with an encrypted SQLite store) publish prekeys, set up
//! a PQXDH session and talk, and prints what the relay handled (ciphertext
//! sizes only) next to what the users read. It ends by scanning the relay's
//! data directory for every plaintext it carried: none may be found.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use clap::Parser;
use sotto_examples::relay_process::RelayProcess;
use sotto_examples::scripted::{ContactCard, ScriptedUser};
use sotto_examples::{ExampleError, Result};

/// Runs a relay and a scripted end-to-end encrypted conversation.
#[derive(Parser, Debug)]
struct Args {
    /// Path of the `sotto-relay` binary (default: next to this one).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
}

const SCRIPT: &[(&str, &str)] = &[
    (
        "alice",
        "Hi Bob! This is end-to-end encrypted with PQXDH and the Double Ratchet.",
    ),
    ("bob", "Hi Alice. The relay only sees ciphertext and sizes."),
    (
        "alice",
        "Every reply moves the ratchet forward: old keys are gone.",
    ),
    ("alice", "Two in a row share a sending chain."),
    ("bob", "And I read them in order. Bye!"),
];

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let relay_bin = match args.relay_bin {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("sotto-relay"),
    };
    let relay = RelayProcess::start(&relay_bin, &[])?;
    println!(
        "relay   listening on {} (certificate sha256 {})",
        relay.addr,
        hex::encode(relay.pin)
    );

    let mut alice = ScriptedUser::join("alice", relay.addr, relay.pin, 1).await?;
    let mut bob = ScriptedUser::join("bob", relay.addr, relay.pin, 1).await?;
    let (alice_card, bob_card) = (alice.card(), bob.card());
    println!("alice   published a signed bundle and one-time prekeys");
    println!("bob     published a signed bundle and one-time prekeys");
    let (sn_a, sn_b) = (
        alice.safety_number(&bob_card),
        bob.safety_number(&alice_card),
    );
    println!("safety  alice sees {sn_a}");
    println!(
        "safety  bob   sees {sn_b}  ({})",
        if sn_a == sn_b { "match" } else { "MISMATCH" }
    );
    if sn_a != sn_b {
        return Err(ExampleError::Envelope("safety numbers differ"));
    }
    println!();
    println!("{:<44} | what the users read", "what the relay handled");
    println!("{:-<44}-+-{:-<60}", "", "");

    for (who, text) in SCRIPT {
        let (sender, receiver, to): (&mut ScriptedUser, &mut ScriptedUser, &ContactCard) =
            if *who == "alice" {
                (&mut alice, &mut bob, &bob_card)
            } else {
                (&mut bob, &mut alice, &alice_card)
            };
        let sent = sender.send(to, text.as_bytes()).await?;
        for got in receiver.receive().await? {
            let shown = String::from_utf8_lossy(&got.text);
            println!(
                "{:<44} | {} -> {}: {}",
                format!(
                    "envelope ..{} ({} B)",
                    &hex::encode(sent.envelope_id.0)[20..],
                    got.wire_len
                ),
                sender.name,
                receiver.name,
                shown
            );
            if got.text != text.as_bytes() {
                return Err(ExampleError::Envelope(
                    "decrypted text differs from what was sent",
                ));
            }
        }
    }

    let mut leaked = 0;
    for (_, text) in SCRIPT {
        // A 16-byte prefix is unique enough and survives no encryption.
        leaked += usize::from(relay.disk_contains(&text.as_bytes()[..16])?);
    }
    println!();
    if leaked == 0 {
        println!(
            "relay data dir scanned: none of the {} plaintexts found on disk",
            SCRIPT.len()
        );
        Ok(())
    } else {
        Err(ExampleError::Envelope(
            "plaintext found in the relay's data dir",
        ))
    }
}
