//! A repository, in a local directory or under an S3 prefix ([`crate::backend`]): its
//! layout, opening (with index reconciliation), reading blobs and snapshots, and
//! writing snapshots durably.
//!
//! ```text
//! REPO/config.json                 immutable after init
//! REPO/packs/<2 hex>/<64 hex>.pack immutable, content-addressed
//! REPO/snapshots/<64 hex>.json     immutable, content-addressed
//! REPO/index.sqlite (+ -wal, -shm) cache, rebuildable from packs
//! REPO/tmp/                        packs and files being written
//! REPO/locks/                      repository locks
//! REPO/keys/                       key files (encrypted repositories)
//! ```
//!
//! An encrypted repository keeps its index in this host's cache instead
//! ([`crate::cache`]): in the repository it would tell whoever holds it every blob's
//! size and kind. So does every repository on an object store (SQLite needs a local
//! file), together with its temporary files: each host has an index of its own, rebuilt
//! from the packs' TOCs alone.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use std::sync::Arc;

use crate::backend::{Backend, Location, ObjectKind, ReadAt, RemoteObject};
use crate::blob::{BlobCodec, BlobDecoder, BlobEncoder};
use crate::config::RepoConfig;
use crate::crypto::{KeyFile, MasterKey, RepoKeys, SealedKind};
use crate::durable::sync_dir;
use crate::error::{Error, IoContext, Result};
use crate::ids::{PackId, SnapshotId};
use crate::index::Index;
use crate::pack::{read_toc, TocEntry};
use crate::snapshot::Snapshot;

const INDEX_FILE: &str = "index.sqlite";
/// A temporary file untouched for this long belongs to a process that died.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// A pack being read: its open file in a local repository, or its object, read with
/// ranged GETs, on an object store.
pub enum PackHandle {
    File(File),
    Remote {
        backend: Arc<dyn Backend>,
        name: String,
    },
}

impl ReadAt for PackHandle {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match self {
            PackHandle::File(f) => f.read_exact_at(buf, offset),
            PackHandle::Remote { backend, name } => RemoteObject {
                backend: &**backend,
                kind: ObjectKind::Pack,
                name,
            }
            .read_exact_at(buf, offset),
        }
    }
}

/// A remote pack's header and tail (footer and, for all but huge packs, its whole TOC),
/// fetched with two ranged GETs so that reading a TOC costs two requests, not three;
/// reads outside them go to the store.
struct PackEnds<'a> {
    store: &'a dyn Backend,
    name: String,
    head: Vec<u8>,
    tail_at: u64,
    tail: Vec<u8>,
}

/// How much of a pack's end is fetched with its footer: the TOC of a pack of up to
/// about 4,600 blobs.
const PACK_TAIL_FETCH: u64 = 256 * 1024;
/// Pack tables of contents read at once from an object store while indexing.
const TOC_READERS: usize = 16;
/// Local packs indexed per transaction (a commit writes every page its rows touched).
const LOCAL_TOC_BATCH: usize = 64;

/// What reading one pack's table of contents gave: the store's error, the pack gone
/// (None), or the TOC or why the pack is damaged.
pub type TocRead = Result<Option<Result<Vec<TocEntry>>>>;

impl<'a> PackEnds<'a> {
    fn fetch(store: &'a dyn Backend, id: &PackId, len: u64) -> Result<PackEnds<'a>> {
        let name = id.to_hex();
        let head_len = len.min(crate::pack::PACK_HEADER_LEN);
        let head = store.get_range(ObjectKind::Pack, &name, 0, head_len)?;
        let tail_at = len.saturating_sub(PACK_TAIL_FETCH).max(head_len);
        let tail = store.get_range(ObjectKind::Pack, &name, tail_at, len - tail_at)?;
        Ok(PackEnds {
            store,
            name,
            head,
            tail_at,
            tail,
        })
    }
}

impl ReadAt for PackEnds<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset + buf.len() as u64;
        if end <= self.head.len() as u64 {
            buf.copy_from_slice(&self.head[offset as usize..end as usize]);
            return Ok(());
        }
        if offset >= self.tail_at && end <= self.tail_at + self.tail.len() as u64 {
            let from = (offset - self.tail_at) as usize;
            buf.copy_from_slice(&self.tail[from..from + buf.len()]);
            return Ok(());
        }
        RemoteObject {
            backend: self.store,
            kind: ObjectKind::Pack,
            name: &self.name,
        }
        .read_exact_at(buf, offset)
    }
}

/// Bytes `start..start + bytes.len()` of one pack, fetched at once: several blobs that
/// lie together, read with one request (restore from an object store). Reads outside
/// them fail as a short pack would.
pub struct PackRange {
    pub start: u64,
    pub bytes: Vec<u8>,
}

impl ReadAt for PackRange {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let from = offset
            .checked_sub(self.start)
            .ok_or(std::io::ErrorKind::UnexpectedEof)? as usize;
        let src = self
            .bytes
            .get(from..from + buf.len())
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// What opening the repository had to do to the index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexRepair {
    /// The index was missing or unusable and was rebuilt from the packs.
    pub rebuilt: bool,
    /// Packs on disk the index did not know (e.g. from a backup killed after writing them).
    pub packs_added: usize,
    /// Index rows for packs no longer on disk.
    pub packs_dropped: usize,
    /// The repository cannot be written by this process (a read-only filesystem or a
    /// user with read access only): the index file is used read-only ...
    pub read_only: bool,
    /// ... or, where that file is missing, unreadable or behind the packs, an index
    /// rebuilt from the packs' TOCs is kept in memory for this process.
    pub in_memory: bool,
}

/// Where this process's index connections come from.
enum IndexMode {
    ReadWrite,
    ReadOnly,
    /// A shared in-memory SQLite database; `keeper` holds it open.
    Memory {
        name: String,
        keeper: std::sync::Mutex<Index>,
    },
}

/// An open repository. Cheap to share across threads by reference; per-thread index
/// connections come from [`Repository::index`].
pub struct Repository {
    /// Where the objects are (see [`crate::backend`]).
    store: Arc<dyn Backend>,
    /// Where this process writes packs before they are stored: the repository's
    /// `tmp/`, or for an object store this host's cache.
    work_dir: PathBuf,
    config: RepoConfig,
    /// Plain, or the keys of an encrypted repository.
    codec: BlobCodec,
    /// Where `index.sqlite` lives: the repository, or this host's cache (encrypted).
    index_dir: PathBuf,
    index_mode: IndexMode,
    /// Serialises [`Repository::recover_index`] within the process, and holds the
    /// in-memory index a read-only repository falls back to when its file is damaged.
    recovery: std::sync::Mutex<Option<(String, Index)>>,
    /// What `open` did to the index (for logging at the CLI edge).
    pub index_repair: IndexRepair,
}

impl Repository {
    /// Creates a new unencrypted (version 1) repository at `at`, which must not exist
    /// or be an empty directory (an empty prefix, on an object store).
    pub fn init(at: impl Into<Location>, config: RepoConfig) -> Result<Repository> {
        Repository::create(at.into().connect()?, config, None)
    }

    /// Creates a new encrypted (version 2) repository under `master`, whose first key
    /// file `key` goes into `keys/`, or to `external` (a path outside the repository)
    /// when given.
    pub fn init_encrypted(
        at: impl Into<Location>,
        mut config: RepoConfig,
        master: MasterKey,
        key: &KeyFile,
        external: Option<&Path>,
    ) -> Result<Repository> {
        config.seal(&master);
        Repository::create(at.into().connect()?, config, Some((master, key, external)))
    }

    fn create(
        store: Arc<dyn Backend>,
        config: RepoConfig,
        key: Option<(MasterKey, &KeyFile, Option<&Path>)>,
    ) -> Result<Repository> {
        config.validate().map_err(|reason| Error::BadConfig {
            path: store.object_name(ObjectKind::Config, ""),
            reason,
        })?;
        let here = PathBuf::from(store.describe());
        match store.local_root() {
            Some(root) => {
                if root.exists() {
                    let mut entries = fs::read_dir(root).at(root)?;
                    if entries.next().is_some() {
                        return Err(Error::AlreadyExists { path: here });
                    }
                }
                // Private: the repository holds every guest's data (issue 11).
                for dir in ["", "packs", "snapshots", "tmp", "locks"] {
                    crate::durable::create_private_dir(&root.join(dir))?;
                }
            }
            None => {
                let used = !store.list(ObjectKind::Config)?.is_empty()
                    || !store.list(ObjectKind::Snapshot)?.is_empty()
                    || !store.list(ObjectKind::Pack)?.is_empty()
                    || !store.list(ObjectKind::Key)?.is_empty();
                if used {
                    return Err(Error::AlreadyExists { path: here });
                }
            }
        }
        let master = match key {
            Some((master, key, external)) => {
                match external {
                    Some(path) => crate::keys::write_external(path, key)?,
                    None => {
                        crate::keys::add(&*store, key)?;
                    }
                }
                Some(master)
            }
            None => None,
        };
        let repo = Repository::at(store, config, master);
        crate::durable::create_private_dir(&repo.index_dir)?;
        crate::durable::create_private_dir(&repo.work_dir)?;
        // A stale index of an earlier repository with this id cannot exist (ids are
        // random); a leftover file from a failed init of this one is replaced.
        let _ = fs::remove_file(repo.index_path());
        Index::open(&repo.index_path())?;
        // Config last: a directory without it is not (yet) a repository.
        let mut bytes = serde_json::to_vec_pretty(&repo.config).expect("config serializes");
        bytes.push(b'\n');
        repo.store.put_bytes(ObjectKind::Config, "", &bytes)?;
        if let Some(parent) = repo
            .store
            .local_root()
            .and_then(|r| r.parent())
            .filter(|p| !p.as_os_str().is_empty())
        {
            sync_dir(parent)?;
        }
        Ok(repo)
    }

    /// The handle on the repository in `store` with `config`, before its index is opened.
    fn at(store: Arc<dyn Backend>, config: RepoConfig, master: Option<MasterKey>) -> Repository {
        let cache = crate::cache::dir_for(&config.repo_id);
        let codec = match master {
            Some(m) => BlobCodec::sealed(Arc::new(RepoKeys::new(m))),
            None => BlobCodec::plain(),
        };
        let (index_dir, work_dir) = match store.local_root() {
            Some(root) if !codec.is_sealed() => (root.to_path_buf(), root.join("tmp")),
            Some(root) => (cache, root.join("tmp")),
            None => (cache.clone(), cache.join("tmp")),
        };
        Repository {
            store,
            work_dir,
            config,
            codec,
            index_dir,
            index_mode: IndexMode::ReadWrite,
            recovery: Default::default(),
            index_repair: IndexRepair::default(),
        }
    }

    /// Reads and checks `config.json` of the repository in `store` (the MAC of an
    /// encrypted one is checked when it is opened with its key).
    pub fn read_config(store: &dyn Backend) -> Result<RepoConfig> {
        let config_path = store.object_name(ObjectKind::Config, "");
        let Some(bytes) = store.try_get(ObjectKind::Config, "")? else {
            return Err(Error::NotARepository {
                path: store.describe().into(),
            });
        };
        let config = RepoConfig::parse(&config_path, &bytes)?;
        if config.is_encrypted() {
            // Canonical form only, so that no byte of it can change unnoticed (the MAC
            // covers the values, this the spelling).
            let mut canonical = serde_json::to_vec_pretty(&config).expect("config serializes");
            canonical.push(b'\n');
            if canonical != bytes {
                return Err(Error::BadConfig {
                    path: config_path,
                    reason: "not in canonical form (changed by hand or damaged)".into(),
                });
            }
        }
        Ok(config)
    }

    /// Opens an existing unencrypted repository, rebuilding or reconciling its index
    /// with the packs. An encrypted one is [`Error::KeyNeeded`]: see
    /// [`Repository::open_with_key`].
    pub fn open(at: impl Into<Location>) -> Result<Repository> {
        let store = at.into().connect()?;
        let config = Repository::read_config(&*store)?;
        Repository::open_as(store, config, None)
    }

    /// Opens a repository with `master` (from [`crate::keys::unlock`]); an unencrypted
    /// repository ignores it.
    pub fn open_with_key(at: impl Into<Location>, master: MasterKey) -> Result<Repository> {
        let store = at.into().connect()?;
        let config = Repository::read_config(&*store)?;
        Repository::open_as(store, config, Some(master))
    }

    /// Opens the repository in `store` whose config a caller already read with
    /// [`Repository::read_config`] (to learn whether it needs a key), with `master` if it
    /// is encrypted ([`Error::KeyNeeded`] without one); an unencrypted one ignores it.
    pub fn open_as(
        store: Arc<dyn Backend>,
        config: RepoConfig,
        master: Option<MasterKey>,
    ) -> Result<Repository> {
        if !config.is_encrypted() {
            return Repository::open_config(store, config, None);
        }
        let master = master.ok_or_else(|| Error::KeyNeeded {
            path: store.describe().into(),
        })?;
        config.check_mac(&store.object_name(ObjectKind::Config, ""), &master)?;
        Repository::open_config(store, config, Some(master))
    }

    fn open_config(
        store: Arc<dyn Backend>,
        config: RepoConfig,
        master: Option<MasterKey>,
    ) -> Result<Repository> {
        let mut repo = Repository::at(store, config, master);
        let local = repo.store.local_root().map(Path::to_path_buf);
        let writable = repo.store.writable();
        if local.is_none() || (repo.codec.is_sealed() && writable) {
            crate::durable::create_private_dir(&repo.index_dir)?;
            if !repo.index_path().exists() {
                // A host's first look at this repository (or a cache cleared): routine,
                // no warning; the reconciliation below fills it from the packs' TOCs.
                Index::open(&repo.index_path())?;
            }
        }
        if !writable || (repo.index_path().exists() && !self::writable(&repo.index_path())) {
            // Listing, restoring, mounting and verifying need no write (issue 11).
            repo.open_read_only()?;
            return Ok(repo);
        }
        if let Some(root) = &local {
            for dir in ["packs", "snapshots", "tmp", "locks"] {
                let path = root.join(dir);
                if !path.is_dir() {
                    crate::durable::create_private_dir(&path)?;
                }
            }
        }
        crate::durable::create_private_dir(&repo.work_dir)?;
        repo.clean_stale_tmp();
        // Without a lock a prune may be deleting packs right now: only add what is new.
        let opened = repo
            .index()
            .and_then(|mut idx| repo.reconcile_with(&mut idx, false));
        repo.index_repair = match opened {
            Ok(r) => r,
            // A missing index is routine (deleted to save space, lost with a disk);
            // callers report `index_repair.rebuilt`.
            Err(Error::Index { .. }) if !repo.index_path().exists() => repo.rebuild_or_read()?,
            // A damaged one (issue 12: one overwritten page made every command fail) is
            // set aside for inspection and rebuilt from the packs.
            Err(e) if e.is_broken_index() => {
                let aside = repo.set_index_aside()?;
                log::warn!(
                    "{e}; the index was moved to {} and is rebuilt from the packs",
                    aside.display()
                );
                repo.rebuild_or_read()?
            }
            // Anything else (a full filesystem, an I/O error) says nothing about the index:
            // read without writing rather than fail (issue 12, case 4).
            Err(e @ Error::Index { .. }) => {
                log::warn!("{e}; reading the repository without writing its index");
                repo.open_read_only()?;
                repo.index_repair
            }
            Err(e) => return Err(e),
        };
        Ok(repo)
    }

    /// Rebuilds the index file; where that cannot be written (a full filesystem), reads
    /// the packs' tables into memory instead, so reading still works (issue 12, case 4).
    fn rebuild_or_read(&mut self) -> Result<IndexRepair> {
        match self.rebuild_index() {
            Ok(r) => Ok(r),
            Err(e) => {
                log::warn!("{e}; rebuilding the index file failed: keeping the index in memory");
                self.open_read_only()?;
                Ok(self.index_repair)
            }
        }
    }

    /// Moves a damaged index (and its -wal, -shm) to `index-broken-<unix time>.sqlite`
    /// beside it, for inspection; returns where.
    pub fn set_index_aside(&self) -> Result<PathBuf> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let aside = self.index_dir.join(format!(
            "index-broken-{}.{:09}.sqlite",
            now.as_secs(),
            now.subsec_nanos()
        ));
        let live = self.index_path();
        for suffix in ["", "-wal", "-shm"] {
            let from = PathBuf::from(format!("{}{suffix}", live.display()));
            if from.exists() {
                fs::rename(&from, format!("{}{suffix}", aside.display())).at(&from)?;
            }
        }
        Ok(aside)
    }

    /// Uses the index file read-only if it agrees with the packs, else an index rebuilt
    /// from the packs in memory.
    fn open_read_only(&mut self) -> Result<()> {
        self.index_repair.read_only = true;
        let usable = Index::open_read_only(&self.index_path()).and_then(|idx| {
            let on_disk: std::collections::HashSet<PackId> =
                self.list_packs()?.into_keys().collect();
            Ok(idx.pack_ids()? == on_disk)
        });
        match usable {
            Ok(true) => {
                self.index_mode = IndexMode::ReadOnly;
                return Ok(());
            }
            Ok(false) => {
                log::info!("the index file is behind the packs; reading the packs' tables instead")
            }
            Err(e) => log::info!("{e}; reading the packs' tables instead"),
        }
        let name = format!("dedisk-{}", hex::encode(&crate::ids::random_bytes()?[..8]));
        let mut keeper = Index::open_memory(&name)?;
        self.index_repair.packs_added += self.index_packs(&mut keeper, self.list_packs()?)?;
        self.index_repair.in_memory = true;
        self.index_mode = IndexMode::Memory {
            name,
            keeper: std::sync::Mutex::new(keeper),
        };
        Ok(())
    }

    /// False when this process cannot write the repository: it is used read-only.
    pub fn is_writable(&self) -> bool {
        matches!(self.index_mode, IndexMode::ReadWrite)
    }

    /// How this repository names, seals and opens blobs.
    pub fn codec(&self) -> &BlobCodec {
        &self.codec
    }

    /// Whether the repository is encrypted (format version 2).
    pub fn is_encrypted(&self) -> bool {
        self.codec.is_sealed()
    }

    /// An encoder of new blobs at the repository's compression level.
    pub fn blob_encoder(&self) -> Result<BlobEncoder> {
        BlobEncoder::new(self.config.compression.level, self.codec.clone())
    }

    /// A decoder of stored blobs.
    pub fn blob_decoder(&self) -> Result<BlobDecoder> {
        BlobDecoder::new(self.codec.clone())
    }

    /// The id of a blob holding `bytes` in this repository.
    pub fn blob_id(&self, bytes: &[u8]) -> crate::ids::BlobId {
        self.codec.id_of(bytes)
    }

    /// The storage the repository's objects go to and come from.
    pub fn backend(&self) -> &dyn Backend {
        &*self.store
    }

    /// The same, shared (for threads that outlive a borrow: lock refreshers).
    /// Bytes `start..start + len` of pack `id`, with one read (one ranged GET).
    pub fn read_pack_range(&self, id: &PackId, start: u64, len: u64) -> Result<PackRange> {
        let bytes = self
            .store
            .get_range(ObjectKind::Pack, &id.to_hex(), start, len)?;
        Ok(PackRange { start, bytes })
    }

    pub fn backend_arc(&self) -> Arc<dyn Backend> {
        self.store.clone()
    }

    /// Where pack `id` is: its file in a local repository (readers keep pack files
    /// open), the object's URL on an object store (for messages; reads go through
    /// [`Repository::pack_reader`]).
    pub fn pack_file(&self, id: &PackId) -> PathBuf {
        self.store.object_name(ObjectKind::Pack, &id.to_hex())
    }

    /// A reader of pack `id`'s bytes: the open file locally, ranged GETs on an object
    /// store. A missing pack is [`Error::MissingPack`].
    pub fn pack_reader(&self, id: &PackId) -> Result<PackHandle> {
        let name = id.to_hex();
        match self.store.local_path(ObjectKind::Pack, &name) {
            Some(path) => match File::open(&path) {
                Ok(f) => Ok(PackHandle::File(f)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(Error::MissingPack { pack: *id, path })
                }
                Err(e) => Err(Error::io(&path, e)),
            },
            None => Ok(PackHandle::Remote {
                backend: self.store.clone(),
                name,
            }),
        }
    }

    /// The directory of a local repository; None on an object store.
    pub fn local_root(&self) -> Option<&Path> {
        self.store.local_root()
    }

    /// Where the repository is, for messages.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// Where this process writes packs and files before storing them.
    pub fn tmp_dir(&self) -> PathBuf {
        self.work_dir.clone()
    }

    /// Takes a lock file of `kind` (see [`crate::lock`]), one attempt; released when the
    /// guard drops. Commands take [`Repository::lock_shared`] or
    /// [`Repository::lock_exclusive`] instead, which also reconcile the index.
    pub fn lock(
        &self,
        kind: crate::lock::LockKind,
        command: &str,
    ) -> Result<crate::lock::RepoLock> {
        crate::lock::acquire(self.store.clone(), kind, command)
    }

    /// A shared lock for `command` (one attempt: [`Error::Locked`] names a conflicting
    /// holder), with the index then reconciled with the packs under it.
    ///
    /// A repository this process cannot write, or whose filesystem takes no new file
    /// (full, read-only, no permission), is read without a lock: a prune run by its
    /// owner meanwhile would make reads fail, never return wrong data, since readers
    /// check every chunk against its id.
    pub fn lock_shared(&self, command: &str) -> Result<crate::lock::SharedLock> {
        use crate::lock::{LockKind, RepoLock, SharedLock};
        if !self.is_writable() {
            log::warn!(
                "the repository is read-only for this process: reading it without a lock (a prune run by its owner meanwhile would make reads fail, never return wrong data)"
            );
            return Ok(SharedLock::new(
                RepoLock::read_only(),
                IndexRepair::default(),
            ));
        }
        match self.lock(LockKind::Shared, command) {
            Ok(lock) => Ok(SharedLock::new(lock, self.reconcile_locked()?)),
            Err(Error::Io { path, source }) if cannot_write(&source) => {
                log::warn!(
                    "cannot write a lock in {} ({source}): reading without a lock",
                    path.display()
                );
                Ok(SharedLock::new(
                    RepoLock::read_only(),
                    IndexRepair::default(),
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// An exclusive lock for `command` (one attempt), with the index reconciled under it.
    /// Fails on a repository this process cannot write.
    pub fn lock_exclusive(&self, command: &str) -> Result<crate::lock::ExclusiveLock> {
        use crate::lock::{ExclusiveLock, LockKind};
        if !self.is_writable() {
            return Err(Error::io(
                self.store.describe(),
                std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem),
            ));
        }
        let lock = self.lock(LockKind::Exclusive, command)?;
        Ok(ExclusiveLock::new(lock, self.reconcile_locked()?))
    }

    /// A prune's lock for `command` (one attempt), with the index reconciled under it:
    /// backups and readers go on beside it (FORMAT.md, section 15).
    pub fn lock_prune(&self, command: &str) -> Result<crate::lock::PruneLock> {
        use crate::lock::{LockKind, PruneLock};
        if !self.is_writable() {
            return Err(Error::io(
                self.store.describe(),
                std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem),
            ));
        }
        let lock = self.lock(LockKind::Prune, command)?;
        Ok(PruneLock::new(lock, self.reconcile_locked()?))
    }

    /// Reconciles the index under a lock just taken; damage the unlocked open did not
    /// touch (it reads less) is rebuilt now.
    fn reconcile_locked(&self) -> Result<IndexRepair> {
        let mut index = self.index()?;
        match self.reconcile(&mut index) {
            Err(e) if e.is_broken_index() => {
                self.recover_index(&index, &e)?;
                let mut index = self.index()?;
                self.reconcile(&mut index)
            }
            r => r,
        }
    }

    pub fn index_path(&self) -> PathBuf {
        self.index_dir.join(INDEX_FILE)
    }

    /// This host's cache folder for the repository (FORMAT.md, section 10.5).
    pub fn cache_dir(&self) -> PathBuf {
        crate::cache::dir_for(&self.config.repo_id)
    }

    /// Called by a reader whose index connection `broken` met a damaged index (one
    /// page overwritten passes opening and fails at the first lookup that touches it):
    /// the file is set aside and rebuilt from the packs, unless another thread or process
    /// already replaced it; a repository that cannot be written gets an index rebuilt in
    /// memory instead. Afterwards [`Repository::index`] connects to the new one.
    pub fn recover_index(&self, broken: &Index, why: &Error) -> Result<()> {
        let mut fallback = self.recovery.lock().map_err(|_| Error::Index {
            path: self.index_path(),
            source: rusqlite::Error::InvalidQuery,
        })?;
        if fallback.is_some() {
            return Ok(());
        }
        let live = self.index_path();
        let same_file = broken.path() == live
            && crate::index::file_id(&live).is_some()
            && crate::index::file_id(&live) == broken.file_id();
        if !same_file {
            return Ok(()); // replaced since this connection opened it
        }
        if self.is_writable() {
            let aside = self.set_index_aside()?;
            log::warn!(
                "{why}; the index was moved to {} and is rebuilt from the packs",
                aside.display()
            );
            self.rebuild_index()?;
        } else {
            log::warn!("{why}; reading the packs' tables into memory instead");
            let name = format!("dedisk-{}", hex::encode(&crate::ids::random_bytes()?[..8]));
            let mut idx = Index::open_memory(&name)?;
            self.index_packs(&mut idx, self.list_packs()?)?;
            *fallback = Some((name, idx));
        }
        Ok(())
    }

    /// A new connection to the index (one per thread).
    pub fn index(&self) -> Result<Index> {
        // Held while connecting: a recovery in this process (which holds it throughout)
        // moves the file aside and renames a new one in, and a connection opened between
        // the two would see no index, or create an empty one (found by benches/soak.sh).
        let guard = self.recovery.lock().map_err(|_| Error::Index {
            path: self.index_path(),
            source: rusqlite::Error::InvalidQuery,
        })?;
        if let Some((name, _)) = guard.as_ref() {
            return Index::open_memory(name);
        }
        match &self.index_mode {
            IndexMode::ReadWrite => {}
            IndexMode::ReadOnly => return Index::open_read_only(&self.index_path()),
            IndexMode::Memory { name, keeper } => {
                // Held so that the shared in-memory database lives as long as we do.
                let _alive = keeper.lock().map_err(|_| Error::Index {
                    path: name.into(),
                    source: rusqlite::Error::InvalidQuery,
                })?;
                return Index::open_memory(name);
            }
        }
        if !self.index_path().exists() {
            return Err(Error::Index {
                path: self.index_path(),
                source: rusqlite::Error::InvalidPath(self.index_path()),
            });
        }
        // Never creates the file: only `init` and a rebuild (which renames a finished one
        // in) make an index, so another process's recovery cannot be raced into an empty
        // one either.
        Index::open_existing(&self.index_path())
    }

    fn clean_stale_tmp(&self) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > STALE_TMP_AGE);
            if old || crate::lock::writer_gone(&e.file_name().to_string_lossy()) {
                log::info!("removing stale temporary file {}", e.path().display());
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Every pack in the repository, with its length in bytes.
    pub fn list_packs(&self) -> Result<HashMap<PackId, u64>> {
        let mut out = HashMap::new();
        for meta in self.store.list(ObjectKind::Pack)? {
            match meta.name.parse::<PackId>() {
                Ok(id) => {
                    out.insert(id, meta.len);
                }
                Err(_) => log::warn!("ignoring unexpected pack name {}", meta.name),
            }
        }
        Ok(out)
    }

    /// What [`Repository::read_pack_toc`] found, to index: None when the pack is gone
    /// (deleted since it was listed) or damaged (skipped with a warning, so one bad pack
    /// never keeps the rest of the repository from opening).
    fn usable_toc(toc: Option<Result<Vec<TocEntry>>>) -> Option<Vec<TocEntry>> {
        match toc {
            None => None,
            Some(Ok(entries)) => Some(entries),
            Some(Err(e)) => {
                log::warn!("not indexing damaged pack: {e}");
                None
            }
        }
    }

    /// Indexes `packs` (listed with their lengths); returns how many were added. On an
    /// object store each TOC costs two ranged GETs of tens of milliseconds, so
    /// [`TOC_READERS`] are kept in flight: a host new to a bucket of 10,000 packs reads
    /// their tables in about a minute instead of fifteen. Rows go in one transaction per
    /// batch of packs.
    fn index_packs(
        &self,
        idx: &mut Index,
        packs: impl IntoIterator<Item = (PackId, u64)>,
    ) -> Result<usize> {
        let packs: Vec<(PackId, u64)> = packs.into_iter().collect();
        let mut added = 0;
        let local = self.local_root().is_some();
        let batch_len = if local {
            LOCAL_TOC_BATCH
        } else {
            TOC_READERS * 4
        };
        for batch in packs.chunks(batch_len) {
            let tocs = self.read_pack_tocs(batch, if local { 1 } else { TOC_READERS });
            let mut found = Vec::new();
            for ((id, len), toc) in batch.iter().zip(tocs) {
                if let Some(entries) = Self::usable_toc(toc?) {
                    found.push((*id, *len, entries));
                }
            }
            let rows: Vec<(PackId, u64, &[TocEntry])> = found
                .iter()
                .map(|(id, len, e)| (*id, *len, e.as_slice()))
                .collect();
            idx.add_packs(&rows)?;
            added += rows.len();
        }
        Ok(added)
    }

    /// The TOCs of `packs` (listed with their lengths), in their order, read on up to
    /// `readers` threads: each is a read or two at the end of a pack, two ranged GETs
    /// of tens of milliseconds on an object store, so they are worth having in flight.
    pub fn read_pack_tocs(&self, packs: &[(PackId, u64)], readers: usize) -> Vec<TocRead> {
        let readers = readers.clamp(1, packs.len().max(1));
        if readers == 1 {
            return packs
                .iter()
                .map(|(id, len)| self.read_pack_toc(id, Some(*len)))
                .collect();
        }
        let mut tocs: Vec<(usize, TocRead)> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..readers)
                .map(|k| {
                    s.spawn(move || {
                        packs
                            .iter()
                            .enumerate()
                            .skip(k)
                            .step_by(readers)
                            .map(|(i, (id, len))| (i, self.read_pack_toc(id, Some(*len))))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|r| r.join().expect("a TOC reader does not panic"))
                .collect()
        });
        tocs.sort_by_key(|(i, _)| *i);
        tocs.into_iter().map(|(_, toc)| toc).collect()
    }

    /// Pack `id`'s table of contents, read from its header, footer and TOC only (two
    /// ranged GETs on an object store, never the whole pack); None when the pack is
    /// gone. `len` is its length where a listing said it (else it is asked for). The
    /// outer error is the store's (or the filesystem's), the inner one the pack's: a
    /// damaged pack.
    pub fn read_pack_toc(&self, id: &PackId, len: Option<u64>) -> TocRead {
        let reader = match self.pack_reader(id) {
            Ok(r) => r,
            Err(Error::MissingPack { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        match &reader {
            PackHandle::File(f) => {
                let len = f.metadata().at(&self.pack_file(id))?.len();
                Ok(Some(read_toc(f, len, &id.to_hex(), &self.codec)))
            }
            PackHandle::Remote { .. } => {
                let len = match len {
                    Some(l) => l,
                    None => match self.store.size(ObjectKind::Pack, &id.to_hex())? {
                        Some(l) => l,
                        None => return Ok(None),
                    },
                };
                // Failures of the store, not the pack, are errors: a pack skipped as
                // "damaged" for a dropped connection would look lost.
                let ends = match PackEnds::fetch(&*self.store, id, len) {
                    Ok(ends) => ends,
                    Err(Error::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        return Ok(None);
                    }
                    Err(e) => return Err(e),
                };
                Ok(Some(read_toc(&ends, len, &id.to_hex(), &self.codec)))
            }
        }
    }

    /// Brings the index in line with the packs on disk: adds packs it does not know and
    /// drops rows of packs that are gone.
    /// A read-only repository's index was checked against the packs at open: nothing to
    /// write.
    pub fn reconcile(&self, idx: &mut Index) -> Result<IndexRepair> {
        self.reconcile_with(idx, true)
    }

    /// [`Repository::reconcile`]; rows of vanished packs are dropped only when `drop_gone`
    /// (the caller holds a lock, so no prune is deleting packs meanwhile).
    pub fn reconcile_with(&self, idx: &mut Index, drop_gone: bool) -> Result<IndexRepair> {
        if !self.is_writable() {
            return Ok(IndexRepair::default());
        }
        // Records first, then packs. Listed after this process's lock object was
        // written (lock_shared): a record a prune wrote before our lock was visible is
        // seen here, and from now on writers of this index store the blobs of its packs
        // again (FORMAT.md, 15.3). A sweep deletes a record only after its packs, so a
        // record gone by now means its deleted packs are gone from the listing below.
        let records = crate::condemn::list(&*self.store)?;
        for bad in records
            .iter()
            .filter_map(|r| r.record.as_ref().err().map(|e| (&r.name, e)))
        {
            log::warn!(
                "ignoring unreadable condemnation record {}: {}",
                self.store
                    .object_name(ObjectKind::Condemned, bad.0)
                    .display(),
                bad.1
            );
        }
        let on_disk = self.list_packs()?;
        let known = idx.pack_ids()?;
        let mut r = IndexRepair::default();
        let new = on_disk
            .iter()
            .filter(|(id, _)| !known.contains(id))
            .map(|(id, len)| (*id, *len));
        r.packs_added += self.index_packs(idx, new)?;
        for id in known
            .iter()
            .filter(|id| drop_gone && !on_disk.contains_key(id))
        {
            idx.remove_pack(id)?;
            r.packs_dropped += 1;
        }
        idx.set_condemned(&crate::condemn::condemned_packs(&records))?;
        if r.packs_added > 0 || r.packs_dropped > 0 {
            log::info!(
                "index reconciled with packs: {} added, {} dropped",
                r.packs_added,
                r.packs_dropped
            );
        }
        Ok(r)
    }

    /// Rebuilds the index from the packs alone, into a new file that replaces the old one.
    pub fn rebuild_index(&self) -> Result<IndexRepair> {
        // Beside the live index (the repository's tmp/ may be another filesystem than
        // the cache an encrypted repository's index lives in).
        let tmp = self
            .index_dir
            .join(format!("{}index-rebuild.sqlite", crate::lock::writer_tag()));
        for suffix in ["", "-wal", "-shm"] {
            let _ = fs::remove_file(format!("{}{suffix}", tmp.display()));
        }
        let mut r = IndexRepair {
            rebuilt: true,
            ..Default::default()
        };
        let staging = self.index_dir.join(format!(
            "{}index-rebuild-rows.sqlite",
            crate::lock::writer_tag()
        ));
        let built = (|| -> Result<()> {
            let mut idx = Index::open(&tmp)?;
            idx.begin_bulk(&staging)?;
            r.packs_added += self.index_packs(&mut idx, self.list_packs()?)?;
            idx.finish_bulk(&staging)?;
            idx.checkpoint()
        })();
        if let Err(e) = built {
            // A failed rebuild (a full disk) leaves nothing behind.
            for suffix in ["", "-wal", "-shm"] {
                let _ = fs::remove_file(format!("{}{suffix}", tmp.display()));
            }
            let _ = fs::remove_file(&staging);
            return Err(e);
        }
        let live = self.index_path();
        for suffix in ["-wal", "-shm"] {
            let _ = fs::remove_file(format!("{}{suffix}", live.display()));
        }
        crate::durable::rename_durable(&tmp, &live)?;
        for suffix in ["-wal", "-shm"] {
            let _ = fs::remove_file(format!("{}{suffix}", tmp.display()));
        }
        Ok(r)
    }

    /// Writes a snapshot file durably; from this moment on the snapshot exists.
    /// A snapshot that [`Snapshot::validate`] refuses is never written.
    pub fn write_snapshot(&self, snap: &Snapshot) -> Result<SnapshotId> {
        snap.validate().map_err(Error::InvalidSnapshot)?;
        let (id, bytes) = match self.codec.keys() {
            None => snap.encode(),
            Some(keys) => {
                let (_, json) = snap.encode();
                let sealed = keys
                    .sealer()
                    .seal_padded(SealedKind::Snapshot, &[], &json)?;
                (SnapshotId(*blake3::hash(&sealed).as_bytes()), sealed)
            }
        };
        self.store
            .put_bytes(ObjectKind::Snapshot, &id.to_hex(), &bytes)?;
        Ok(id)
    }

    /// Every snapshot, oldest first. A damaged snapshot file is reported, not skipped
    /// silently: it comes back as an `Err` in the list.
    pub fn list_snapshots(&self) -> Result<Vec<Result<(SnapshotId, Snapshot)>>> {
        let mut out = Vec::new();
        for meta in self.store.list(ObjectKind::Snapshot)? {
            let Ok(id) = meta.name.parse::<SnapshotId>() else {
                continue;
            };
            // One forgotten between the listing and this read is simply not listed.
            match self.store.try_get(ObjectKind::Snapshot, &id.to_hex()) {
                Ok(Some(bytes)) => out.push(self.decode_snapshot(&id, &bytes).map(|s| (id, s))),
                Ok(None) => continue,
                Err(e) => out.push(Err(e)),
            }
        }
        out.sort_by_key(|r| match r {
            Ok((id, s)) => (Some(s.time), Some(*id)),
            Err(_) => (None, None),
        });
        Ok(out)
    }

    /// Deletes a snapshot file (what `forget` does). The data it referenced stays until
    /// a prune finds it unreferenced.
    pub fn remove_snapshot(&self, id: &SnapshotId) -> Result<()> {
        let name = id.to_hex();
        // Deleting what is not there is an error here: `forget` names a snapshot it saw.
        if self.store.size(ObjectKind::Snapshot, &name)?.is_none() {
            return Err(Error::io(
                self.store.object_name(ObjectKind::Snapshot, &name),
                std::io::ErrorKind::NotFound.into(),
            ));
        }
        self.store.delete(ObjectKind::Snapshot, &name)
    }

    /// Loads one snapshot by its full id.
    pub fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        let bytes = self.store.get(ObjectKind::Snapshot, &id.to_hex())?;
        self.decode_snapshot(id, &bytes)
    }

    /// Checks and decodes (opens, in version 2) the bytes of snapshot `id`.
    fn decode_snapshot(&self, id: &SnapshotId, bytes: &[u8]) -> Result<Snapshot> {
        let path = self.store.object_name(ObjectKind::Snapshot, &id.to_hex());
        match self.codec.keys() {
            None => Snapshot::decode(&path, *id, bytes),
            Some(keys) => {
                Snapshot::check_name(&path, *id, bytes)?;
                let json = keys
                    .sealer()
                    .open_padded(SealedKind::Snapshot, &[], bytes, "snapshot")
                    .map_err(|_| Error::CorruptSnapshot {
                        path: path.clone(),
                        reason:
                            "does not authenticate under this repository's key (damaged or forged)"
                                .into(),
                    })?;
                Snapshot::parse(&path, &json)
            }
        }
    }
}

/// Whether this process may write under `path` (false on a read-only filesystem or
/// without write permission).
fn writable(path: &Path) -> bool {
    rustix::fs::access(path, rustix::fs::Access::WRITE_OK).is_ok()
}

/// Errors that mean "this filesystem takes no new file", not "something is wrong".
fn cannot_write(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC | libc::EROFS | libc::EACCES | libc::EPERM | libc::EDQUOT)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::BlobKind;
    use crate::blob_reader::BlobReader;
    use crate::ids::BlobId;
    use crate::pack::PackWriter;

    fn repo(dir: &Path) -> Repository {
        let config = RepoConfig::new(Default::default(), Default::default(), 1 << 20).unwrap();
        Repository::init(dir.join("repo"), config).unwrap()
    }

    /// Writes one pack of `blobs` into the repository, indexed unless `index` is false.
    fn pack(repo: &Repository, blobs: &[&[u8]], index: bool) -> (PackId, Vec<BlobId>) {
        let mut enc = repo.blob_encoder().unwrap();
        let mut w = PackWriter::create(&repo.tmp_dir(), repo.codec()).unwrap();
        let mut ids = Vec::new();
        for b in blobs {
            let e = enc.encode(BlobKind::Data, b).unwrap();
            ids.push(e.id);
            w.add(&e).unwrap();
        }
        let done = w.finish(repo.backend()).unwrap();
        if index {
            repo.index()
                .unwrap()
                .add_pack(&done.id, done.len_bytes, &done.entries)
                .unwrap();
        }
        (done.id, ids)
    }

    #[test]
    fn an_encrypted_repository_opens_only_with_its_key_and_seals_what_it_stores() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let master = MasterKey::generate().unwrap();
        let config = RepoConfig::new(Default::default(), Default::default(), 1 << 20).unwrap();
        let params = crate::crypto::KdfParams {
            m_kib: 8 * 1024,
            t: 1,
            p: 1,
        };
        let key = KeyFile::wrap(&master, b"pw", params, &config.repo_id.0, "admin").unwrap();
        std::env::set_var("DEDISK_CACHE_DIR", dir.path().join("cache"));
        let r = Repository::init_encrypted(&root, config, master.clone(), &key, None).unwrap();
        assert!(r.is_encrypted());
        assert!(
            !r.index_path().starts_with(&root),
            "the index is not beside the data"
        );
        let (pack_id, ids) = pack(&r, &[b"guest secret one", b"guest secret two"], true);
        assert_ne!(ids[0], BlobId::of(b"guest secret one"), "ids are keyed");
        let bytes = std::fs::read(r.pack_file(&pack_id)).unwrap();
        assert_eq!(bytes[8], crate::pack::PACK_VERSION_SEALED);
        assert!(!bytes.windows(12).any(|w| w == b"guest secret"));
        drop(r);
        assert!(matches!(
            Repository::open(&root),
            Err(Error::KeyNeeded { .. })
        ));
        let other = MasterKey::generate().unwrap();
        assert!(matches!(
            Repository::open_with_key(&root, other),
            Err(Error::Unauthenticated { .. })
        ));
        let local = crate::backend::LocalDir::new(&root);
        let (unlocked, _) = crate::keys::unlock(
            &local,
            None,
            b"pw",
            &Repository::read_config(&local).unwrap().repo_id.0,
        )
        .unwrap();
        let r = Repository::open_with_key(&root, unlocked).unwrap();
        let mut reader = BlobReader::new(&r).unwrap();
        assert_eq!(reader.read(&ids[1]).unwrap(), b"guest secret two");
        // A plaintext pack slipped into an encrypted repository is not read.
        let plain_dir = dir.path().join("plain");
        let plain = repo(&plain_dir);
        let (plain_pack, _) = pack(&plain, &[b"forged"], false);
        let forged = r.pack_file(&plain_pack);
        std::fs::create_dir_all(forged.parent().unwrap()).unwrap();
        std::fs::copy(plain.pack_file(&plain_pack), &forged).unwrap();
        let lock = r.lock_shared("test").unwrap();
        assert_eq!(lock.reconciled().packs_added, 0, "not indexed");
    }

    #[test]
    fn init_and_open_refuse_what_is_not_a_fresh_or_existing_repository() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path());
        assert!(matches!(
            Repository::init(r.local_root().unwrap(), r.config().clone()),
            Err(Error::AlreadyExists { .. })
        ));
        assert!(matches!(
            Repository::open(dir.path()),
            Err(Error::NotARepository { .. })
        ));
        let again = Repository::open(r.local_root().unwrap()).unwrap();
        assert_eq!(again.config().repo_id, r.config().repo_id);
        assert!(again.is_writable());
    }

    #[test]
    fn the_index_is_a_cache_of_the_packs() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path());
        let (_, ids) = pack(&r, &[b"one", b"two"], true);
        // A pack the index does not know (a backup killed before indexing it) is added;
        // a pack that vanished loses its rows, under a lock.
        let (stray, stray_ids) = pack(&r, &[b"three"], false);
        let (gone, _) = pack(&r, &[b"four"], true);
        std::fs::remove_file(r.pack_file(&gone)).unwrap();
        let lock = r.lock_exclusive("test").unwrap();
        assert_eq!(
            (
                lock.reconciled().packs_added,
                lock.reconciled().packs_dropped
            ),
            (1, 1)
        );
        drop(lock);
        let mut reader = BlobReader::new(&r).unwrap();
        assert_eq!(reader.read(&ids[1]).unwrap(), b"two");
        assert_eq!(reader.locate(&stray_ids[0]).unwrap().pack, stray);
        // The index thrown away and rebuilt: the same answers.
        std::fs::remove_file(r.index_path()).unwrap();
        let reopened = Repository::open(r.local_root().unwrap()).unwrap();
        assert!(reopened.index_repair.rebuilt);
        let mut reader = BlobReader::new(&reopened).unwrap();
        assert_eq!(reader.read(&ids[0]).unwrap(), b"one");
        assert_eq!(reader.read(&stray_ids[0]).unwrap(), b"three");
    }

    #[test]
    fn lock_guards_conflict_as_format_section_12_says() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path());
        let a = r.lock_shared("backup").unwrap();
        let b = r.lock_shared("restore").unwrap();
        assert!(a.is_on_disk() && b.is_on_disk());
        match r.lock_exclusive("prune") {
            Err(Error::Locked { holder }) => assert!(holder.contains("shared lock"), "{holder}"),
            other => panic!("exclusive beside shared: {other:?}"),
        }
        drop((a, b));
        let x = r.lock_exclusive("prune").unwrap();
        assert!(matches!(r.lock_shared("backup"), Err(Error::Locked { .. })));
        // An exclusive guard is a shared one too (deref), and notices its file going.
        let shared: &crate::lock::SharedLock = &x;
        assert!(shared.still_held().is_ok());
        for lock in crate::lock::list(r.backend()).unwrap() {
            std::fs::remove_file(lock.path).unwrap();
        }
        assert!(matches!(x.still_held(), Err(Error::LockLost { .. })));
    }

    #[test]
    fn snapshots_are_written_whole_and_listed_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path());
        let mk = |t: &str| Snapshot {
            snapshot_version: crate::snapshot::SNAPSHOT_VERSION,
            time: t.parse().unwrap(),
            name: "vm".into(),
            hostname: "h".into(),
            tags: vec![],
            disks: vec![crate::snapshot::SnapshotDisk {
                label: "vda".into(),
                source: "s".into(),
                size_bytes: 4096,
                manifest: crate::ManifestRoot {
                    root: BlobId([1; 32]),
                    len_bytes: 4096,
                    extents: 1,
                },
                stats: Default::default(),
                lost: vec![],
                changes: None,
            }],
            meta: vec![],
            program_version: "t".into(),
            previous: None,
        };
        let late = r.write_snapshot(&mk("2026-11-23T00:00:00Z")).unwrap();
        let early = r.write_snapshot(&mk("2026-11-22T00:00:00Z")).unwrap();
        let list: Vec<_> = r
            .list_snapshots()
            .unwrap()
            .into_iter()
            .map(|x| x.unwrap().0)
            .collect();
        assert_eq!(list, [early, late]);
        // A damaged file is listed as an error and never hides the others.
        let path = r
            .local_root()
            .unwrap()
            .join("snapshots")
            .join(format!("{}.json", early.to_hex()));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let list = r.list_snapshots().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list.iter().filter(|x| x.is_err()).count(), 1);
        r.remove_snapshot(&late).unwrap();
        assert!(r.load_snapshot(&late).is_err());
    }
}
