//! Sotto's fuzz targets as plain functions: every decoder that takes bytes
//! from the network or the disk, run on arbitrary input. The cargo-fuzz
//! binaries in `fuzz/targets/` call these (coverage-guided, under
//! `./dev fuzz TARGET SECONDS`), and `tests/corpora.rs` replays every
//! committed corpus entry through them in the ordinary test command, so a
//! crash once found stays fixed.
//!
//! A target must return, whatever the bytes: a panic, a hang or an
//! allocation past the fuzzer's limit is a bug.

use std::sync::OnceLock;

use sotto_messenger::fuzzing as core;
use sotto_relay::frame;
use sotto_relay::ids::{BlobId, EnvelopeId, MailboxId};
use sotto_relay::wire::{client_frame, server_frame};

/// One fuzz target: its name (the corpus directory) and its function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, in the order `./dev fuzz` lists them.
pub const TARGETS: &[Target] = &[
    ("relay_client_frames", relay_client_frames),
    ("relay_server_frames", relay_server_frames),
    ("envelope", core::envelope),
    ("live", core::live),
    ("content", core::content),
    ("part1_message", core::part1_message),
    ("stored_records", core::stored_records),
    ("attachment", core::attachment),
    ("addresses", core::addresses),
    ("bundle", core::bundle),
    ("device_list", core::device_list),
];

/// Valid inputs a target's corpus starts from.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "relay_client_frames" => vec![frame::encode(&frame::client_frame(
            1,
            client_frame::Body::Fetch(sotto_relay::wire::Fetch {
                after: vec![],
                limit: 10,
            }),
        ))],
        "relay_server_frames" => vec![frame::encode(&frame::server_frame(
            1,
            server_frame::Body::QueueEmpty(sotto_relay::wire::QueueEmpty {}),
        ))],
        other => core::seeds(other),
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|_| std::process::abort())
    })
}

/// Frames as a device's stream carries them to the relay: length-prefixed
/// `ClientFrame`s read with the relay's own limit, decoded, and every id in
/// them parsed as the relay parses it.
pub fn relay_client_frames(data: &[u8]) {
    runtime().block_on(async {
        let mut reader = data;
        while let Ok(Some(bytes)) = frame::read_frame(&mut reader, 2 << 20).await {
            let Ok((_, body)) = frame::decode_client(&bytes) else {
                continue;
            };
            use client_frame::Body as B;
            match body {
                B::Send(s) => {
                    let _ = MailboxId::from_slice(&s.recipient);
                }
                B::SendBatch(b) => {
                    for i in &b.items {
                        let _ = MailboxId::from_slice(&i.recipient);
                    }
                }
                B::Fetch(f) if !f.after.is_empty() => {
                    let _ = EnvelopeId::from_slice(&f.after);
                }
                B::Ack(a) => {
                    for id in &a.ids {
                        let _ = EnvelopeId::from_slice(id);
                    }
                }
                B::FetchBundle(f) => {
                    let _ = MailboxId::from_slice(&f.target);
                }
                B::BlobDownload(d) => {
                    let _ = BlobId::from_slice(&d.blob_id);
                }
                _ => {}
            }
        }
    })
}

/// Frames as the relay's replies and pushes reach a device: read with the
/// client's limit and decoded as the client decodes them.
pub fn relay_server_frames(data: &[u8]) {
    runtime().block_on(async {
        let mut reader = data;
        while let Ok(Some(bytes)) =
            frame::read_frame(&mut reader, sotto_relay::client::CLIENT_MAX_FRAME).await
        {
            if let Ok((_, server_frame::Body::FetchOk(f))) = frame::decode_server(&bytes) {
                for e in &f.envelopes {
                    let _ = EnvelopeId::from_slice(&e.id);
                }
            }
        }
    })
}
