//! `sotto-chat`: a terminal chat on the messenger client, for two people in
//! two terminals (or two machines) and one relay.
//!
//! `sotto-chat --data DIR --relay ADDRESS` registers a new user on the first
//! run (an encrypted SQLite store in DIR, its key in `DIR/storage.key`, see
//! `sotto_examples::profile`) and opens it afterwards. It prints the user's
//! address; people exchange addresses out of band and type commands:
//!
//! ```text
//! /add <name> <address>   name a contact          /to <name>     talk to them
//! <text>                  send a message          /file <path>   send a file
//! /get <n> <dest>         save the n-th received attachment
//! /read                   send read receipts for what was shown
//! /verify                 show the safety number, mark it compared
//! /link                   link a new device (it runs with --link)
//! /devices  /unlink <id>  /contacts  /help  /quit
//! /group new <title> <name>...   a group with these contacts
//! /groups                 list groups (n)      /group <n>   talk in group n
//! /join <n>  /invite <name>  /kick <name>  /leave
//! ```
//!
//! Incoming events print as they arrive: messages, ✓ (the relay has it),
//! ✓✓ (delivered / read), decrypt failures, session resets, new devices;
//! and for the contact talked to, ● online / ○ offline and "typing...".
//! `/typing`, `/away`, `/back` and `/presence on|off` send the user's own.
//! `--link` starts a new device of an existing user instead: it prints a link
//! code to type into `/link` on the existing device, and both show the same
//! six digits before anything is sent.
#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use sotto_core::SqliteStore;
use sotto_examples::display::{safety_number_lines, short_id, short_user};
use sotto_examples::profile::{AddressBook, Profile};
use sotto_examples::{ExampleError, Result};
use sotto_messenger::Linking;
use sotto_messenger::{
    AttachmentRef, DeliveryState, Event, EventKind, GroupEffect, GroupId, GroupInfo, LiveEvent,
    MessageId, Messenger, Presence, ReceiptKind, RelayAddress, UserAddress,
};
use sotto_relay::addr_file::AddrFile;
use tokio::sync::mpsc::UnboundedReceiver;

/// End-to-end encrypted chat in a terminal.
#[derive(Parser, Debug)]
#[command(name = "sotto-chat")]
struct Args {
    /// This device's data directory (created on first run).
    #[arg(long)]
    data: PathBuf,
    /// Home relay, `host:port/certificate-sha256` (needed on first run).
    #[arg(long, conflicts_with = "relay_dir")]
    relay: Option<String>,
    /// Read the home relay's address from a local relay's data directory
    /// (its `relay.addr` file) instead of `--relay`.
    #[arg(long)]
    relay_dir: Option<PathBuf>,
    /// Join an existing user as a new device (first run only).
    #[arg(long)]
    link: bool,
}

/// How long linking waits for the other device.
const LINK_WAIT: Duration = Duration::from_secs(600);

fn main() {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sotto-chat: {e}");
            std::process::exit(1);
        }
    };
    let code = match rt.block_on(run(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("sotto-chat: {e}");
            1
        }
    };
    // The stdin reader thread may be blocked in a read: do not wait for it.
    rt.shutdown_background();
    std::process::exit(code);
}

/// Lines typed by the user, read on a plain thread (a blocking read of
/// stdin cannot be cancelled, so it stays off the async runtime).
fn stdin_lines() -> UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn relay_address(args: &Args) -> Result<Option<RelayAddress>> {
    if let Some(r) = &args.relay {
        return Ok(Some(r.trim().parse()?));
    }
    let Some(dir) = &args.relay_dir else {
        return Ok(None);
    };
    let f = AddrFile::read(dir).ok_or_else(|| {
        ExampleError::Profile(format!(
            "no readable relay.addr in {} (is the relay running?)",
            dir.display()
        ))
    })?;
    let mut quic = f.quic;
    if quic.ip().is_unspecified() {
        // Listening on every interface: reach it locally. Contacts on other
        // machines need an address with a reachable host (use --relay).
        quic.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(Some(RelayAddress::new(quic, f.fingerprint)))
}

async fn run(args: Args) -> Result<()> {
    let profile = Profile::new(&args.data)?;
    let relay = relay_address(&args)?;
    let mut input = stdin_lines();
    let client = if profile.is_registered() {
        if args.link {
            return Err(ExampleError::Profile(format!(
                "{} already holds a device; --link needs a new directory",
                args.data.display()
            )));
        }
        Messenger::open(profile.store()?).await?
    } else {
        profile.discard_unregistered()?;
        let relay = relay.ok_or_else(|| {
            ExampleError::Profile(
                "first run: give the home relay with --relay or --relay-dir".into(),
            )
        })?;
        let client = if args.link {
            match link_new_device(&profile, relay, &mut input).await? {
                Some(c) => c,
                None => return Ok(()),
            }
        } else {
            println!("registering on {relay} ...");
            Messenger::create(profile.store()?, relay).await?
        };
        profile.mark_registered()?;
        client
    };
    println!("address: {}", client.address());
    println!("device: {}", client.device_id());
    println!("Give your address to your contacts; add theirs with /add <name> <address>. /help lists commands.");

    let chat = Arc::new(Chat {
        client,
        state: Mutex::new(State {
            book: profile.contacts()?,
            to: None,
            group: None,
            attachments: Vec::new(),
            unread: Vec::new(),
            sent: HashMap::new(),
            shown_sent: HashSet::new(),
        }),
    });
    let events = tokio::spawn(show_events(chat.clone()));
    let live = tokio::spawn(show_live(chat.clone()));
    while let Some(line) = input.recv().await {
        match command(&chat, line.trim(), &mut input).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => println!("! {e}"),
        }
    }
    events.abort();
    let _ = events.await;
    live.abort();
    let _ = live.await;
    if let Err(e) = chat.client.flush(Duration::from_secs(5)).await {
        println!(
            "! {e}: {} item(s) stay queued and go out at the next start",
            chat.client.pending_outgoing().unwrap_or(0)
        );
    }
    if let Ok(chat) = Arc::try_unwrap(chat) {
        chat.client.close().await;
    }
    println!("bye");
    Ok(())
}

/// The new device's side of linking; `None` if the user refused.
async fn link_new_device(
    profile: &Profile,
    relay: RelayAddress,
    input: &mut UnboundedReceiver<String>,
) -> Result<Option<Messenger<SqliteStore>>> {
    let mut linking = Linking::start(profile.store()?, relay).await?;
    println!("link code: {}", linking.code());
    println!("On your existing device type /link and paste this code.");
    let digits = linking.wait_offer(LINK_WAIT).await?;
    println!("digits: {digits}");
    println!("Does your existing device show the same six digits? Type yes to link:");
    if !confirmed(input).await {
        println!("not linked");
        drop(linking);
        profile.discard_unregistered()?;
        return Ok(None);
    }
    let client = linking.finish(LINK_WAIT).await?;
    println!("linked as device {}", client.device_id());
    Ok(Some(client))
}

async fn confirmed(input: &mut UnboundedReceiver<String>) -> bool {
    matches!(input.recv().await, Some(l) if l.trim().eq_ignore_ascii_case("yes"))
}

/// The chat: the client and what the screen refers to.
struct Chat {
    client: Messenger<SqliteStore>,
    state: Mutex<State>,
}

struct State {
    book: AddressBook,
    to: Option<String>,
    /// The group plain text goes to (instead of `to`).
    group: Option<GroupId>,
    /// Received attachments, numbered from 1 in arrival order (`/get n`).
    attachments: Vec<(UserAddress, AttachmentRef)>,
    /// Messages shown but not yet marked read (`/read`).
    unread: Vec<(UserAddress, MessageId)>,
    /// Numbers of messages sent in this run, for the ✓ lines.
    sent: HashMap<MessageId, usize>,
    /// Messages already shown as ✓ (the relay has them).
    shown_sent: HashSet<MessageId>,
}

impl State {
    fn who(&self, addr: &UserAddress) -> String {
        match self.book.name_of(addr) {
            Some(n) => n.to_string(),
            None => format!("unknown {}", short_user(addr)),
        }
    }

    fn label(&self, id: &MessageId) -> String {
        match self.sent.get(id) {
            Some(n) => format!("#{n}"),
            None => format!("msg {}", short_id(id)),
        }
    }

    fn selected_group(&self) -> Result<GroupId> {
        self.group
            .ok_or_else(|| ExampleError::Usage("choose a group first: /groups, /group <n>".into()))
    }

    fn selected(&self) -> Result<(String, UserAddress)> {
        let name = self
            .to
            .clone()
            .ok_or_else(|| ExampleError::Usage("choose a contact first: /to <name>".into()))?;
        let addr = self
            .book
            .get(&name)
            .cloned()
            .ok_or_else(|| ExampleError::Usage(format!("no contact {name}")))?;
        Ok((name, addr))
    }
}

impl Chat {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a print panicked: the data is fine.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Prints presence and typing changes as they arrive (nothing to ack).
async fn show_live(chat: Arc<Chat>) {
    let mut live = chat.client.live_events();
    while let Some(e) = live.next().await {
        let st = chat.state();
        match e {
            LiveEvent::Typing { user, typing } => {
                let who = st.who(&user);
                if typing {
                    println!("· {who} is typing...");
                } else {
                    println!("· {who} stopped typing");
                }
            }
            LiveEvent::Presence { user, presence } => {
                let who = st.who(&user);
                match presence {
                    Presence::Online => println!("● {who} is online"),
                    Presence::Offline { last_seen_ms } => {
                        let ago = unix_ms().saturating_sub(last_seen_ms) / 1000;
                        println!("○ {who} is offline (last seen {ago} s ago)");
                    }
                    Presence::Unknown => println!("○ {who}: presence unknown"),
                }
            }
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Prints events as they arrive; each is acknowledged once shown.
async fn show_events(chat: Arc<Chat>) {
    loop {
        match chat.client.next_event().await {
            Ok(e) => {
                show(&chat, &e);
                if let Err(err) = chat.client.ack_event(e.seq) {
                    println!("! could not store that the event was shown: {err}");
                }
            }
            Err(err) => {
                println!("! reading events failed: {err}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn show(chat: &Chat, e: &Event) {
    let mut st = chat.state();
    let peer = e.peer.as_ref();
    let who = peer.map(|p| st.who(p)).unwrap_or_else(|| "?".into());
    let dev = e.peer_device;
    let group = e
        .group
        .map(|g| {
            chat.client
                .group(g)
                .ok()
                .flatten()
                .map(|i| i.state.name)
                .unwrap_or_else(|| short_group(&g))
        })
        .map(|name| format!("{name}/"))
        .unwrap_or_default();
    match &e.kind {
        EventKind::GroupChanged {
            version,
            changes,
            effect,
        } => {
            println!("[{group}{who}] group changed (version {version}): {changes:?}");
            match effect {
                GroupEffect::Invitation => {
                    println!("    (an invitation: /groups, then /join <n>)")
                }
                GroupEffect::RemovedYou => println!("    (you are no longer a member)"),
                _ => {}
            }
        }
        EventKind::Message(m) => {
            println!("[{group}{who}] {}", m.text);
            if let Some(p) = peer {
                for a in &m.attachments {
                    st.attachments.push((p.clone(), a.clone()));
                    println!(
                        "    attachment {}: {} ({} bytes), save it with /get {} <dest>",
                        st.attachments.len(),
                        a.file_name,
                        a.size,
                        st.attachments.len()
                    );
                }
                st.unread.push((p.clone(), m.id));
                if st.book.name_of(p).is_none() {
                    println!("    (to answer, name them: /add <name> {p})");
                }
            }
        }
        EventKind::MessageRequest(m) => {
            println!("[request from {who}] {}", m.text);
            if let Some(p) = peer {
                println!(
                    "    (a message request: nothing was sent back; /add <name> {p} to accept)"
                );
            }
        }
        EventKind::SentFromOtherDevice { to, message } => {
            println!(
                "[you -> {}, from another device] {}",
                st.who(to),
                message.text
            );
        }
        EventKind::Delivery { message_id, state } => {
            if *state == DeliveryState::Sent && st.shown_sent.insert(*message_id) {
                println!("{} ✓ sent (the relay has it)", st.label(message_id));
            }
        }
        EventKind::Receipt { kind, message_ids } => {
            let what = match kind {
                ReceiptKind::Delivered => "delivered to",
                ReceiptKind::Read => "read by",
            };
            for id in message_ids {
                println!("{} ✓✓ {what} {who} (device {dev})", st.label(id));
            }
        }
        EventKind::DecryptFailed { reason } => {
            println!("! a message claiming to come from {who} (device {dev}) could not be used ({reason})");
        }
        EventKind::SessionReset => {
            println!("! the session with {who} (device {dev}) was set up afresh");
        }
        EventKind::IdentityChanged => {
            println!("! WARNING: {who}'s identity key changed; nothing from them is accepted. Compare safety numbers (/verify) through another channel.");
        }
        EventKind::NewDevice => {
            println!("! {who} added a device (device {dev})");
        }
        EventKind::DeviceRemoved => {
            println!("! {who} removed a device (device {dev})");
        }
        EventKind::SendFailed { message_id, reason } => {
            println!(
                "! {} to {who} could not be sent: {reason}",
                st.label(message_id)
            );
        }
        other => println!("! {other:?}"),
    }
}

const HELP: &str = "\
/add <name> <address>   name a contact
/to <name>              talk to them; then type text to send it
/file <path> [caption]  send a file
/get <n> <dest>         save the n-th received attachment to dest
/read                   send read receipts for the messages shown
/verify                 compare the safety number with the current contact
/block                  block the current contact (drop their messages unread)
/contacts               list contacts
/link                   link a new device (start it with --link)
/devices                list this user's devices
/unlink <id>            remove one of this user's devices
/group new <title> <name>...  create a group with these contacts
/groups                 list groups (numbered)
/group <n>              talk in group n (/to <name> talks to a person again)
/join <n>               accept the invitation to group n
/invite <name>          add a contact to the current group (admins)
/kick <name>            remove a member from the current group (admins)
/leave                  leave the current group
/typing                 tell the current contact you are typing (a terminal
                        sees lines, not keystrokes; sending stops it)
/away  /back            show yourself away or online to those who watch
/presence on|off        share when you are online and typing, or not
/quit                   leave (queued messages are sent first)

The contact you talk to (/to) is watched: its online status and typing
show as they change.";

/// A short, stable name for a group id.
fn short_group(g: &GroupId) -> String {
    hex::encode(&g.0[..4])
}

/// The n-th group of `/groups` (from 1).
fn nth_group(chat: &Chat, n: usize) -> Result<GroupInfo> {
    chat.client
        .groups()?
        .into_iter()
        .nth(n.wrapping_sub(1))
        .ok_or_else(|| ExampleError::Usage(format!("no group {n}: see /groups")))
}

/// Runs one line; `Ok(false)` means quit.
async fn command(chat: &Chat, line: &str, input: &mut UnboundedReceiver<String>) -> Result<bool> {
    if line.is_empty() {
        return Ok(true);
    }
    if !line.starts_with('/') {
        // Held across the (synchronous) queueing, so the ✓ lines of this
        // message cannot be shown before it has its number.
        let mut st = chat.state();
        if let Some(g) = st.group {
            let id = chat.client.send_group_text(g, line)?;
            let n = st.sent.len() + 1;
            st.sent.insert(id, n);
            println!("#{n} -> group {}: {line}", short_group(&g));
            return Ok(true);
        }
        let (name, to) = st.selected()?;
        let id = chat.client.send_text(&to, line)?;
        let _ = chat.client.set_typing(&to, false);
        let n = st.sent.len() + 1;
        st.sent.insert(id, n);
        println!("#{n} -> {name}: {line}");
        return Ok(true);
    }
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim();
    let usage = |u: &str| ExampleError::Usage(format!("usage: {u}"));
    match cmd {
        "/quit" | "/exit" => return Ok(false),
        "/help" => println!("{HELP}"),
        "/add" => {
            let (name, addr) = rest
                .split_once(' ')
                .ok_or_else(|| usage("/add <name> <address>"))?;
            let addr: UserAddress = addr.trim().parse()?;
            if addr.user == chat.client.address().user {
                return Err(ExampleError::Usage("that is your own address".into()));
            }
            chat.state().book.add(name, addr.clone())?;
            // Naming someone accepts them: their messages stop being requests.
            chat.client.accept_request(&addr)?;
            println!("added {name}");
        }
        "/block" => {
            let (name, addr) = chat.state().selected()?;
            chat.client.block(&addr)?;
            println!("blocked {name}: their messages are dropped unread");
        }
        "/to" => {
            let mut st = chat.state();
            let Some(addr) = st.book.get(rest).cloned() else {
                return Err(ExampleError::Usage(format!(
                    "no contact {rest:?}: /add it first"
                )));
            };
            // The open conversation is the one whose presence is watched.
            if let Ok((_, previous)) = st.selected() {
                chat.client.unwatch_presence(&previous);
            }
            st.to = Some(rest.to_string());
            st.group = None;
            println!("talking to {rest}");
            if chat.client.watch_presence(&addr).is_err() {
                println!("  (presence shows once {rest} is an accepted contact)");
            }
        }
        "/typing" => {
            let (_, to) = chat.state().selected()?;
            chat.client.set_typing(&to, true)?;
        }
        "/away" => {
            chat.client.set_present(false);
            println!("shown as away to those who watch");
        }
        "/back" => {
            chat.client.set_present(true);
            println!("shown as online to those who watch");
        }
        "/presence" => match rest {
            "on" => {
                chat.client.share_presence(true)?;
                println!("contacts see when you are online and typing");
            }
            "off" => {
                chat.client.share_presence(false)?;
                println!("nobody sees when you are online or typing");
            }
            _ => return Err(usage("/presence on|off")),
        },
        "/group" if rest.starts_with("new ") => {
            let mut words = rest["new ".len()..].split_whitespace();
            let title = words
                .next()
                .ok_or_else(|| usage("/group new <title> <name>..."))?;
            let st = chat.state();
            let members = words
                .map(|n| {
                    st.book
                        .get(n)
                        .cloned()
                        .ok_or_else(|| ExampleError::Usage(format!("no contact {n}")))
                })
                .collect::<Result<Vec<_>>>()?;
            drop(st);
            let g = chat.client.create_group(title, &members)?;
            chat.state().group = Some(g);
            println!(
                "group {} created with {} member(s); talking in it",
                short_group(&g),
                members.len()
            );
        }
        "/group" => {
            let n: usize = rest
                .parse()
                .map_err(|_| usage("/group <n>  (see /groups)"))?;
            let g = nth_group(chat, n)?;
            chat.state().group = Some(g.state.id);
            println!("talking in {}", g.state.name);
        }
        "/groups" => {
            for (i, g) in chat.client.groups()?.iter().enumerate() {
                println!(
                    "{} {} ({} members, {:?})",
                    i + 1,
                    g.state.name,
                    g.state.members.len(),
                    g.status
                );
            }
        }
        "/join" => {
            let n: usize = rest
                .parse()
                .map_err(|_| usage("/join <n>  (see /groups)"))?;
            let g = nth_group(chat, n)?;
            chat.client.accept_group(g.state.id)?;
            chat.state().group = Some(g.state.id);
            println!("joined {}; talking in it", g.state.name);
        }
        "/invite" | "/kick" => {
            let g = chat.state().selected_group()?;
            let addr = chat
                .state()
                .book
                .get(rest)
                .cloned()
                .ok_or_else(|| ExampleError::Usage(format!("no contact {rest:?}")))?;
            if cmd == "/invite" {
                chat.client.add_group_members(g, &[addr])?;
            } else {
                chat.client.remove_group_member(g, &addr)?;
            }
            println!("done");
        }
        "/leave" => {
            let g = chat.state().selected_group()?;
            chat.client.leave_group(g)?;
            chat.state().group = None;
            println!("left the group");
        }
        "/contacts" => {
            let st = chat.state();
            for (name, addr) in st.book.iter() {
                println!("{name} {addr}");
            }
        }
        "/file" => {
            let (path, caption) = rest.split_once(' ').unwrap_or((rest, ""));
            if path.is_empty() {
                return Err(usage("/file <path> [caption]"));
            }
            let (name, to) = chat.state().selected()?;
            println!("encrypting and uploading {path} ...");
            let id = chat
                .client
                .send_file(&to, caption.trim(), std::path::Path::new(path))
                .await?;
            let mut st = chat.state();
            let n = st.sent.len() + 1;
            st.sent.insert(id, n);
            println!("#{n} -> {name}: [file {path}] {}", caption.trim());
        }
        "/get" => {
            let (n, dest) = rest
                .split_once(' ')
                .ok_or_else(|| usage("/get <n> <dest>"))?;
            let n: usize = n.parse().map_err(|_| usage("/get <n> <dest>"))?;
            let (from, att) = chat
                .state()
                .attachments
                .get(n.wrapping_sub(1))
                .cloned()
                .ok_or_else(|| ExampleError::Usage(format!("no attachment {n}")))?;
            let dest = PathBuf::from(dest.trim());
            let bytes = chat.client.download_attachment(&from, &att, &dest).await?;
            println!(
                "saved {} ({bytes} bytes, verified) to {}",
                att.file_name,
                dest.display()
            );
        }
        "/read" => {
            let unread = std::mem::take(&mut chat.state().unread);
            let mut by_peer: BTreeMap<UserAddress, Vec<MessageId>> = BTreeMap::new();
            for (p, id) in unread {
                by_peer.entry(p).or_default().push(id);
            }
            let mut count = 0;
            for (p, ids) in &by_peer {
                chat.client.mark_read(p, ids)?;
                count += ids.len();
            }
            println!("read receipts queued for {count} message(s)");
        }
        "/verify" => {
            let (name, addr) = chat.state().selected()?;
            let number = chat.client.safety_number(&addr);
            let verified = chat.client.is_verified(&addr)?;
            println!(
                "safety number with {name}{}:",
                if verified { " (verified)" } else { "" }
            );
            for l in safety_number_lines(&number) {
                println!("    {l}");
            }
            println!("Compare it with {name} in person or on a call. Type yes if it matches:");
            if confirmed(input).await {
                chat.client.mark_verified(&addr)?;
                println!("{name} is verified");
            } else {
                println!("not marked verified");
            }
        }
        "/link" => {
            println!("Paste the link code the new device shows:");
            let Some(code) = input.recv().await else {
                return Ok(false);
            };
            let mut pending = chat.client.link_device(code.trim()).await?;
            println!("waiting for the new device...");
            let digits = pending.wait_digits(Duration::from_secs(60)).await?;
            println!("digits: {digits}");
            println!(
                "Does the new device show the same six digits? Type yes to certify it as yours:"
            );
            if confirmed(input).await {
                let id = chat.client.confirm_link(pending).await?;
                println!("device {id} linked (confirm on the new device too)");
            } else {
                println!("not linked");
            }
        }
        "/devices" => {
            let list = chat.client.devices().await?;
            for d in &list.devices {
                let me = if d.device_id == chat.client.device_id() {
                    " (this device)"
                } else {
                    ""
                };
                println!("device {}{me}", d.device_id);
            }
        }
        "/unlink" => {
            let id: u32 = rest.parse().map_err(|_| usage("/unlink <device id>"))?;
            chat.client.unlink_device(id).await?;
            println!("device {id} unlinked");
        }
        _ => return Err(ExampleError::Usage(format!("unknown command {cmd}; /help"))),
    }
    Ok(true)
}
