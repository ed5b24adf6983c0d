//! `powercut-client`: the messenger client as a process that the power-cut
//! test kills with SIGKILL, its encrypted SQLite store on a LazyFs.
//!
//! The store path and key come from `POWERCUT_STORE` and `POWERCUT_KEY`
//! (64 hex digits). Commands:
//!
//! - `create RELAY`: registers a new user (`RELAY` is `host:port/pin`),
//!   prints `ADDRESS <user address>`, then waits to be killed;
//! - `run PEER TAG EVERY_MS`: opens the store, sends `TAG-<n>` to `PEER`
//!   every `EVERY_MS` milliseconds (never if 0), and shows every event.
//!
//! Everything it does is a line on stdout, written before the next step, so
//! the test knows what happened before the kill: `OPENED`; `SENT <id> <text>`
//! once `send_text` returned (durably queued); `MSG <seq> <id> <text>` for a
//! message (accepting a message request first); `FAIL <seq> <reason>` for a
//! decrypt failure; `EVENT <seq>` for any other event; `ACK <seq>` once
//! `ack_event` returned; `ERROR <what>` before exiting on an error.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use sotto_core::{SqliteStore, StorageKey};
use sotto_messenger::{EventKind, Messenger, RelayAddress, UserAddress};

fn fail(what: impl std::fmt::Display) -> ! {
    println!("ERROR {what}");
    std::process::exit(2)
}

fn store() -> SqliteStore {
    let path = std::env::var_os("POWERCUT_STORE").unwrap_or_else(|| fail("no POWERCUT_STORE"));
    let key = std::env::var("POWERCUT_KEY").unwrap_or_else(|_| fail("no POWERCUT_KEY"));
    let key: [u8; 32] = hex::decode(key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .unwrap_or_else(|| fail("POWERCUT_KEY is not 64 hex digits"));
    SqliteStore::open(path, &StorageKey::new(key)).unwrap_or_else(|e| fail(format!("open: {e}")))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["create", relay] => create(relay).await,
        ["run", peer, tag, every] => {
            let peer: UserAddress = peer.parse().unwrap_or_else(|e| fail(format!("peer: {e}")));
            let every: u64 = every
                .parse()
                .unwrap_or_else(|e| fail(format!("interval: {e}")));
            run(peer, tag.to_string(), every).await
        }
        _ => fail("usage: powercut-client create RELAY | run PEER TAG EVERY_MS"),
    }
}

async fn create(relay: &str) {
    let relay: RelayAddress = relay
        .parse()
        .unwrap_or_else(|e| fail(format!("relay: {e}")));
    let client = Messenger::create(store(), relay)
        .await
        .unwrap_or_else(|e| fail(format!("create: {e}")));
    println!("ADDRESS {}", client.address());
    std::future::pending::<()>().await;
}

async fn run(peer: UserAddress, tag: String, every_ms: u64) {
    let client = Messenger::open(store())
        .await
        .unwrap_or_else(|e| fail(format!("open client: {e}")));
    println!("OPENED");
    let client = std::sync::Arc::new(client);
    if every_ms > 0 {
        let (client, peer) = (client.clone(), peer.clone());
        tokio::spawn(async move {
            for n in 0u64.. {
                let text = format!("{tag}-{n}");
                match client.send_text(&peer, &text) {
                    Ok(id) => println!("SENT {} {text}", hex::encode(id.0)),
                    Err(e) => fail(format!("send: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(every_ms)).await;
            }
        });
    }
    loop {
        let event = client
            .next_event()
            .await
            .unwrap_or_else(|e| fail(format!("next event: {e}")));
        let seq = event.seq;
        match &event.kind {
            EventKind::Message(m) => println!("MSG {seq} {} {}", hex::encode(m.id.0), m.text),
            EventKind::MessageRequest(m) => {
                if let Some(p) = &event.peer {
                    client
                        .accept_request(p)
                        .unwrap_or_else(|e| fail(format!("accept: {e}")));
                }
                println!("MSG {seq} {} {}", hex::encode(m.id.0), m.text);
            }
            EventKind::DecryptFailed { reason } => println!("FAIL {seq} {reason}"),
            _ => println!("EVENT {seq}"),
        }
        client
            .ack_event(seq)
            .unwrap_or_else(|e| fail(format!("ack event: {e}")));
        println!("ACK {seq}");
    }
}
