//! LazyFs through the kernel: real system calls on a real mount, then a
//! power cut and a remount, and what survived.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use common::Mount;

fn fsync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

fn read(path: &Path) -> Option<Vec<u8>> {
    fs::read(path).ok()
}

#[test]
fn write_without_fsync_is_lost_at_a_power_cut() {
    let mut m = Mount::new();
    let p = m.path().join("wal");
    let mut f = File::create(&p).unwrap();
    f.write_all(b"synced").unwrap();
    f.sync_all().unwrap();
    fsync_dir(m.path());
    f.write_all(b" and not").unwrap();
    drop(f);
    assert_eq!(read(&p).unwrap(), b"synced and not");
    m.cut();
    assert_eq!(read(&p).unwrap(), b"synced");
}

#[test]
fn fdatasync_and_directory_fsync_make_a_new_file_survive() {
    let mut m = Mount::new();
    let p = m.path().join("log");
    let mut f = File::create(&p).unwrap();
    f.write_all(b"record 1\n").unwrap();
    f.sync_data().unwrap();
    fsync_dir(m.path());
    // pwrite past the end, then fdatasync: a hole of zeros, kept.
    f.seek(SeekFrom::Start(20)).unwrap();
    f.write_all(b"record 2\n").unwrap();
    f.sync_data().unwrap();
    drop(f);
    m.cut();
    let mut want = b"record 1\n".to_vec();
    want.resize(20, 0);
    want.extend_from_slice(b"record 2\n");
    assert_eq!(read(&p).unwrap(), want);
}

#[test]
fn fsynced_file_in_an_unsynced_directory_vanishes_at_a_power_cut() {
    let mut m = Mount::new();
    let p = m.path().join("orphan");
    let mut f = File::create(&p).unwrap();
    f.write_all(b"data").unwrap();
    f.sync_all().unwrap();
    drop(f);
    m.cut();
    assert_eq!(read(&p), None);
}

#[test]
fn rename_without_directory_fsync_reverts_at_a_power_cut() {
    let mut m = Mount::new();
    let (cur, tmp) = (m.path().join("CURRENT"), m.path().join("CURRENT.tmp"));
    for (p, text) in [(&cur, "MANIFEST-1"), (&tmp, "MANIFEST-2")] {
        let mut f = File::create(p).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f.sync_all().unwrap();
    }
    fsync_dir(m.path());
    fs::rename(&tmp, &cur).unwrap();
    assert_eq!(read(&cur).unwrap(), b"MANIFEST-2");
    m.cut();
    assert_eq!(read(&cur).unwrap(), b"MANIFEST-1");
    assert_eq!(read(&tmp).unwrap(), b"MANIFEST-2");

    // The same rename with the directory fsynced after it sticks.
    fs::rename(&tmp, &cur).unwrap();
    fsync_dir(m.path());
    m.cut();
    assert_eq!(read(&cur).unwrap(), b"MANIFEST-2");
    assert_eq!(read(&tmp), None);
}

#[test]
fn unlink_and_truncate_without_fsync_are_undone_by_a_power_cut() {
    let mut m = Mount::new();
    let (a, b) = (m.path().join("a"), m.path().join("b"));
    for p in [&a, &b] {
        let mut f = File::create(p).unwrap();
        f.write_all(&[9u8; 50_000]).unwrap();
        f.sync_all().unwrap();
    }
    fsync_dir(m.path());
    fs::remove_file(&a).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&b)
        .unwrap()
        .set_len(3)
        .unwrap();
    assert_eq!(read(&b).unwrap(), vec![9u8; 3]);
    m.cut();
    assert_eq!(read(&a).unwrap(), vec![9u8; 50_000]);
    assert_eq!(read(&b).unwrap(), vec![9u8; 50_000]);
}

#[test]
fn new_directory_needs_its_parent_fsynced() {
    let mut m = Mount::new();
    let d = m.path().join("db");
    fs::create_dir(&d).unwrap();
    let mut f = File::create(d.join("x")).unwrap();
    f.write_all(b"1").unwrap();
    f.sync_all().unwrap();
    drop(f);
    fsync_dir(&d);
    m.cut();
    assert!(!d.exists(), "the mkdir was never made durable");

    fs::create_dir(&d).unwrap();
    let mut f = File::create(d.join("x")).unwrap();
    f.write_all(b"1").unwrap();
    f.sync_all().unwrap();
    drop(f);
    fsync_dir(&d);
    fsync_dir(m.path());
    m.cut();
    assert_eq!(read(&d.join("x")).unwrap(), b"1");
    let names: Vec<_> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["x"]);
}

#[test]
fn file_locks_are_exclusive_on_the_mount() {
    use nix::fcntl::{Flock, FlockArg};
    let m = Mount::new();
    let p = m.path().join("LOCK");
    let first = Flock::lock(File::create(&p).unwrap(), FlockArg::LockExclusiveNonblock).unwrap();
    let again = Flock::lock(File::open(&p).unwrap(), FlockArg::LockExclusiveNonblock);
    assert!(again.is_err(), "a second exclusive lock was granted");
    drop(first);
    assert!(Flock::lock(File::open(&p).unwrap(), FlockArg::LockExclusiveNonblock).is_ok());
}

#[test]
fn unmount_and_remount_without_a_cut_keeps_volatile_data() {
    let mut m = Mount::new();
    let p = m.path().join("f");
    fs::write(&p, b"not synced").unwrap();
    m.fs.unmount().unwrap();
    m.fs.remount().unwrap();
    let mut s = String::new();
    File::open(&p).unwrap().read_to_string(&mut s).unwrap();
    assert_eq!(s, "not synced");
    let stats = m.fs.stats();
    assert_eq!((stats.cuts, stats.fsyncs), (0, 0));
}
