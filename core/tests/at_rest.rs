//! What someone holding the database file finds: no deleted message key in
//! the file or its WAL, and a restored older copy refused instead of
//! re-using message keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rand_core::{OsRng, RngCore};
use sotto_core::store::sqlite::CHECKPOINT_EVERY;
use sotto_core::{Error, SqliteStore, StorageKey, Store, Table, Txn};

fn key() -> StorageKey {
    StorageKey::new([0x42; 32])
}

/// Every file of the database (main file, WAL, shared memory), concatenated.
fn raw_files(path: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let p = format!("{}{suffix}", path.display());
        if let Ok(b) = std::fs::read(&p) {
            out.extend_from_slice(&b);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn deleted_message_keys_survive_neither_in_the_file_nor_in_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.db");
    let mut store = SqliteStore::open(&path, &key()).unwrap();
    // 300 "skipped message keys", written over several commits.
    for batch in 0..10u32 {
        store
            .transaction(|tx| {
                for i in 0..30u32 {
                    let mut k = [0u8; 32];
                    OsRng.fill_bytes(&mut k);
                    tx.put(Table::SkippedKey, &(batch * 30 + i).to_be_bytes(), &k)?;
                }
                Ok::<_, sotto_core::Error>(())
            })
            .unwrap();
    }
    // What an attacker could look for: each stored row's random 24-byte
    // nonce, which starts its sealed value.
    let raw = rusqlite::Connection::open(&path).unwrap();
    let mut stmt = raw.prepare("SELECT v FROM rows WHERE t = 8").unwrap();
    let sealed: Vec<Vec<u8>> = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|v| v.unwrap()[..24].to_vec())
        .collect();
    drop(stmt);
    drop(raw);
    assert_eq!(sealed.len(), 300);
    assert!(sealed.iter().all(|n| contains(&raw_files(&path), n)));
    // The keys are used: deleted. Some ordinary commits follow.
    store
        .transaction(|tx| tx.delete_range(Table::SkippedKey, &[0; 4], &[0xFF; 4]))
        .unwrap();
    for i in 0..CHECKPOINT_EVERY {
        store
            .transaction(|tx| tx.put(Table::App, b"tick", &i.to_be_bytes()))
            .unwrap();
    }
    let files = raw_files(&path);
    let left = sealed.iter().filter(|n| contains(&files, n)).count();
    assert_eq!(left, 0, "{left} deleted rows still readable on disk");
}

#[test]
fn a_restored_older_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.db");
    let backup = dir.path().join("backup.db");
    let first = SqliteStore::open_checked(&path, &key(), 0).unwrap();
    let g1 = first.generation();
    drop(first);
    std::fs::copy(&path, &backup).unwrap();
    let second = SqliteStore::open_checked(&path, &key(), g1).unwrap();
    let g2 = second.generation();
    assert!(g2 > g1);
    drop(second);
    // The backup comes back in place of the newer file.
    std::fs::copy(&backup, &path).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    match SqliteStore::open_checked(&path, &key(), g2) {
        Err(Error::StoreRolledBack { found, expected }) => {
            assert_eq!((found, expected), (g1, g2));
        }
        other => panic!("expected StoreRolledBack, got {other:?}"),
    }
    // The app that saved one value too few (a crash right after an open)
    // still gets in.
    assert!(SqliteStore::open_checked(&path, &key(), g1).is_ok());
}
