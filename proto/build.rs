//! Compiles every `.proto` file under `proto/` with protox (pure Rust, so no
//! system `protoc` is needed) and generates prost types into `OUT_DIR`.

use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

/// Keep in sync with `src/redacted.rs` (the build fails if one lacks a `Debug`).
const REDACTED: &[&str] = &[
    "sotto.store.v1.IdentityRecord",
    "sotto.store.v1.SignedPrekeyRecord",
    "sotto.store.v1.KemPrekeyRecord",
    "sotto.store.v1.OneTimePrekeyRecord",
    "sotto.store.v1.SessionRecord",
    "sotto.store.v1.SendingChain",
    "sotto.store.v1.ReceivingChain",
    "sotto.store.v1.SkippedKeyRecord",
    "sotto.client.v1.ClientConfig",
    "sotto.client.v1.Content",
    "sotto.client.v1.Message",
    "sotto.client.v1.AttachmentRef",
    "sotto.client.v1.SentSync",
    "sotto.client.v1.OutboxItem",
    "sotto.client.v1.SentLogEntry",
    "sotto.client.v1.ClientEvent",
    "sotto.client.v1.LinkGrantBody",
    "sotto.relay.v1.Send",
    "sotto.session.v1.SenderKeyRecord",
    "sotto.session.v1.SkippedSenderKey",
    "sotto.client.v1.SenderKeyDistribution",
    "sotto.client.v1.OwnSenderKey",
    "sotto.client.v1.ReceivedSenderKeys",
    "sotto.client.v1.PendingSenderKey",
    "sotto.client.v1.GroupState",
    "sotto.client.v1.GroupRecord",
    "sotto.client.v1.GroupUpdate",
    "sotto.client.v1.GroupSync",
    "sotto.client.v1.GroupEvent",
    "sotto.client.v1.GroupChange",
    "sotto.client.v1.GroupAction",
    "sotto.client.v1.Fragment",
    "sotto.client.v1.GroupHead",
    "sotto.client.v1.GroupAvatar",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from("proto");
    let mut files = Vec::new();
    collect(&root, &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(&files, [&root])?;
    let mut config = prost_build::Config::new();
    // `bytes` fields as `Vec<u8>`: callers zeroize and move them freely.
    // Messages that hold secret keys or plaintext get a redacted `Debug`
    // (src/redacted.rs) instead of prost's, which would print every byte.
    config.skip_debug(REDACTED.iter().map(|m| format!(".{m}")));
    config.compile_fds(descriptors)?;
    Ok(())
}
