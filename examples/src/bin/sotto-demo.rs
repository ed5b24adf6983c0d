//! `./dev demo`, the README's main job: a relay and a scripted conversation
//! through it, on the messenger client an app would use.
//!
//! Starts a real `sotto-relay` process on a temp dir, then three devices,
//! each a `sotto_messenger::Messenger` on its own encrypted SQLite store:
//! Alice, Bob's phone, and (linked mid-way, the six digits compared on both
//! screens) Bob's laptop. They exchange text, receipts, a message the relay
//! holds while the laptop is closed, a file and a read receipt. Every step
//! prints, side by side, what the relay saw (envelope counts and the bytes it
//! holds, from its Prometheus `/metrics`; the encrypted UDP bytes counted by a
//! forwarder the clients connect through) and what the people read. It
//! ends with the safety number both users compare and a scan of the relay's
//! data directory for every plaintext: none may be found.
//!
//! Exits non-zero as soon as anything differs from the script.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sotto_core::SqliteStore;
use sotto_e2e::{RelayMetrics, RelayProcess};
use sotto_examples::display::{safety_number_lines, short_user};
use sotto_examples::profile::Profile;
use sotto_examples::wiretap::{WireTap, WireTotals};
use sotto_examples::{ExampleError, Result};
use sotto_messenger::Linking;
use sotto_messenger::{
    DeliveryState, Event, EventKind, MessageId, Messenger, ReceivedMessage, RelayAddress,
    UserAddress,
};

/// Runs a relay and a scripted end-to-end encrypted conversation.
#[derive(Parser, Debug)]
struct Args {
    /// Path of the `sotto-relay` binary (default: next to this one).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
}

/// How long any one expected thing may take before the demo fails.
const WAIT: Duration = Duration::from_secs(20);
/// Width of the relay column.
const LEFT: usize = 46;

const HELLO: &str = "Hi Bob! Only our devices can read this.";
const REPLY: &str = "Hi Alice. The relay sees sizes, never words.";
const BOTH: &str = "Bob, this reaches your phone and your laptop.";
const FROM_LAPTOP: &str = "Writing from my laptop now.";
const LATER: &str = "See you at eight, by the fountain.";
const FILE_TEXT: &str = "Shopping list: lemons, basil, a very secret olive oil.\n";
const FILE_CAPTION: &str = "the list for tonight";
const GROUP_NAME: &str = "Thursday climbing club";
const GROUP_TEXT: &str = "Ropes are packed, meet at the north wall.";
const GROUP_REPLY: &str = "Carol here, I will bring the chalk.";

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match tokio::time::timeout(Duration::from_secs(120), run(args)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("demo failed: {e}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("demo failed: did not finish within 120 s");
            std::process::exit(1);
        }
    }
}

/// One device of the demo, with its store in a temp dir.
struct Dev {
    name: &'static str,
    client: Messenger<SqliteStore>,
    _dir: tempfile::TempDir,
}

impl Dev {
    fn addr(&self) -> &UserAddress {
        self.client.address()
    }
}

fn fresh_store() -> Result<(tempfile::TempDir, SqliteStore)> {
    let dir = tempfile::tempdir()?;
    let store = Profile::new(dir.path())?.store()?;
    Ok((dir, store))
}

async fn create(name: &'static str, relay: &RelayAddress) -> Result<Dev> {
    let (dir, store) = fresh_store()?;
    let client = Messenger::create(store, relay.clone()).await?;
    Ok(Dev {
        name,
        client,
        _dir: dir,
    })
}

fn unexpected(what: impl Into<String>) -> ExampleError {
    ExampleError::Unexpected(what.into())
}

/// Waits for the first event `pick` accepts (acknowledging every event on
/// the way); a decrypt failure, identity change or send failure is an error.
async fn wait_for<T>(dev: &Dev, mut pick: impl FnMut(&Event) -> Option<T>) -> Result<T> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let e = tokio::time::timeout_at(deadline, dev.client.next_event())
            .await
            .map_err(|_| unexpected(format!("{}: expected event did not arrive", dev.name)))??;
        dev.client.ack_event(e.seq)?;
        match &e.kind {
            EventKind::DecryptFailed { reason } => {
                return Err(unexpected(format!(
                    "{}: decrypt failed: {reason}",
                    dev.name
                )))
            }
            EventKind::IdentityChanged => {
                return Err(unexpected(format!("{}: identity changed", dev.name)))
            }
            EventKind::SendFailed { reason, .. } => {
                return Err(unexpected(format!("{}: send failed: {reason}", dev.name)))
            }
            _ => {
                if let Some(t) = pick(&e) {
                    return Ok(t);
                }
            }
        }
    }
}

/// Waits for a chat message on `dev` and checks its sender and text.
async fn receive(dev: &Dev, from: &UserAddress, text: &str) -> Result<ReceivedMessage> {
    let (peer, m) = wait_for(dev, |e| match &e.kind {
        EventKind::Message(m) => Some((e.peer.clone(), m.clone())),
        _ => None,
    })
    .await?;
    if m.text != text || peer.as_ref() != Some(from) {
        return Err(unexpected(format!(
            "{} read {:?} from {peer:?}, not {text:?} from {from}",
            dev.name, m.text
        )));
    }
    Ok(m)
}

/// Waits until `ok` holds for the per-device delivery states of `id`.
async fn wait_delivery(
    dev: &Dev,
    id: &MessageId,
    ok: impl Fn(&[(u32, DeliveryState)]) -> bool,
) -> Result<Vec<(u32, DeliveryState)>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let states = dev.client.delivery(id)?;
        if ok(&states) {
            return Ok(states);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(unexpected(format!(
                "{}: delivery stuck at {states:?}",
                dev.name
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn all_at_least(want: DeliveryState) -> impl Fn(&[(u32, DeliveryState)]) -> bool {
    move |s| !s.is_empty() && s.iter().all(|(_, st)| *st >= want)
}

fn fmt_bytes(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else if n < 1024 * 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    }
}

/// Measures one step: the relay's counters and the tap's bytes before, then
/// after everything the step caused has settled.
struct Observer<'a> {
    relay: &'a RelayProcess,
    tap: &'a WireTap,
    metrics: RelayMetrics,
    wire: WireTotals,
}

impl<'a> Observer<'a> {
    fn new(relay: &'a RelayProcess, tap: &'a WireTap) -> Result<Self> {
        Ok(Observer {
            relay,
            tap,
            metrics: relay.metrics_snapshot()?,
            wire: tap.totals(),
        })
    }

    /// Waits for every outbox to drain (receipts included), lets the last
    /// QUIC acknowledgements pass, then prints the step's two columns.
    async fn step(&mut self, devs: &[&Dev], users: &[String]) -> Result<()> {
        for d in devs {
            d.client.flush(WAIT).await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let m = self.relay.metrics_snapshot()?;
        let w = self.tap.totals();
        let dm = |name| m.delta(&self.metrics, name);
        let dw = w.since(&self.wire);
        let mut relay = vec![format!(
            "accepted {} envelope(s), delivered {}",
            dm("sotto_envelopes_accepted_total"),
            dm("sotto_envelopes_delivered_total")
        )];
        let shared = dm("sotto_shared_payloads_total");
        if shared > 0 {
            relay.push(format!("  of which {shared} payload(s) sent once for many"));
            relay.push("  mailboxes, stored once (SendShared)".into());
        }
        let blobs = dm("sotto_blobs_uploaded_total");
        if blobs > 0 {
            relay.push(format!("{blobs} encrypted blob(s) stored"));
        }
        relay.push(format!(
            "UDP in: {} pkts, {}",
            dw.up_packets,
            fmt_bytes(dw.up_bytes)
        ));
        relay.push(format!(
            "UDP out: {} pkts, {}",
            dw.down_packets,
            fmt_bytes(dw.down_bytes)
        ));
        relay.push(format!(
            "held now: {} envelope(s), {}",
            m.get("sotto_queue_depth"),
            fmt_bytes(m.get("sotto_bytes_stored"))
        ));
        for i in 0..relay.len().max(users.len()) {
            let l = relay.get(i).map(String::as_str).unwrap_or("");
            let r = users.get(i).map(String::as_str).unwrap_or("");
            println!("{l:<LEFT$} | {r}");
        }
        println!("{:-<LEFT$}-+-{:-<60}", "", "");
        self.metrics = m;
        self.wire = w;
        Ok(())
    }
}

async fn run(args: Args) -> Result<()> {
    let relay_bin = match args.relay_bin {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("sotto-relay"),
    };
    let relay = RelayProcess::start(&relay_bin, &[])?;
    let tap = WireTap::start(relay.addr).await?;
    let home = RelayAddress::new(tap.addr, relay.pin);
    println!(
        "relay   {} (QUIC), certificate sha256 {}",
        relay.addr,
        hex::encode(relay.pin)
    );
    println!(
        "        clients reach it through a counting UDP forwarder on {}",
        tap.addr
    );
    println!("        left column: the relay's /metrics counters, and the encrypted QUIC");
    println!("        datagrams through that forwarder (sizes are all anyone on the path sees)");
    println!();
    println!("{:<LEFT$} | what the people read", "what the relay saw");
    println!("{:-<LEFT$}-+-{:-<60}", "", "");
    let mut obs = Observer::new(&relay, &tap)?;

    // Registration: identities stay on the devices; the relay gets public
    // prekeys and a signed device list.
    let alice = create("alice", &home).await?;
    let bob = create("bob/phone", &home).await?;
    obs.step(
        &[&alice, &bob],
        &[
            format!("alice registers: {}", short_user(alice.addr())),
            format!("bob registers:   {}", short_user(bob.addr())),
            "(each publishes 100+100 one-time prekeys".into(),
            " and a signed device list; they swap addresses)".into(),
        ],
    )
    .await?;

    // 1. First message: PQXDH from a relay-served bundle, then the ratchet.
    // Alice is a stranger to Bob: her message is a request until he accepts
    // (no receipt, no contact with her relay before that).
    let hello = alice.client.send_text(bob.addr(), HELLO)?;
    let (from, text) = wait_for(&bob, |e| match &e.kind {
        EventKind::MessageRequest(m) => Some((e.peer.clone(), m.text.clone())),
        _ => None,
    })
    .await?;
    if text != HELLO || from.as_ref() != Some(alice.addr()) {
        return Err(unexpected("bob's message request is not alice's hello"));
    }
    bob.client.accept_request(alice.addr())?;
    wait_delivery(&alice, &hello, all_at_least(DeliveryState::Delivered)).await?;
    obs.step(
        &[&alice, &bob],
        &[
            format!("alice -> bob: {HELLO}"),
            format!("bob/phone: message request: {HELLO}"),
            "bob accepts it; alice sees ✓✓ (delivered)".into(),
        ],
    )
    .await?;

    // 2. The reply moves the ratchet forward.
    let reply = bob.client.send_text(alice.addr(), REPLY)?;
    receive(&alice, bob.addr(), REPLY).await?;
    wait_delivery(&bob, &reply, all_at_least(DeliveryState::Delivered)).await?;
    obs.step(
        &[&alice, &bob],
        &[
            format!("bob -> alice: {REPLY}"),
            format!("alice reads: {REPLY}"),
            "bob sees ✓✓".into(),
        ],
    )
    .await?;

    // 3. Bob links his laptop; both screens show the same six digits.
    let (laptop_dir, laptop_store) = fresh_store()?;
    let mut linking = Linking::start(laptop_store, home.clone()).await?;
    let code = linking.code();
    let mut pending = bob.client.link_device(&code).await?;
    let laptop_digits = linking.wait_offer(WAIT).await?;
    let phone_digits = pending.wait_digits(WAIT).await?;
    if laptop_digits != phone_digits {
        return Err(unexpected("link digits differ between the two screens"));
    }
    let new_id = bob.client.confirm_link(pending).await?;
    let laptop = Dev {
        name: "bob/laptop",
        client: linking.finish(WAIT).await?,
        _dir: laptop_dir,
    };
    if laptop.addr() != bob.addr() || laptop.client.device_id() != new_id {
        return Err(unexpected("the linked laptop is not Bob's device 2"));
    }
    obs.step(
        &[&bob, &laptop],
        &[
            format!("bob/laptop shows a link code: {}…", &code[..21]),
            format!("bob/phone shows   {phone_digits}"),
            format!("bob/laptop shows  {laptop_digits}  (same: bob confirms both)"),
            format!("bob/laptop joins as device {new_id}: its own identity,"),
            " certified by bob's account key; list re-signed".into(),
        ],
    )
    .await?;

    // 4. Alice's next message reaches both of Bob's devices; she is told.
    let both = alice.client.send_text(bob.addr(), BOTH)?;
    receive(&bob, alice.addr(), BOTH).await?;
    receive(&laptop, alice.addr(), BOTH).await?;
    wait_for(&alice, |e| (e.kind == EventKind::NewDevice).then_some(())).await?;
    wait_delivery(&alice, &both, |s| {
        s.len() == 2 && s.iter().all(|(_, st)| *st >= DeliveryState::Delivered)
    })
    .await?;
    obs.step(
        &[&alice, &bob, &laptop],
        &[
            format!("alice -> bob: {BOTH}"),
            "alice is told: bob added device 2".into(),
            format!("bob/phone reads:  {BOTH}"),
            format!("bob/laptop reads: {BOTH}"),
            "alice sees ✓✓ from both devices".into(),
        ],
    )
    .await?;

    // 5. The laptop writes; the phone gets the sent copy.
    laptop.client.send_text(alice.addr(), FROM_LAPTOP)?;
    receive(&alice, bob.addr(), FROM_LAPTOP).await?;
    let copy = wait_for(&bob, |e| match &e.kind {
        EventKind::SentFromOtherDevice { message, .. } => Some(message.text.clone()),
        _ => None,
    })
    .await?;
    if copy != FROM_LAPTOP {
        return Err(unexpected("the phone's sent copy differs"));
    }
    obs.step(
        &[&alice, &bob, &laptop],
        &[
            format!("bob/laptop -> alice: {FROM_LAPTOP}"),
            format!("alice reads: {FROM_LAPTOP}"),
            "bob/phone shows it as sent by bob".into(),
        ],
    )
    .await?;

    // 6. The laptop is closed: the relay holds its copy (ciphertext only)
    // until it comes back, then deletes it once acknowledged.
    let Dev { name, client, _dir } = laptop;
    client.close().await;
    let later = alice.client.send_text(bob.addr(), LATER)?;
    receive(&bob, alice.addr(), LATER).await?;
    wait_delivery(&alice, &later, |s| {
        s.iter()
            .any(|(d, st)| *d == 1 && *st >= DeliveryState::Delivered)
    })
    .await?;
    obs.step(
        &[&alice, &bob],
        &[
            "bob closes his laptop".into(),
            format!("alice -> bob: {LATER}"),
            format!("bob/phone reads: {LATER}"),
            "(the laptop's copy waits on the relay, left)".into(),
        ],
    )
    .await?;
    let laptop = Dev {
        name,
        client: Messenger::open(Profile::new(_dir.path())?.store()?).await?,
        _dir,
    };
    receive(&laptop, alice.addr(), LATER).await?;
    wait_delivery(&alice, &later, all_at_least(DeliveryState::Delivered)).await?;
    obs.step(
        &[&alice, &bob, &laptop],
        &[
            "bob opens his laptop".into(),
            format!("bob/laptop reads: {LATER}"),
            "alice sees ✓✓ from both devices".into(),
        ],
    )
    .await?;

    // 7. A file: encrypted and uploaded as a blob, the key in the message.
    let files = tempfile::tempdir()?;
    let src = files.path().join("list.txt");
    std::fs::write(&src, FILE_TEXT)?;
    let file_msg = alice
        .client
        .send_file(bob.addr(), FILE_CAPTION, &src)
        .await?;
    let m = receive(&laptop, alice.addr(), FILE_CAPTION).await?;
    let received = receive(&bob, alice.addr(), FILE_CAPTION).await?;
    let att = m
        .attachments
        .first()
        .ok_or_else(|| unexpected("the file message has no attachment"))?;
    let dest = files.path().join("downloaded.txt");
    laptop
        .client
        .download_attachment(alice.addr(), att, &dest)
        .await?;
    if std::fs::read(&dest)? != FILE_TEXT.as_bytes() {
        return Err(unexpected("the downloaded file differs"));
    }
    obs.step(
        &[&alice, &bob, &laptop],
        &[
            format!("alice -> bob: {FILE_CAPTION} + {}", att.file_name),
            format!(
                "bob/laptop downloads {} ({} B), verified:",
                att.file_name, att.size
            ),
            format!("  {}", FILE_TEXT.trim_end()),
        ],
    )
    .await?;

    // 8. Bob reads it on his phone: a read receipt.
    bob.client.mark_read(alice.addr(), &[received.id])?;
    wait_delivery(&alice, &file_msg, |s| {
        s.iter().any(|(_, st)| *st == DeliveryState::Read)
    })
    .await?;
    obs.step(
        &[&alice, &bob],
        &[
            "bob opens it on his phone".into(),
            "alice sees ✓✓ read".into(),
        ],
    )
    .await?;

    // 9. A group: carol joins; alice creates it; every device reads one
    // ciphertext that alice uploaded once (one shared send per relay).
    let carol = create("carol", &home).await?;
    let group = alice
        .client
        .create_group(GROUP_NAME, &[bob.addr().clone(), carol.addr().clone()])?;
    for d in [&bob, &laptop, &carol] {
        wait_for(d, |e| match &e.kind {
            EventKind::GroupChanged { .. } if e.group == Some(group) => Some(()),
            _ => None,
        })
        .await?;
    }
    // Carol does not know alice: the group is an invitation until she
    // accepts it (bob accepted alice long ago).
    carol.client.accept_group(group)?;
    alice.client.send_group_text(group, GROUP_TEXT)?;
    for d in [&bob, &laptop, &carol] {
        let text = wait_for(d, |e| match &e.kind {
            EventKind::Message(m) if e.group == Some(group) => Some(m.text.clone()),
            _ => None,
        })
        .await?;
        if text != GROUP_TEXT {
            return Err(unexpected("a member read another group message"));
        }
    }
    obs.step(
        &[&alice, &bob, &laptop, &carol],
        &[
            format!("alice creates \"{GROUP_NAME}\""),
            "  with bob and carol (carol accepts the invite)".into(),
            format!("alice -> group: {GROUP_TEXT}"),
            "  bob/phone, bob/laptop and carol read it: one".into(),
            "  ciphertext, uploaded once, stored once".into(),
        ],
    )
    .await?;
    carol.client.send_group_text(group, GROUP_REPLY)?;
    for d in [&alice, &bob, &laptop] {
        wait_for(d, |e| match &e.kind {
            EventKind::Message(m) if e.group == Some(group) && m.text == GROUP_REPLY => Some(()),
            _ => None,
        })
        .await?;
    }
    let members = alice
        .client
        .group(group)?
        .map(|g| g.state.members.len())
        .unwrap_or(0);
    obs.step(
        &[&alice, &bob, &laptop, &carol],
        &[
            format!("carol -> group: {GROUP_REPLY}"),
            format!("alice, bob/phone, bob/laptop read it ({members} members);"),
            "  the relay never saw a group id, name or member list".into(),
        ],
    )
    .await?;

    // The safety number: one per pair of users, whatever their devices.
    let sn_alice = alice.client.safety_number(bob.addr());
    let sn_phone = bob.client.safety_number(alice.addr());
    let sn_laptop = laptop.client.safety_number(alice.addr());
    println!();
    println!("safety number alice and bob compare (in person or on a call):");
    for line in safety_number_lines(&sn_alice) {
        println!("        {line}");
    }
    if sn_alice != sn_phone || sn_alice != sn_laptop {
        return Err(unexpected("safety numbers differ between devices"));
    }
    alice.client.mark_verified(bob.addr())?;
    bob.client.mark_verified(alice.addr())?;
    println!("        alice, bob/phone and bob/laptop show the same digits: marked verified");

    // The relay's disk: none of the words, none of the file.
    let plaintexts = [
        HELLO,
        REPLY,
        BOTH,
        FROM_LAPTOP,
        LATER,
        FILE_TEXT,
        FILE_CAPTION,
        GROUP_NAME,
        GROUP_TEXT,
        GROUP_REPLY,
    ];
    let mut found = Vec::new();
    for text in plaintexts {
        let b = text.as_bytes();
        // Two 12-byte windows: long enough to be unique, and a whole
        // message need not be stored contiguously to count as a leak.
        for needle in [&b[..12], &b[b.len() - 12..]] {
            if relay.disk_contains(needle)? {
                found.push(text);
            }
        }
    }
    println!();
    if !found.is_empty() {
        return Err(unexpected(format!(
            "plaintext found in the relay's data dir: {found:?}"
        )));
    }
    println!(
        "relay data dir {} scanned: none of the {} plaintexts is on its disk",
        relay.data_dir().display(),
        plaintexts.len()
    );

    for d in [alice, bob, laptop, carol] {
        d.client.close().await;
    }
    Ok(())
}
