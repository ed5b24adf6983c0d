//! The terminal chat's data directory: everything `sotto-chat` keeps between
//! runs, next to the client's encrypted store.
//!
//! - `storage.key`: the 32-byte key that encrypts every row of the store,
//!   created with mode 0600 and refused if others can read it. A real app
//!   keeps this key in the platform keystore (Android Keystore, iOS
//!   Keychain, a desktop secret service), never in a file beside the data;
//!   a file is what a portable terminal example can do.
//! - `client.db`: the client's SQLite store (identity, sessions, outbox,
//!   events), rows encrypted with the storage key.
//! - `registered`: written once registration or linking finished, so a run
//!   interrupted half-way starts over instead of opening a device that no
//!   relay knows.
//! - `contacts.txt`: the address book, `name address` per line (public data).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};
use sotto_core::{SqliteStore, StorageKey};
use sotto_messenger::UserAddress;
use zeroize::Zeroizing;

use crate::{ExampleError, Result};

const KEY_FILE: &str = "storage.key";
const DB_FILE: &str = "client.db";
const REGISTERED: &str = "registered";
const CONTACTS: &str = "contacts.txt";

/// A chat data directory.
#[derive(Debug, Clone)]
pub struct Profile {
    dir: PathBuf,
}

impl Profile {
    /// Uses `dir`, creating it (mode 0700) if needed.
    pub fn new(dir: &Path) -> Result<Self> {
        if !dir.exists() {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            b.create(dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(Profile {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The storage key: read from `storage.key`, or created there (0600).
    pub fn storage_key(&self) -> Result<StorageKey> {
        let path = self.dir.join(KEY_FILE);
        let mut key = Zeroizing::new([0u8; 32]);
        match std::fs::File::open(&path) {
            Ok(mut f) => {
                check_private(&f, &path)?;
                let len = f.metadata()?.len();
                if len != 32 {
                    return Err(ExampleError::Profile(format!(
                        "{} is {len} bytes, not 32",
                        path.display()
                    )));
                }
                f.read_exact(key.as_mut())?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                OsRng.fill_bytes(key.as_mut());
                let mut o = std::fs::OpenOptions::new();
                o.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
                let mut f = o.open(&path)?;
                f.write_all(key.as_ref())?;
                f.sync_all()?;
                sync_dir(&self.dir)?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(StorageKey::new(*key))
    }

    /// Opens (or creates) the encrypted store.
    pub fn store(&self) -> Result<SqliteStore> {
        let key = self.storage_key()?;
        Ok(SqliteStore::open(self.dir.join(DB_FILE), &key)?)
    }

    /// True once this directory holds a registered or linked device.
    pub fn is_registered(&self) -> bool {
        self.dir.join(REGISTERED).exists()
    }

    /// Records that registration or linking finished.
    pub fn mark_registered(&self) -> Result<()> {
        // Durable, entry included: a marker lost to a power cut would make
        // the next start discard a registered device's store.
        let mut f = std::fs::File::create(self.dir.join(REGISTERED))?;
        f.write_all(b"1\n")?;
        f.sync_all()?;
        sync_dir(&self.dir)
    }

    /// Removes the store of a registration or link that did not finish
    /// (nobody can have written to a device no relay lists).
    pub fn discard_unregistered(&self) -> Result<()> {
        if self.is_registered() {
            return Err(ExampleError::Profile(
                "refusing to discard a registered device".into(),
            ));
        }
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(DB_FILE) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// The address book.
    pub fn contacts(&self) -> Result<AddressBook> {
        AddressBook::load(self.dir.join(CONTACTS))
    }
}

/// Makes a directory's entries (files created or renamed in it) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(unix)]
fn check_private(f: &std::fs::File, path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = f.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(ExampleError::Profile(format!(
            "{} is accessible by other users (mode {:o}); run chmod 600 on it",
            path.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &std::fs::File, _: &Path) -> Result<()> {
    Ok(())
}

/// Names for addresses, kept in a text file.
#[derive(Debug, Clone)]
pub struct AddressBook {
    path: PathBuf,
    entries: BTreeMap<String, UserAddress>,
}

impl AddressBook {
    /// Reads `path` (an absent file is an empty book).
    pub fn load(path: PathBuf) -> Result<Self> {
        let mut entries = BTreeMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for (i, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let bad = || ExampleError::Profile(format!("{}:{}", path.display(), i + 1));
                    let (name, addr) = line.split_once(' ').ok_or_else(bad)?;
                    let addr: UserAddress = addr.trim().parse().map_err(|_| bad())?;
                    entries.insert(name.to_string(), addr);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(AddressBook { path, entries })
    }

    /// Adds or replaces `name`, and saves the book (temp file + rename).
    pub fn add(&mut self, name: &str, addr: UserAddress) -> Result<()> {
        if name.is_empty() || name.contains(char::is_whitespace) || name.starts_with('#') {
            return Err(ExampleError::Profile(format!("bad contact name {name:?}")));
        }
        self.entries.insert(name.to_string(), addr);
        let text: String = self
            .entries
            .iter()
            .map(|(n, a)| format!("{n} {a}\n"))
            .collect();
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }

    /// The address named `name`.
    pub fn get(&self, name: &str) -> Option<&UserAddress> {
        self.entries.get(name)
    }

    /// The name given to the user `addr` (same identity key, whatever relay).
    pub fn name_of(&self, addr: &UserAddress) -> Option<&str> {
        self.entries
            .iter()
            .find(|(_, a)| a.user == addr.user)
            .map(|(n, _)| n.as_str())
    }

    /// All entries, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &UserAddress)> {
        self.entries.iter().map(|(n, a)| (n.as_str(), a))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sotto_messenger::RelayAddress;

    #[test]
    fn key_file_is_private_stable_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Profile::new(&tmp.path().join("chat")).unwrap();
        p.storage_key().unwrap();
        let path = p.dir().join(KEY_FILE);
        let first = std::fs::read(&path).unwrap();
        assert_eq!(first.len(), 32);
        p.storage_key().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), first, "key must not change");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(p.storage_key(), Err(ExampleError::Profile(_))));
        }
    }

    #[test]
    fn address_book_round_trips_and_rejects_garbage() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Profile::new(tmp.path()).unwrap();
        let relay = RelayAddress::new("127.0.0.1:4433".parse().unwrap(), [7; 32]);
        let bob = UserAddress {
            user: [0xb0; 32],
            relay,
        };
        let mut book = p.contacts().unwrap();
        book.add("bob", bob.clone()).unwrap();
        assert!(book.add("two words", bob.clone()).is_err());
        let again = p.contacts().unwrap();
        assert_eq!(again.get("bob"), Some(&bob));
        assert_eq!(again.name_of(&bob), Some("bob"));
        std::fs::write(p.dir().join(CONTACTS), "bob not-an-address\n").unwrap();
        assert!(p.contacts().is_err());
    }

    #[test]
    fn unfinished_registration_is_discarded_but_a_finished_one_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Profile::new(tmp.path()).unwrap();
        drop(p.store().unwrap());
        assert!(p.dir().join(DB_FILE).exists());
        p.discard_unregistered().unwrap();
        assert!(!p.dir().join(DB_FILE).exists());
        drop(p.store().unwrap());
        p.mark_registered().unwrap();
        assert!(p.discard_unregistered().is_err());
        assert!(p.dir().join(DB_FILE).exists());
    }
}
