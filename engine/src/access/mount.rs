//! `dedisk mount`: every snapshot as a read-only FUSE filesystem.
//!
//! ```text
//! MOUNTPOINT/VM/2026-11-22T072241Z_3fa2c1d0/vda.raw   the whole disk
//!                                          /vda.p1    its partitions, at their offsets
//!                                          /web01.xml metadata kept with the snapshot
//!           /VM/latest -> 2026-11-22T072241Z_3fa2c1d0
//! ```
//!
//! The tree is built from the snapshot list at mount time and refreshed (at most every
//! few seconds) when a VM directory or the root is looked at, so backups that finish
//! while mounted appear. A snapshot directory is filled on first use: finding partitions
//! reads the disk's first sectors. Each open file has its own [`DiskReader`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
    Request,
};
use repo_format::lock::SharedLock;
use repo_format::{ManifestRoot, Repository, Snapshot, SnapshotId};

use super::partitions;
use crate::read::DiskReader;

const ROOT: u64 = 1;
/// Snapshot contents never change; directories above them do.
const TTL_FIXED: Duration = Duration::from_secs(3600);
const TTL_LIVE: Duration = Duration::from_secs(1);
const REFRESH_EVERY: Duration = Duration::from_secs(2);
const EIO: i32 = libc::EIO;
const ENOENT: i32 = libc::ENOENT;

/// Which snapshots to show.
#[derive(Clone, Debug, Default)]
pub struct MountFilter {
    pub name: Option<String>,
    pub snapshot: Option<SnapshotId>,
}

enum Kind {
    Dir {
        children: BTreeMap<String, u64>,
        /// A snapshot directory not filled yet.
        pending: Option<Box<Snapshot>>,
    },
    File {
        manifest: ManifestRoot,
        offset: u64,
        len: u64,
        /// Bytes held in chunks (not holes), when known: `stat` reports them as the
        /// file's blocks, so `cp` and `tar` see a sparse file and ask for its holes.
        data_bytes: Option<u64>,
    },
    Link {
        target: String,
    },
}

struct Inode {
    parent: u64,
    kind: Kind,
    mtime: SystemTime,
}

/// The filesystem (see the module docs).
pub struct SnapshotFs {
    repo: Arc<Repository>,
    /// Held while mounted: a prune must not delete packs the kernel is reading.
    _lock: SharedLock,
    filter: MountFilter,
    nodes: Vec<Inode>,
    shown: HashMap<SnapshotId, u64>,
    /// Open files: handle -> (reader, offset of the file in its disk, length).
    open: HashMap<u64, (DiskReader, u64, u64)>,
    next_fh: u64,
    last_refresh: Option<Instant>,
    uid: u32,
    gid: u32,
}

/// `2026-11-22T072241Z_3fa2c1d0`: sorts by time, no ':' to trip up shells and scp.
pub fn snapshot_dir_name(id: &SnapshotId, snap: &Snapshot) -> String {
    format!("{}_{}", snap.time.strftime("%Y-%m-%dT%H%M%SZ"), id.short())
}

impl SnapshotFs {
    /// The filesystem over `repo`, holding `lock` until it is dropped (unmounted).
    pub fn new(repo: Arc<Repository>, lock: SharedLock, filter: MountFilter) -> Self {
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let mut fs = SnapshotFs {
            repo,
            _lock: lock,
            filter,
            nodes: Vec::new(),
            shown: HashMap::new(),
            open: HashMap::new(),
            next_fh: 1,
            last_refresh: None,
            uid,
            gid,
        };
        fs.add(
            0,
            Kind::Dir {
                children: BTreeMap::new(),
                pending: None,
            },
            SystemTime::now(),
        );
        fs.refresh();
        fs
    }

    /// How many snapshots the tree shows.
    pub fn snapshot_count(&self) -> usize {
        self.shown.len()
    }

    fn add(&mut self, parent: u64, kind: Kind, mtime: SystemTime) -> u64 {
        self.nodes.push(Inode {
            parent,
            kind,
            mtime,
        });
        self.nodes.len() as u64
    }

    fn node(&self, ino: u64) -> Option<&Inode> {
        self.nodes.get(ino.checked_sub(1)? as usize)
    }

    fn link(&mut self, parent: u64, name: String, child: u64) {
        if let Some(Kind::Dir { children, .. }) =
            self.nodes.get_mut(parent as usize - 1).map(|n| &mut n.kind)
        {
            children.insert(name, child);
        }
    }

    fn child(&self, parent: u64, name: &str) -> Option<u64> {
        match &self.node(parent)?.kind {
            Kind::Dir { children, .. } => children.get(name).copied(),
            _ => None,
        }
    }

    /// Re-reads the snapshot list: adds new snapshots, drops forgotten ones, and points
    /// each VM's `latest` at its newest.
    fn refresh(&mut self) {
        if self
            .last_refresh
            .is_some_and(|t| t.elapsed() < REFRESH_EVERY)
        {
            return;
        }
        self.last_refresh = Some(Instant::now());
        let list = match self.repo.list_snapshots() {
            Ok(l) => l,
            Err(e) => {
                log::error!("listing snapshots: {e}");
                return;
            }
        };
        let mut present = HashSet::new();
        let mut newest: BTreeMap<String, (jiff::Timestamp, String)> = BTreeMap::new();
        for r in list {
            let Ok((id, snap)) = r else { continue };
            if self.filter.name.as_ref().is_some_and(|n| *n != snap.name)
                || self.filter.snapshot.is_some_and(|s| s != id)
            {
                continue;
            }
            present.insert(id);
            let dir = snapshot_dir_name(&id, &snap);
            let entry = newest
                .entry(repo_format::names::escape(&snap.name))
                .or_insert((snap.time, dir.clone()));
            if snap.time >= entry.0 {
                *entry = (snap.time, dir.clone());
            }
            if self.shown.contains_key(&id) {
                continue;
            }
            let mtime = SystemTime::from(snap.time);
            // VM names were only checked for emptiness by older versions: shown
            // escaped, a name like `tenant/../x` is one directory, never a path.
            let vm_dir = repo_format::names::escape(&snap.name);
            let vm = match self.child(ROOT, &vm_dir) {
                Some(v) => v,
                None => {
                    let v = self.add(
                        ROOT,
                        Kind::Dir {
                            children: BTreeMap::new(),
                            pending: None,
                        },
                        mtime,
                    );
                    self.link(ROOT, vm_dir.clone(), v);
                    v
                }
            };
            let d = self.add(
                vm,
                Kind::Dir {
                    children: BTreeMap::new(),
                    pending: Some(Box::new(snap)),
                },
                mtime,
            );
            self.link(vm, dir, d);
            self.shown.insert(id, d);
        }
        // Forgotten snapshots disappear from their VM directory.
        let gone: Vec<SnapshotId> = self
            .shown
            .keys()
            .filter(|id| !present.contains(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(d) = self.shown.remove(&id) {
                let vm = self.node(d).map_or(0, |n| n.parent);
                if let Some(Kind::Dir { children, .. }) =
                    self.nodes.get_mut(vm as usize - 1).map(|n| &mut n.kind)
                {
                    children.retain(|_, c| *c != d);
                }
            }
        }
        for (vm_name, (time, dir)) in newest {
            let Some(vm) = self.child(ROOT, &vm_name) else {
                continue;
            };
            let l = self.add(vm, Kind::Link { target: dir }, SystemTime::from(time));
            self.link(vm, "latest".into(), l);
            if let Some(n) = self.nodes.get_mut(vm as usize - 1) {
                n.mtime = SystemTime::from(time);
            }
        }
    }

    /// Fills a snapshot directory: disks, their partitions, metadata files.
    fn populate(&mut self, dir: u64) {
        let Some(Inode {
            kind: Kind::Dir { pending, .. },
            mtime,
            ..
        }) = self.nodes.get_mut(dir as usize - 1)
        else {
            return;
        };
        let Some(snap) = pending.take() else { return };
        let mtime = *mtime;
        for d in &snap.disks {
            let f = self.add(
                dir,
                Kind::File {
                    manifest: d.manifest,
                    offset: 0,
                    len: d.size_bytes,
                    data_bytes: Some(d.stats.data_bytes),
                },
                mtime,
            );
            self.link(dir, format!("{}.raw", d.label), f);
            let parts = match DiskReader::new(self.repo.clone(), d.manifest) {
                Ok(mut r) => {
                    let mut read = |at: u64, n: usize| {
                        let mut buf = vec![0u8; n];
                        let got = r.read_at(at, &mut buf).ok()?;
                        buf.truncate(got);
                        Some(buf)
                    };
                    partitions::find(d.size_bytes, &mut read)
                }
                Err(e) => {
                    log::error!("reading the partition table of {}: {e}", d.label);
                    Vec::new()
                }
            };
            for p in parts {
                let f = self.add(
                    dir,
                    Kind::File {
                        manifest: d.manifest,
                        offset: p.offset,
                        len: p.len,
                        data_bytes: None,
                    },
                    mtime,
                );
                self.link(dir, format!("{}.p{}", d.label, p.number), f);
            }
        }
        for m in &snap.meta {
            if self.child(dir, &m.name).is_some() {
                continue; // a disk file of that name wins
            }
            let f = self.add(
                dir,
                Kind::File {
                    manifest: m.manifest,
                    offset: 0,
                    len: m.size_bytes,
                    data_bytes: None,
                },
                mtime,
            );
            self.link(dir, m.name.clone(), f);
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let n = self.node(ino)?;
        let (kind, size, perm, nlink, stored) = match &n.kind {
            Kind::Dir { children, .. } => {
                (FileType::Directory, 0, 0o555, 2 + children.len() as u32, 0)
            }
            Kind::File {
                len, data_bytes, ..
            } => (
                FileType::RegularFile,
                *len,
                0o444,
                1,
                data_bytes.unwrap_or(*len),
            ),
            Kind::Link { target } => (FileType::Symlink, target.len() as u64, 0o777, 1, 0),
        };
        Some(FileAttr {
            ino,
            size,
            blocks: stored.div_ceil(512),
            atime: n.mtime,
            mtime: n.mtime,
            ctime: n.mtime,
            crtime: n.mtime,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 65536,
            flags: 0,
        })
    }

    /// Snapshot contents are fixed; the root and VM directories are not.
    fn ttl(&self, ino: u64) -> Duration {
        let live = ino == ROOT
            || self
                .node(ino)
                .is_some_and(|n| n.parent == ROOT || matches!(n.kind, Kind::Link { .. }));
        if live {
            TTL_LIVE
        } else {
            TTL_FIXED
        }
    }

    /// Before looking inside `ino`: refresh the list above snapshots, fill a snapshot.
    fn prepare(&mut self, ino: u64) {
        let above = ino == ROOT || self.node(ino).is_some_and(|n| n.parent == ROOT);
        if above {
            self.refresh();
        } else {
            self.populate(ino);
        }
    }
}

impl Filesystem for SnapshotFs {
    fn init(
        &mut self,
        _req: &Request<'_>,
        config: &mut fuser::KernelConfig,
    ) -> Result<(), libc::c_int> {
        // Ask for 1 MiB requests (the kernel may grant less): fewer round trips.
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_write(1 << 20);
        Ok(())
    }

    /// SEEK_DATA / SEEK_HOLE from the manifest, so `cp --sparse`, `tar -S` and friends
    /// skip holes instead of reading zeros. Other whences are the kernel's business.
    fn lseek(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        let Some((reader, base, len)) = self.open.get_mut(&fh) else {
            return reply.error(libc::EBADF);
        };
        let (base, len) = (*base, *len);
        let want_data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return reply.error(libc::EINVAL),
        };
        let mut pos = offset.max(0) as u64;
        if pos >= len {
            return reply.error(libc::ENXIO);
        }
        loop {
            let (start, extent) = match reader.extent_at(base + pos) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => {
                    log::error!("lseek in inode {ino}: {e}");
                    return reply.error(EIO);
                }
            };
            let is_data = matches!(extent, repo_format::Extent::Chunk { .. });
            if is_data == want_data {
                return reply.offset(pos as i64);
            }
            pos = start + extent.len() - base;
            if pos >= len {
                break;
            }
        }
        // No more data: ENXIO; no more holes: the virtual hole at the end of the file.
        if want_data {
            reply.error(libc::ENXIO)
        } else {
            reply.offset(len as i64)
        }
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        self.prepare(parent);
        let found = name.to_str().and_then(|n| self.child(parent, n));
        match found.and_then(|c| self.attr(c).map(|a| (c, a))) {
            Some((c, attr)) => reply.entry(&self.ttl(c), &attr, 0),
            None => reply.error(ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(a) => reply.attr(&self.ttl(ino), &a),
            None => reply.error(ENOENT),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.node(ino).map(|n| &n.kind) {
            Some(Kind::Link { target }) => reply.data(target.as_bytes()),
            _ => reply.error(libc::EINVAL),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        self.prepare(ino);
        let Some(n) = self.node(ino) else {
            return reply.error(ENOENT);
        };
        let Kind::Dir { children, .. } = &n.kind else {
            return reply.error(libc::ENOTDIR);
        };
        let mut entries = vec![
            (ino, FileType::Directory, ".".to_string()),
            (n.parent.max(ROOT), FileType::Directory, "..".to_string()),
        ];
        for (name, c) in children {
            let kind = match self.node(*c).map(|x| &x.kind) {
                Some(Kind::Dir { .. }) => FileType::Directory,
                Some(Kind::Link { .. }) => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            entries.push((*c, kind, name.clone()));
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(ino, i as i64 + 1, kind, name) {
                break; // the buffer is full; the kernel asks again from here
            }
        }
        reply.ok();
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(libc::EROFS);
        }
        let Some(Kind::File {
            manifest,
            offset,
            len,
            ..
        }) = self.node(ino).map(|n| &n.kind)
        else {
            return reply.error(libc::EISDIR);
        };
        let (manifest, offset, len) = (*manifest, *offset, *len);
        match DiskReader::new(self.repo.clone(), manifest) {
            Ok(r) => {
                let fh = self.next_fh;
                self.next_fh += 1;
                self.open.insert(fh, (r, offset, len));
                // Contents never change: let the kernel keep its page cache across opens.
                reply.opened(fh, fuser::consts::FOPEN_KEEP_CACHE);
            }
            Err(e) => {
                log::error!("opening inode {ino}: {e}");
                reply.error(EIO);
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // the trait's signature
    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Some((reader, base, len)) = self.open.get_mut(&fh) else {
            return reply.error(libc::EBADF);
        };
        let offset = offset.max(0) as u64;
        if offset >= *len {
            return reply.data(&[]);
        }
        let n = u64::from(size).min(*len - offset) as usize;
        let mut buf = vec![0u8; n];
        match reader.read_at(*base + offset, &mut buf) {
            Ok(got) => reply.data(&buf[..got]),
            Err(e) => {
                log::error!("reading inode {ino} at {offset}: {e}");
                reply.error(EIO);
            }
        }
    }

    fn flush(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _lock_owner: u64,
        reply: fuser::ReplyEmpty,
    ) {
        reply.ok(); // nothing is ever written
    }

    fn getxattr(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(libc::ENODATA);
    }

    fn listxattr(&mut self, _req: &Request<'_>, _ino: u64, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    /// Nothing is ever written, so there is nothing to flush (checkers such as e2fsck
    /// call fsync on what they open).
    fn fsync(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: fuser::ReplyEmpty,
    ) {
        reply.ok();
    }

    /// Files here are not devices: block-device ioctls (BLKGETSIZE64, BLKSSZGET, which
    /// fsck tools try first) get ENOTTY, as on any regular file, without a log line.
    fn ioctl(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _flags: u32,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(libc::ENOTTY);
    }

    fn access(&mut self, _req: &Request<'_>, ino: u64, mask: i32, reply: fuser::ReplyEmpty) {
        match self.node(ino) {
            Some(_) if mask & libc::W_OK != 0 => reply.error(libc::EROFS),
            Some(_) => reply.ok(),
            None => reply.error(ENOENT),
        }
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        self.open.remove(&fh);
        reply.ok();
    }
}

/// Mounts `fs` read-only at `mountpoint` on a background thread; dropping the returned
/// session unmounts it.
pub fn mount(fs: SnapshotFs, mountpoint: &Path) -> std::io::Result<fuser::BackgroundSession> {
    let options = [
        fuser::MountOption::RO,
        fuser::MountOption::FSName("dedisk".into()),
        fuser::MountOption::Subtype("dedisk".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    fuser::spawn_mount2(fs, mountpoint, &options)
}
