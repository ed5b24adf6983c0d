//! The filesystem model behind the mount: a live tree that every read and
//! write sees, and a durable tree, the only thing a power cut leaves.
//!
//! Durability rules (the harshest reading of POSIX that real file systems
//! are allowed to show; see the crate docs for the list):
//! - a file's contents, size and attributes reach the durable tree only at
//!   `fsync`/`fdatasync` of that file (both persist everything about it);
//! - a directory's entries (create, mkdir, unlink, rmdir, rename in or out)
//!   reach it only at `fsync` of that directory, which persists the whole
//!   entry list as it is at that moment;
//! - an entry made durable for a file never fsynced gives an empty file,
//!   for a directory never fsynced an empty directory.
//!
//! File data lives in copy-on-write pages, so an fsync costs a clone of the
//! page list, not of the bytes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType, INodeNo};

/// Inode number of the root directory.
pub(crate) const ROOT: u64 = 1;
/// Bytes per copy-on-write page.
const PAGE: usize = 16 * 1024;
/// Largest file the model holds (everything lives in memory).
const MAX_FILE: u64 = 1 << 36;

/// A file's bytes: `len`, and pages of which `None` reads as zeros. Bytes of
/// a page past `len` are always zero, so growing a file needs no clearing.
#[derive(Clone, Default)]
pub(crate) struct Data {
    len: u64,
    pages: Vec<Option<Arc<Vec<u8>>>>,
}

fn to_usize(v: u64) -> Result<usize, Errno> {
    usize::try_from(v).map_err(|_| Errno::EFBIG)
}

impl Data {
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Up to `size` bytes from `off` (fewer at the end of the file).
    pub(crate) fn read(&self, off: u64, size: u32) -> Result<Vec<u8>, Errno> {
        if off >= self.len {
            return Ok(Vec::new());
        }
        let end = self.len.min(off.saturating_add(u64::from(size)));
        let mut out = vec![0u8; to_usize(end - off)?];
        let mut pos = to_usize(off)?;
        let end = to_usize(end)?;
        let mut written = 0;
        while pos < end {
            let (p, at) = (pos / PAGE, pos % PAGE);
            let n = (PAGE - at).min(end - pos);
            if let Some(Some(page)) = self.pages.get(p) {
                out[written..written + n].copy_from_slice(&page[at..at + n]);
            }
            pos += n;
            written += n;
        }
        Ok(out)
    }

    /// Writes `buf` at `off`, growing the file (with zeros) as needed.
    pub(crate) fn write(&mut self, off: u64, buf: &[u8]) -> Result<(), Errno> {
        let end = off
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= MAX_FILE)
            .ok_or(Errno::EFBIG)?;
        let mut pos = to_usize(off)?;
        let mut src = buf;
        while !src.is_empty() {
            let (p, at) = (pos / PAGE, pos % PAGE);
            let n = (PAGE - at).min(src.len());
            if self.pages.len() <= p {
                self.pages.resize(p + 1, None);
            }
            let page = self.pages[p].get_or_insert_with(|| Arc::new(vec![0; PAGE]));
            Arc::make_mut(page)[at..at + n].copy_from_slice(&src[..n]);
            src = &src[n..];
            pos += n;
        }
        self.len = self.len.max(end);
        Ok(())
    }

    /// Sets the length; bytes past a shrunk end are cleared.
    pub(crate) fn truncate(&mut self, len: u64) -> Result<(), Errno> {
        if len > MAX_FILE {
            return Err(Errno::EFBIG);
        }
        if len < self.len {
            let l = to_usize(len)?;
            let keep = l.div_ceil(PAGE);
            self.pages.truncate(keep);
            if l % PAGE != 0 {
                if let Some(Some(page)) = self.pages.get_mut(l / PAGE) {
                    Arc::make_mut(page)[l % PAGE..].fill(0);
                }
            }
        }
        self.len = len;
        Ok(())
    }

    /// Same bytes without comparing them: same length and shared pages.
    fn same(&self, other: &Data) -> bool {
        self.len == other.len
            && self.pages.len() == other.pages.len()
            && self
                .pages
                .iter()
                .zip(&other.pages)
                .all(|(a, b)| match (a, b) {
                    (None, None) => true,
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    _ => false,
                })
    }
}

/// What an inode holds.
#[derive(Clone)]
pub(crate) enum Body {
    /// A regular file.
    File(Data),
    /// A directory: name -> inode.
    Dir(BTreeMap<OsString, u64>),
}

/// One inode.
#[derive(Clone)]
pub(crate) struct Node {
    pub(crate) body: Body,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Directory entries naming it in the same tree.
    links: u32,
}

impl Node {
    fn new(body: Body, perm: u16, uid: u32, gid: u32) -> Self {
        let now = SystemTime::now();
        Node {
            body,
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            links: 0,
        }
    }

    /// The same inode with its contents never synced: empty.
    fn skeleton(&self) -> Node {
        let body = match self.body {
            Body::File(_) => Body::File(Data::default()),
            Body::Dir(_) => Body::Dir(BTreeMap::new()),
        };
        Node {
            body,
            ..self.clone()
        }
    }

    fn kind(&self) -> FileType {
        match self.body {
            Body::File(_) => FileType::RegularFile,
            Body::Dir(_) => FileType::Directory,
        }
    }

    fn entries(&self) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match &self.body {
            Body::Dir(e) => Ok(e),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn entries_mut(&mut self) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match &mut self.body {
            Body::Dir(e) => Ok(e),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn data_mut(&mut self) -> Result<&mut Data, Errno> {
        match &mut self.body {
            Body::File(d) => Ok(d),
            Body::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn touch(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }
}

/// Counters of what the model did, for test reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `fsync`/`fdatasync` of files.
    pub fsyncs: u64,
    /// `fsync` of directories.
    pub dir_fsyncs: u64,
    /// Power cuts.
    pub cuts: u64,
    /// Inodes whose unsynced contents or entries a cut threw away, in total.
    pub inodes_reverted: u64,
}

/// A change to one inode's attributes (`setattr`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SetAttr {
    pub(crate) mode: Option<u32>,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    pub(crate) size: Option<u64>,
    pub(crate) atime: Option<SystemTime>,
    pub(crate) mtime: Option<SystemTime>,
}

/// The whole filesystem: live and durable trees.
pub(crate) struct Model {
    live: HashMap<u64, Node>,
    durable: HashMap<u64, Node>,
    /// Open handles per live file inode (an unlinked file lives while open).
    open: HashMap<u64, u32>,
    /// Directory listings taken at `opendir`, by handle.
    listings: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    next_ino: u64,
    next_fh: u64,
    /// Between a power cut and the unmount: every request fails.
    pub(crate) frozen: bool,
    pub(crate) stats: Stats,
}

impl Model {
    /// An empty filesystem whose root directory is already durable.
    pub(crate) fn new() -> Self {
        let mut root = Node::new(Body::Dir(BTreeMap::new()), 0o755, 0, 0);
        root.links = 1;
        let live = HashMap::from([(ROOT, root.clone())]);
        Model {
            durable: live.clone(),
            live,
            open: HashMap::new(),
            listings: HashMap::new(),
            next_ino: ROOT + 1,
            next_fh: 1,
            frozen: false,
            stats: Stats::default(),
        }
    }

    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.live.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.live.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    /// The kernel's view of an inode.
    pub(crate) fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let n = self.node(ino)?;
        let (size, nlink) = match &n.body {
            Body::File(d) => (d.len(), n.links),
            Body::Dir(_) => (4096, n.links + 1),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.ctime,
            crtime: n.ctime,
            kind: n.kind(),
            perm: n.perm,
            nlink,
            uid: n.uid,
            gid: n.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    pub(crate) fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.node(parent)?
            .entries()?
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    fn check_name(name: &OsStr) -> Result<(), Errno> {
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        if name.is_empty() || name == "." || name == ".." {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    /// Adds a new inode under `parent/name` (live only).
    fn insert(&mut self, parent: u64, name: &OsStr, mut node: Node) -> Result<u64, Errno> {
        Self::check_name(name)?;
        if self.node(parent)?.entries()?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        node.links = 1;
        self.live.insert(ino, node);
        let p = self.node_mut(parent)?;
        p.entries_mut()?.insert(name.to_owned(), ino);
        p.touch();
        Ok(ino)
    }

    pub(crate) fn mkdir(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<u64, Errno> {
        let node = Node::new(Body::Dir(BTreeMap::new()), perm(mode), uid, gid);
        self.insert(parent, name, node)
    }

    /// Creates a regular file; with `exclusive` an existing one is `EEXIST`,
    /// otherwise it is returned as is.
    pub(crate) fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
        exclusive: bool,
    ) -> Result<u64, Errno> {
        match self.lookup(parent, name) {
            Ok(ino) if !exclusive => match self.node(ino)?.body {
                Body::File(_) => Ok(ino),
                Body::Dir(_) => Err(Errno::EISDIR),
            },
            Ok(_) => Err(Errno::EEXIST),
            Err(_) => {
                let node = Node::new(Body::File(Data::default()), perm(mode), uid, gid);
                self.insert(parent, name, node)
            }
        }
    }

    /// Drops one link of `ino`; frees a file nobody names or holds open.
    fn unlinked(&mut self, ino: u64) {
        let free = match self.live.get_mut(&ino) {
            Some(n) => {
                n.links = n.links.saturating_sub(1);
                n.ctime = SystemTime::now();
                n.links == 0 && self.open.get(&ino).copied().unwrap_or(0) == 0
            }
            None => false,
        };
        if free {
            self.live.remove(&ino);
        }
    }

    pub(crate) fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        if matches!(self.node(ino)?.body, Body::Dir(_)) {
            return Err(Errno::EISDIR);
        }
        let p = self.node_mut(parent)?;
        p.entries_mut()?.remove(name);
        p.touch();
        self.unlinked(ino);
        Ok(())
    }

    pub(crate) fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        if !self.node(ino)?.entries()?.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        let p = self.node_mut(parent)?;
        p.entries_mut()?.remove(name);
        p.touch();
        self.unlinked(ino);
        Ok(())
    }

    /// `rename(2)`, replacing an existing target (a file by a file, an empty
    /// directory by a directory); `noreplace` refuses an existing target.
    pub(crate) fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        noreplace: bool,
    ) -> Result<(), Errno> {
        Self::check_name(newname)?;
        let ino = self.lookup(parent, name)?;
        self.node(newparent)?.entries()?;
        let moving_dir = matches!(self.node(ino)?.body, Body::Dir(_));
        if moving_dir && (ino == newparent || self.is_ancestor(ino, newparent)) {
            return Err(Errno::EINVAL);
        }
        let replaced = match self.lookup(newparent, newname) {
            Ok(old) if old == ino => return Ok(()),
            Ok(_) if noreplace => return Err(Errno::EEXIST),
            Ok(old) => {
                match (&self.node(old)?.body, moving_dir) {
                    (Body::Dir(e), true) if !e.is_empty() => return Err(Errno::ENOTEMPTY),
                    (Body::Dir(_), false) => return Err(Errno::EISDIR),
                    (Body::File(_), true) => return Err(Errno::ENOTDIR),
                    _ => {}
                }
                Some(old)
            }
            Err(_) => None,
        };
        let p = self.node_mut(parent)?;
        p.entries_mut()?.remove(name);
        p.touch();
        let np = self.node_mut(newparent)?;
        np.entries_mut()?.insert(newname.to_owned(), ino);
        np.touch();
        if let Some(old) = replaced {
            self.unlinked(old);
        }
        if let Ok(n) = self.node_mut(ino) {
            n.ctime = SystemTime::now();
        }
        Ok(())
    }

    /// Whether directory `dir` contains `target` at any depth.
    fn is_ancestor(&self, dir: u64, target: u64) -> bool {
        let mut stack = vec![dir];
        let mut seen = HashSet::new();
        while let Some(d) = stack.pop() {
            if !seen.insert(d) {
                continue;
            }
            if let Some(Node {
                body: Body::Dir(e), ..
            }) = self.live.get(&d)
            {
                for &c in e.values() {
                    if c == target {
                        return true;
                    }
                    stack.push(c);
                }
            }
        }
        false
    }

    /// Opens a file; returns a handle.
    pub(crate) fn open(&mut self, ino: u64) -> Result<u64, Errno> {
        if matches!(self.node(ino)?.body, Body::Dir(_)) {
            return Err(Errno::EISDIR);
        }
        *self.open.entry(ino).or_insert(0) += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        Ok(fh)
    }

    /// Closes a file handle; frees the file if it was unlinked.
    pub(crate) fn release(&mut self, ino: u64) {
        let left = match self.open.get_mut(&ino) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => return,
        };
        if left == 0 {
            self.open.remove(&ino);
            if self.live.get(&ino).is_some_and(|n| n.links == 0) {
                self.live.remove(&ino);
            }
        }
    }

    pub(crate) fn read(&self, ino: u64, off: u64, size: u32) -> Result<Vec<u8>, Errno> {
        match &self.node(ino)?.body {
            Body::File(d) => d.read(off, size),
            Body::Dir(_) => Err(Errno::EISDIR),
        }
    }

    pub(crate) fn write(&mut self, ino: u64, off: u64, buf: &[u8]) -> Result<(), Errno> {
        let n = self.node_mut(ino)?;
        n.data_mut()?.write(off, buf)?;
        n.touch();
        Ok(())
    }

    pub(crate) fn setattr(&mut self, ino: u64, a: SetAttr) -> Result<(), Errno> {
        let n = self.node_mut(ino)?;
        if let Some(size) = a.size {
            n.data_mut()?.truncate(size)?;
            n.touch();
        }
        if let Some(mode) = a.mode {
            n.perm = perm(mode);
        }
        if let Some(uid) = a.uid {
            n.uid = uid;
        }
        if let Some(gid) = a.gid {
            n.gid = gid;
        }
        if let Some(t) = a.atime {
            n.atime = t;
        }
        if let Some(t) = a.mtime {
            n.mtime = t;
        }
        n.ctime = SystemTime::now();
        Ok(())
    }

    /// `fallocate(2)`: plain allocation (may grow the file) and
    /// `FALLOC_FL_KEEP_SIZE` (no effect here); anything else `EOPNOTSUPP`.
    pub(crate) fn fallocate(
        &mut self,
        ino: u64,
        off: u64,
        len: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        let n = self.node_mut(ino)?;
        let d = n.data_mut()?;
        match mode {
            0 => {
                let end = off.checked_add(len).ok_or(Errno::EFBIG)?;
                if end > d.len() {
                    d.truncate(end)?;
                    n.touch();
                }
                Ok(())
            }
            libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    /// Entries of a directory, `.` and `..` first, for a handle.
    pub(crate) fn opendir(&mut self, ino: u64) -> Result<u64, Errno> {
        let entries = self.node(ino)?.entries()?;
        let mut list = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (ino, FileType::Directory, OsString::from("..")),
        ];
        for (name, &child) in entries {
            if let Some(c) = self.live.get(&child) {
                list.push((child, c.kind(), name.clone()));
            }
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        self.listings.insert(fh, list);
        Ok(fh)
    }

    pub(crate) fn listing(&self, fh: u64) -> Option<&[(u64, FileType, OsString)]> {
        self.listings.get(&fh).map(Vec::as_slice)
    }

    pub(crate) fn releasedir(&mut self, fh: u64) {
        self.listings.remove(&fh);
    }

    /// `fsync`/`fdatasync` of a file: its contents and attributes become
    /// durable (its name does not: that is the directory's fsync).
    pub(crate) fn fsync(&mut self, ino: u64) -> Result<(), Errno> {
        let n = self.node(ino)?;
        if matches!(n.body, Body::Dir(_)) {
            return self.fsyncdir(ino);
        }
        self.durable.insert(ino, n.clone());
        self.stats.fsyncs += 1;
        Ok(())
    }

    /// `fsync` of a directory: its whole entry list becomes durable; entries
    /// naming inodes with nothing durable yet get empty ones.
    pub(crate) fn fsyncdir(&mut self, ino: u64) -> Result<(), Errno> {
        let n = self.node(ino)?.clone();
        let children: Vec<u64> = n.entries()?.values().copied().collect();
        for c in children {
            if !self.durable.contains_key(&c) {
                if let Some(child) = self.live.get(&c) {
                    self.durable.insert(c, child.skeleton());
                }
            }
        }
        self.durable.insert(ino, n);
        self.stats.dir_fsyncs += 1;
        self.collect_durable();
        Ok(())
    }

    /// Forgets durable inodes that no durable directory names and that no
    /// longer exist live (nothing can ever make them reachable again).
    fn collect_durable(&mut self) {
        let reachable = reachable(&self.durable);
        let live = &self.live;
        self.durable
            .retain(|ino, _| reachable.contains(ino) || live.contains_key(ino));
    }

    /// `sync(2)`: everything live becomes durable.
    pub(crate) fn sync_all(&mut self) {
        self.durable = self.live.clone();
        self.collect_durable();
    }

    /// The power cut: the live tree becomes the durable tree, every handle is
    /// gone. Returns how many inodes lost unsynced changes.
    pub(crate) fn cut(&mut self) -> u64 {
        let reachable = reachable(&self.durable);
        self.durable.retain(|ino, _| reachable.contains(ino));
        let mut reverted = 0;
        for (ino, now) in &self.live {
            let changed = match (self.durable.get(ino), &now.body) {
                (None, _) => true,
                (
                    Some(Node {
                        body: Body::File(a),
                        ..
                    }),
                    Body::File(b),
                ) => !a.same(b),
                (
                    Some(Node {
                        body: Body::Dir(a), ..
                    }),
                    Body::Dir(b),
                ) => a != b,
                _ => true,
            };
            reverted += u64::from(changed);
        }
        let mut live = self.durable.clone();
        for n in live.values_mut() {
            n.links = 0;
        }
        let children: Vec<u64> = live
            .values()
            .filter_map(|n| n.entries().ok())
            .flat_map(|e| e.values().copied())
            .collect();
        for c in children {
            if let Some(n) = live.get_mut(&c) {
                n.links += 1;
            }
        }
        if let Some(root) = live.get_mut(&ROOT) {
            root.links = 1;
        }
        self.live = live;
        self.open.clear();
        self.listings.clear();
        self.stats.cuts += 1;
        self.stats.inodes_reverted += reverted;
        reverted
    }

    /// Bytes held in the live tree's files (statfs).
    pub(crate) fn used_bytes(&self) -> u64 {
        self.live
            .values()
            .map(|n| match &n.body {
                Body::File(d) => d.len(),
                Body::Dir(_) => 0,
            })
            .sum()
    }

    /// Live inodes (statfs).
    pub(crate) fn inodes(&self) -> u64 {
        self.live.len() as u64
    }
}

/// Inodes reachable from the root of `tree`.
fn reachable(tree: &HashMap<u64, Node>) -> HashSet<u64> {
    let mut seen = HashSet::new();
    let mut stack = vec![ROOT];
    while let Some(ino) = stack.pop() {
        if !seen.insert(ino) {
            continue;
        }
        if let Some(Node {
            body: Body::Dir(e), ..
        }) = tree.get(&ino)
        {
            stack.extend(e.values().copied());
        }
    }
    seen
}

/// Permission bits of a `mode`.
fn perm(mode: u32) -> u16 {
    (mode & 0o7777) as u16
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn file(m: &mut Model, parent: u64, n: &str, bytes: &[u8]) -> u64 {
        let ino = m.create(parent, name(n), 0o644, 0, 0, true).unwrap();
        m.write(ino, 0, bytes).unwrap();
        ino
    }

    fn contents(m: &Model, parent: u64, n: &str) -> Option<Vec<u8>> {
        let ino = m.lookup(parent, name(n)).ok()?;
        Some(m.read(ino, 0, u32::MAX).unwrap())
    }

    #[test]
    fn write_without_fsync_is_lost_at_a_cut() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "a", b"first");
        m.fsync(f).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.write(f, 5, b" second").unwrap();
        assert_eq!(contents(&m, ROOT, "a").unwrap(), b"first second");
        assert_eq!(m.cut(), 1);
        assert_eq!(contents(&m, ROOT, "a").unwrap(), b"first");
    }

    #[test]
    fn write_and_fsync_survive_a_cut() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "a", b"data");
        m.fsyncdir(ROOT).unwrap();
        m.fsync(f).unwrap();
        assert_eq!(m.cut(), 0);
        assert_eq!(contents(&m, ROOT, "a").unwrap(), b"data");
    }

    #[test]
    fn fsynced_file_without_directory_fsync_vanishes_at_a_cut() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "a", b"data");
        m.fsync(f).unwrap();
        m.cut();
        assert_eq!(contents(&m, ROOT, "a"), None);
    }

    #[test]
    fn directory_fsync_alone_leaves_an_empty_file() {
        let mut m = Model::new();
        file(&mut m, ROOT, "a", b"data");
        m.fsyncdir(ROOT).unwrap();
        m.cut();
        assert_eq!(contents(&m, ROOT, "a").unwrap(), b"");
    }

    #[test]
    fn rename_without_directory_fsync_reverts_at_a_cut() {
        let mut m = Model::new();
        let old = file(&mut m, ROOT, "CURRENT", b"old");
        m.fsync(old).unwrap();
        let new = file(&mut m, ROOT, "CURRENT.tmp", b"new");
        m.fsync(new).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.rename(ROOT, name("CURRENT.tmp"), ROOT, name("CURRENT"), false)
            .unwrap();
        assert_eq!(contents(&m, ROOT, "CURRENT").unwrap(), b"new");
        m.cut();
        assert_eq!(contents(&m, ROOT, "CURRENT").unwrap(), b"old");
        assert_eq!(contents(&m, ROOT, "CURRENT.tmp").unwrap(), b"new");
    }

    #[test]
    fn rename_with_directory_fsync_survives_a_cut() {
        let mut m = Model::new();
        let old = file(&mut m, ROOT, "CURRENT", b"old");
        m.fsync(old).unwrap();
        let new = file(&mut m, ROOT, "CURRENT.tmp", b"new");
        m.fsync(new).unwrap();
        m.rename(ROOT, name("CURRENT.tmp"), ROOT, name("CURRENT"), false)
            .unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.cut();
        assert_eq!(contents(&m, ROOT, "CURRENT").unwrap(), b"new");
        assert_eq!(contents(&m, ROOT, "CURRENT.tmp"), None);
        // The replaced inode is gone from both trees.
        assert!(!m.durable.contains_key(&old) && !m.live.contains_key(&old));
    }

    #[test]
    fn unlink_without_directory_fsync_comes_back_at_a_cut() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "a", b"data");
        m.fsync(f).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.unlink(ROOT, name("a")).unwrap();
        assert_eq!(contents(&m, ROOT, "a"), None);
        m.cut();
        assert_eq!(contents(&m, ROOT, "a").unwrap(), b"data");
    }

    #[test]
    fn unlinked_open_file_lives_until_closed() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "a", b"data");
        m.open(f).unwrap();
        m.unlink(ROOT, name("a")).unwrap();
        assert_eq!(m.read(f, 0, 10).unwrap(), b"data");
        m.release(f);
        assert!(m.read(f, 0, 10).is_err());
    }

    #[test]
    fn truncate_without_fsync_is_undone_and_regrowth_reads_zeros() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "a", &[7u8; 40_000]);
        m.fsync(f).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.setattr(
            f,
            SetAttr {
                size: Some(10),
                ..SetAttr::default()
            },
        )
        .unwrap();
        m.setattr(
            f,
            SetAttr {
                size: Some(20),
                ..SetAttr::default()
            },
        )
        .unwrap();
        let mut want = vec![7u8; 10];
        want.extend([0u8; 10]);
        assert_eq!(m.read(f, 0, 100).unwrap(), want);
        m.cut();
        assert_eq!(m.read(f, 0, 100_000).unwrap(), vec![7u8; 40_000]);
    }

    #[test]
    fn new_directory_needs_its_parent_fsynced_and_its_own() {
        let mut m = Model::new();
        let d = m.mkdir(ROOT, name("db"), 0o755, 0, 0).unwrap();
        let f = file(&mut m, d, "x", b"1");
        m.fsync(f).unwrap();
        m.fsyncdir(d).unwrap();
        m.cut();
        assert!(m.lookup(ROOT, name("db")).is_err(), "parent never synced");

        let d = m.mkdir(ROOT, name("db"), 0o755, 0, 0).unwrap();
        let f = file(&mut m, d, "x", b"1");
        m.fsync(f).unwrap();
        m.fsyncdir(d).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.cut();
        let d = m.lookup(ROOT, name("db")).unwrap();
        assert_eq!(contents(&m, d, "x").unwrap(), b"1");
    }

    #[test]
    fn sparse_writes_and_reads_across_pages() {
        let mut d = Data::default();
        d.write(3 * PAGE as u64 - 2, b"abcd").unwrap();
        assert_eq!(d.len(), 3 * PAGE as u64 + 2);
        assert_eq!(d.read(0, 4).unwrap(), vec![0; 4]);
        assert_eq!(d.read(3 * PAGE as u64 - 2, 100).unwrap(), b"abcd");
        let snapshot = d.clone();
        d.write(3 * PAGE as u64, b"XY").unwrap();
        assert_eq!(snapshot.read(3 * PAGE as u64, 2).unwrap(), b"cd");
        assert!(!snapshot.same(&d));
    }

    #[test]
    fn sync_all_makes_everything_durable() {
        let mut m = Model::new();
        let d = m.mkdir(ROOT, name("d"), 0o755, 0, 0).unwrap();
        file(&mut m, d, "f", b"kept");
        m.sync_all();
        assert_eq!(m.cut(), 0);
        let d = m.lookup(ROOT, name("d")).unwrap();
        assert_eq!(contents(&m, d, "f").unwrap(), b"kept");
    }
}
