//! A FUSE filesystem that can lose power, after Jepsen's LazyFS.
//!
//! A `kill -9` leaves the kernel's page cache alone, so it cannot show that
//! an acknowledged write was really on disk. [`LazyFs`] can: it mounts an
//! in-memory filesystem in which every change stays in a volatile layer
//! until it is made durable the way POSIX says, and
//! [`LazyFs::power_cut`] throws the volatile layer away, leaving exactly
//! what a machine that lost power could find on its disk.
//!
//! # What is durable (deliberately harsher than ext4)
//!
//! - **File contents, size and attributes**: only what the last `fsync` or
//!   `fdatasync` of that file saw (`fdatasync` is treated like `fsync`).
//!   Everything written since is lost at a cut, all of it: no torn or
//!   partial writes (see limitations). `close` makes nothing durable.
//! - **Directory entries** (create, `mkdir`, `unlink`, `rmdir`, `rename`):
//!   only at `fsync` of the directory, which persists its whole entry list
//!   as it then is. An fsynced file whose directory was never fsynced is
//!   gone after a cut (ext4 would usually keep it); a `rename` over an old
//!   file reverts to the old one; an `unlink` comes back. A rename between
//!   two directories needs both fsynced, else the file may show up in both
//!   or in neither.
//! - An entry made durable for a file never fsynced is an **empty** file;
//!   for a directory never fsynced, an empty directory. A new directory is
//!   reachable after a cut only if its parent was fsynced after the
//!   `mkdir` (also for the directory a program creates for its data).
//! - `sync(2)`/`syncfs` do not reach FUSE; [`LazyFs::sync_all`] is their
//!   stand-in (an operator's `sync` after setting a machine up).
//!
//! # What it supports
//!
//! Regular files and directories: open/create/read/write/`pread`/`pwrite`,
//! `truncate`/`ftruncate`, `fallocate` (plain and `FALLOC_FL_KEEP_SIZE`;
//! other modes `EOPNOTSUPP`), rename (with `RENAME_NOREPLACE`), unlink,
//! mkdir/rmdir, readdir, getattr/setattr, fsync, fsyncdir, statfs. File
//! locks (`fcntl`, `flock`) are kept by the kernel. Shared `mmap` works
//! (page-cache mode), which SQLite's WAL index needs. No hard links,
//! symlinks, device nodes or extended attributes.
//!
//! # Limitations
//!
//! - Unsynced writes are lost whole; a real disk may keep any subset of
//!   them, in any order (LazyFS's "torn" faults). Bugs that need such a
//!   partial state are not found here.
//! - All data lives in memory (copy-on-write pages, so an fsync costs a
//!   copy of the page list, not of the data).
//! - Mounting needs `/dev/fuse` and root (or `fusermount3` from Debian's
//!   `fuse3` package for other users). A process must be dead (SIGKILL)
//!   before [`LazyFs::power_cut`]: the unmount refuses a busy mount.

mod fuse;
mod model;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, Session, SessionUnmounter};
use nix::mount::{umount2, MntFlags};

pub use model::Stats;

use crate::fuse::Fs;
use crate::model::Model;

/// A mounted (or, between a cut and a remount, unmounted) LazyFs.
pub struct LazyFs {
    model: Arc<Mutex<Model>>,
    dir: PathBuf,
    mounted: Option<Mounted>,
}

impl std::fmt::Debug for LazyFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyFs")
            .field("dir", &self.dir)
            .field("mounted", &self.mounted.is_some())
            .finish()
    }
}

/// The session thread serving one mount.
struct Mounted {
    unmounter: SessionUnmounter,
    thread: JoinHandle<io::Result<()>>,
}

/// How long an unmount waits for a killed process's files to be released.
const UNMOUNT_PATIENCE: Duration = Duration::from_secs(10);

impl LazyFs {
    /// Mounts an empty LazyFs on the existing directory `dir`.
    pub fn mount(dir: impl AsRef<Path>) -> io::Result<Self> {
        let dir = dir.as_ref().canonicalize()?;
        let mut fs = LazyFs {
            model: Arc::new(Mutex::new(Model::new())),
            dir,
            mounted: None,
        };
        fs.start()?;
        Ok(fs)
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Whether it is mounted now.
    pub fn is_mounted(&self) -> bool {
        self.mounted.is_some()
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counters of fsyncs and cuts so far.
    pub fn stats(&self) -> Stats {
        self.model().stats
    }

    /// Makes everything durable, like `sync(2)` on a real disk.
    pub fn sync_all(&self) {
        self.model().sync_all();
    }

    /// Loses power: everything not yet durable is gone, and the filesystem
    /// is unmounted. Kill (SIGKILL) and reap every process using it first.
    /// Returns how many inodes lost unsynced changes.
    pub fn power_cut(&mut self) -> io::Result<u64> {
        let reverted = {
            let mut m = self.model();
            // From here on the kernel's late writes (a dead process's dirty
            // mmap pages, say) fail instead of landing.
            m.frozen = true;
            m.cut()
        };
        let stopped = self.stop();
        self.model().frozen = false;
        stopped.map(|()| reverted)
    }

    /// Mounts again, on what survived.
    pub fn remount(&mut self) -> io::Result<()> {
        if self.mounted.is_some() {
            return Err(io::Error::other("already mounted"));
        }
        self.start()
    }

    /// [`LazyFs::power_cut`] then [`LazyFs::remount`].
    pub fn power_cut_and_remount(&mut self) -> io::Result<u64> {
        let reverted = self.power_cut()?;
        self.remount()?;
        Ok(reverted)
    }

    /// Unmounts without losing anything volatile (it stays in memory for a
    /// remount, as if the machine had stayed on).
    pub fn unmount(&mut self) -> io::Result<()> {
        self.stop()
    }

    fn start(&mut self) -> io::Result<()> {
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("lazyfs".into()),
            MountOption::Subtype("sotto-powercut".into()),
            MountOption::RW,
            MountOption::NoAtime,
        ];
        config.n_threads = Some(1);
        let fs = Fs {
            model: self.model.clone(),
        };
        let mut session = Session::new(fs, &self.dir, &config).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "mounting LazyFs on {}: {e} (needs /dev/fuse, and root or \
                     fusermount3 from the fuse3 package)",
                    self.dir.display()
                ),
            )
        })?;
        let unmounter = session.unmount_callable();
        let thread = std::thread::Builder::new()
            .name("lazyfs".into())
            .spawn(move || session.run())?;
        self.mounted = Some(Mounted { unmounter, thread });
        Ok(())
    }

    /// Unmounts and waits for the session thread to end.
    fn stop(&mut self) -> io::Result<()> {
        let Some(mut mounted) = self.mounted.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + UNMOUNT_PATIENCE;
        loop {
            match umount2(&self.dir, MntFlags::empty()) {
                Ok(()) => break,
                // A just-killed process's files are released asynchronously.
                Err(nix::errno::Errno::EBUSY) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                // Not root: fusermount3 unmounts for us.
                Err(nix::errno::Errno::EPERM) => {
                    mounted.unmounter.unmount()?;
                    break;
                }
                Err(e) => {
                    // Detach it so nothing new reaches the old state; the
                    // session thread ends when its last user lets go.
                    let _ = umount2(&self.dir, MntFlags::MNT_DETACH);
                    return Err(io::Error::other(format!(
                        "unmounting {}: {e} (is a process still using it? kill it first)",
                        self.dir.display()
                    )));
                }
            }
        }
        match mounted.thread.join() {
            // After the unmount the session's read of /dev/fuse ends with
            // ENODEV, or with ECONNABORTED when the kernel aborted the
            // connection with requests in flight (a killed process's): both
            // are the end we asked for.
            Ok(Err(e)) if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ECONNABORTED)) => {
                Ok(())
            }
            Ok(r) => r,
            Err(_) => Err(io::Error::other("LazyFs session thread panicked")),
        }
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
