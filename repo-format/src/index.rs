//! The SQLite index: blob id -> (pack, offset, lengths). A cache of what the pack TOCs
//! say, never the only copy of anything: it can be deleted and rebuilt at any time.
//!
//! Rows for a pack are inserted only after the pack is durable under its final name,
//! so every row points at a complete pack.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::blob::{BlobKind, Compression};
use crate::error::{Error, Result};
use crate::ids::{BlobId, PackId};
use crate::pack::TocEntry;

/// Schema version kept in `PRAGMA user_version`; an index of another version is rebuilt.
/// Version 2 (issue 15) keeps every location of a blob (duplicates from hosts racing,
/// copies a repack made) and marks condemned packs (FORMAT.md, section 15).
pub const INDEX_SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE packs (
    num        INTEGER PRIMARY KEY,
    id         BLOB NOT NULL UNIQUE,
    len_bytes  INTEGER NOT NULL,
    blobs      INTEGER NOT NULL,
    condemned  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE blobs (
    id          BLOB NOT NULL,
    pack        INTEGER NOT NULL REFERENCES packs(num),
    offset      INTEGER NOT NULL,
    stored_len  INTEGER NOT NULL,
    raw_len     INTEGER NOT NULL,
    kind        INTEGER NOT NULL,
    compression INTEGER NOT NULL,
    PRIMARY KEY (id, pack)
) WITHOUT ROWID;
CREATE INDEX blobs_by_pack ON blobs(pack);
";

/// Where a blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: PackId,
    pub entry: TocEntry,
}

/// Totals over the index, for `dedisk stats`.
#[derive(Clone, Copy, Debug, Default)]
pub struct IndexTotals {
    pub packs: u64,
    pub pack_bytes: u64,
    pub data_blobs: u64,
    pub data_raw_bytes: u64,
    pub data_stored_bytes: u64,
    pub node_blobs: u64,
    pub node_stored_bytes: u64,
}

/// One connection to the index. Not `Sync`: each thread opens its own.
pub struct Index {
    conn: Connection,
    path: PathBuf,
    /// The file's (device, inode) when this connection opened it.
    file_id: Option<(u64, u64)>,
    /// Rows go to the staging table of [`Index::begin_bulk`].
    bulk: bool,
}

/// Turns `conn`'s database to WAL. Switching a file that is not yet in WAL needs it to
/// itself for a moment, and SQLite answers SQLITE_BUSY at once, without the busy
/// handler, when another connection holds it then: the processes of a job that start
/// together on a new cache do. So this waits as the busy timeout would (60 s).
fn set_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// (device, inode) of an index file, to tell whether it was replaced since.
pub fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Index {
    /// The file this connection reads (for a file index).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's (device, inode) when this connection opened it.
    pub fn file_id(&self) -> Option<(u64, u64)> {
        self.file_id
    }

    fn err(&self, source: rusqlite::Error) -> Error {
        Error::Index {
            path: self.path.clone(),
            source,
        }
    }

    /// Opens the index at `path` read-only (a read-only filesystem, or a user who may read
    /// the repository but not write it). Fails unless it is an index of this schema.
    pub fn open_read_only(path: &Path) -> Result<Index> {
        let idx = Self::connect(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        idx.check_version()?;
        // A query proves the WAL, if any, could be read: opening alone is lazy.
        idx.pack_ids()?;
        Ok(idx)
    }

    /// Opens (creating it on first use) the in-memory index `name`, shared by every
    /// connection of this process that opens the same name while one stays open: the
    /// index of a repository that cannot be written, rebuilt from the packs.
    pub fn open_memory(name: &str) -> Result<Index> {
        let path = PathBuf::from(format!("file:{name}?mode=memory&cache=shared"));
        let wrap = |source| Error::Index {
            path: path.clone(),
            source,
        };
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(wrap)?;
        conn.busy_timeout(Duration::from_secs(60)).map_err(wrap)?;
        let idx = Index {
            conn,
            path,
            file_id: None,
            bulk: false,
        };
        idx.create_schema().map_err(|e| idx.err(e))?;
        Ok(idx)
    }

    /// Creates the tables and sets the schema version in one transaction, unless a
    /// schema is there (another process may have just made it). One transaction: a
    /// process killed in the middle leaves an empty file, which the next one fills,
    /// never tables without a version, which would be set aside as broken.
    fn create_schema(&self) -> rusqlite::Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let made = (|| {
            let tables: i64 =
                self.conn
                    .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
            if tables == 0 {
                self.conn.execute_batch(SCHEMA)?;
                self.conn
                    .pragma_update(None, "user_version", INDEX_SCHEMA_VERSION)?;
            }
            Ok(())
        })();
        match made {
            Ok(()) => self.conn.execute_batch("COMMIT"),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn check_version(&self) -> Result<()> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if version != INDEX_SCHEMA_VERSION {
            return Err(self.err(rusqlite::Error::InvalidParameterName(format!(
                "index schema version {version}, expected {INDEX_SCHEMA_VERSION}"
            ))));
        }
        Ok(())
    }

    /// Opens the index at `path`, which must exist and hold an index of this schema.
    pub fn open_existing(path: &Path) -> Result<Index> {
        let idx = Self::connect(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        // WAL and synchronous=NORMAL: see `open`.
        set_wal(&idx.conn).map_err(|e| idx.err(e))?;
        idx.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| idx.err(e))?;
        idx.check_version()?;
        Ok(idx)
    }

    /// A connection to the existing file `path` with `flags`, waiting up to 60 s on locks.
    fn connect(path: &Path, flags: OpenFlags) -> Result<Index> {
        let wrap = |source| Error::Index {
            path: path.into(),
            source,
        };
        let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(wrap)?;
        conn.busy_timeout(Duration::from_secs(60)).map_err(wrap)?;
        Ok(Index {
            conn,
            path: path.into(),
            file_id: file_id(path),
            bulk: false,
        })
    }

    /// Opens (creating if needed) the index at `path`. Fails with `Error::Index` when the
    /// file is not a usable index of this schema version; callers rebuild it then.
    pub fn open(path: &Path) -> Result<Index> {
        let wrap = |source| Error::Index {
            path: path.into(),
            source,
        };
        // SQLite creates the file (and its -wal and -shm, with the same mode) by the
        // umask; create it private first: it lists every chunk of every guest.
        if !path.exists() {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(crate::durable::PRIVATE_FILE_MODE)
                .open(path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(wrap)?;
        conn.busy_timeout(Duration::from_secs(60)).map_err(wrap)?;
        // WAL: readers (restore workers, a concurrent mount) never block the one writer.
        // synchronous=NORMAL may lose the last commits on power loss; harmless, because
        // the index is a cache that `reconcile` refills from the packs.
        set_wal(&conn).map_err(wrap)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(wrap)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(wrap)?;
        let idx = Index {
            conn,
            path: path.into(),
            file_id: file_id(path),
            bulk: false,
        };
        if version == 0 {
            idx.create_schema().map_err(wrap)?;
            let version: i64 = idx
                .conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .map_err(wrap)?;
            if version == INDEX_SCHEMA_VERSION {
                return Ok(idx);
            }
        }
        if version != INDEX_SCHEMA_VERSION {
            return Err(wrap(rusqlite::Error::InvalidParameterName(format!(
                "index schema version {version}, expected {INDEX_SCHEMA_VERSION}"
            ))));
        }
        Ok(idx)
    }

    /// Where blob `id` is, if the index knows it: of several copies, one in a pack no
    /// prune has condemned (FORMAT.md, section 15), the oldest indexed first.
    pub fn lookup(&self, id: &BlobId) -> Result<Option<BlobLocation>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT p.id, b.offset, b.stored_len, b.raw_len, b.kind, b.compression
                 FROM blobs b JOIN packs p ON p.num = b.pack WHERE b.id = ?1
                 ORDER BY p.condemned, p.num LIMIT 1",
            )
            .map_err(|e| self.err(e))?;
        let row = stmt
            .query_row([&id.0[..]], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((pack, offset, stored_len, raw_len, kind, compression)) = row else {
            return Ok(None);
        };
        let row = format!("row for blob {}", id.short());
        Ok(Some(BlobLocation {
            pack: PackId::from_slice(&pack).ok_or_else(|| self.bad_row(&row, "pack id"))?,
            entry: self.entry_of_row(
                *id,
                [offset, stored_len, raw_len, kind, compression],
                &row,
            )?,
        }))
    }

    /// A TOC entry from a row's (offset, stored_len, raw_len, kind, compression);
    /// `row` names the row in the error a value out of range gives.
    fn entry_of_row(&self, id: BlobId, cols: [i64; 5], row: &str) -> Result<TocEntry> {
        let [offset, stored_len, raw_len, kind, compression] = cols;
        let bad = |what| self.bad_row(row, what);
        Ok(TocEntry {
            id,
            kind: BlobKind::from_u8(kind as u8).ok_or_else(|| bad("kind"))?,
            compression: Compression::from_u8(compression as u8)
                .ok_or_else(|| bad("compression"))?,
            stored_len: u32::try_from(stored_len).map_err(|_| bad("length"))?,
            raw_len: u32::try_from(raw_len).map_err(|_| bad("length"))?,
            offset: u64::try_from(offset).map_err(|_| bad("offset"))?,
        })
    }

    fn bad_row(&self, row: &str, what: &str) -> Error {
        self.err(rusqlite::Error::InvalidParameterName(format!(
            "{row} has an invalid {what}"
        )))
    }

    /// True when the index knows blob `id`, in any pack.
    pub fn contains(&self, id: &BlobId) -> Result<bool> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM blobs WHERE id = ?1")
            .map_err(|e| self.err(e))?;
        stmt.exists([&id.0[..]]).map_err(|e| self.err(e))
    }

    /// True when blob `id` is in a pack no prune has condemned: the question a writer
    /// asks before it skips a blob as already stored. A blob only in condemned packs
    /// is stored again (FORMAT.md, section 15: a writer never comes to rely on a pack
    /// a prune may delete).
    pub fn has_usable(&self, id: &BlobId) -> Result<bool> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT 1 FROM blobs b JOIN packs p ON p.num = b.pack
                 WHERE b.id = ?1 AND p.condemned = 0",
            )
            .map_err(|e| self.err(e))?;
        stmt.exists([&id.0[..]]).map_err(|e| self.err(e))
    }

    /// Marks exactly the packs in `condemned` as condemned (the records a prune left,
    /// FORMAT.md section 15); returns how many packs changed state.
    pub fn set_condemned(&mut self, condemned: &HashSet<PackId>) -> Result<usize> {
        let path = self.path.clone();
        let wrap = |source| Error::Index {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(wrap)?;
        let mut changed = 0;
        {
            let mut rows = tx
                .prepare("SELECT id, condemned FROM packs")
                .map_err(wrap)?;
            let mut flip = Vec::new();
            let mut q = rows.query([]).map_err(wrap)?;
            while let Some(r) = q.next().map_err(wrap)? {
                let id: Vec<u8> = r.get(0).map_err(wrap)?;
                let now: i64 = r.get(1).map_err(wrap)?;
                let want = PackId::from_slice(&id).is_some_and(|p| condemned.contains(&p));
                if want != (now != 0) {
                    flip.push((id, want as i64));
                }
            }
            drop(q);
            let mut upd = tx
                .prepare("UPDATE packs SET condemned = ?2 WHERE id = ?1")
                .map_err(wrap)?;
            for (id, want) in flip {
                upd.execute(params![id, want]).map_err(wrap)?;
                changed += 1;
            }
        }
        tx.commit().map_err(wrap)?;
        Ok(changed)
    }

    /// The packs currently marked condemned.
    pub fn condemned(&self) -> Result<HashSet<PackId>> {
        self.packs_where("SELECT id FROM packs WHERE condemned != 0")
    }

    /// Records a durable pack and all its blobs, in one transaction. A blob indexed
    /// from another pack too keeps both locations ([`Index::lookup`] picks one).
    pub fn add_pack(&mut self, pack: &PackId, len_bytes: u64, entries: &[TocEntry]) -> Result<()> {
        self.add_packs(&[(*pack, len_bytes, entries)])
    }

    /// [`Index::add_pack`] for many packs in one transaction: a rebuild from the TOCs
    /// commits once per batch instead of once per pack (each commit writes every page it
    /// touched to the log, and a pack's rows touch as many pages as it has rows).
    pub fn add_packs(&mut self, packs: &[(PackId, u64, &[TocEntry])]) -> Result<()> {
        let path = self.path.clone();
        let wrap = |source| Error::Index {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(wrap)?;
        {
            let mut add = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO packs (id, len_bytes, blobs) VALUES (?1, ?2, ?3)",
                )
                .map_err(wrap)?;
            let mut num_of = tx
                .prepare_cached("SELECT num FROM packs WHERE id = ?1")
                .map_err(wrap)?;
            let mut ins = tx
                .prepare_cached(if self.bulk {
                    "INSERT INTO bulk.rows
                     (id, pack, offset, stored_len, raw_len, kind, compression)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                } else {
                    "INSERT OR IGNORE INTO blobs
                     (id, pack, offset, stored_len, raw_len, kind, compression)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                })
                .map_err(wrap)?;
            for (pack, len_bytes, entries) in packs {
                add.execute(params![
                    &pack.0[..],
                    *len_bytes as i64,
                    entries.len() as i64
                ])
                .map_err(wrap)?;
                let num: i64 = num_of
                    .query_row([&pack.0[..]], |r| r.get(0))
                    .map_err(wrap)?;
                for e in entries.iter() {
                    ins.execute(params![
                        &e.id.0[..],
                        num,
                        e.offset as i64,
                        e.stored_len as i64,
                        e.raw_len as i64,
                        e.kind as u8 as i64,
                        e.compression as u8 as i64
                    ])
                    .map_err(wrap)?;
                }
            }
        }
        tx.commit().map_err(wrap)
    }

    /// Every row that places a blob in `pack`, as the TOC entry it claims to be.
    /// Rows that do not decode come back as `Error::Index` (a damaged index).
    pub fn rows_of_pack(&self, pack: &PackId) -> Result<Vec<TocEntry>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT b.id, b.offset, b.stored_len, b.raw_len, b.kind, b.compression
                 FROM blobs b JOIN packs p ON p.num = b.pack WHERE p.id = ?1",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([&pack.0[..]]).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        let row = format!("a row of pack {}", pack.short());
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let get = |i| r.get::<_, i64>(i).map_err(|e| self.err(e));
            let id: Vec<u8> = r.get(0).map_err(|e| self.err(e))?;
            let id = BlobId::from_slice(&id).ok_or_else(|| self.bad_row(&row, "blob id"))?;
            let cols = [get(1)?, get(2)?, get(3)?, get(4)?, get(5)?];
            out.push(self.entry_of_row(id, cols, &row)?);
        }
        Ok(out)
    }

    /// Every row of the blob table as stored, in ascending blob id order: the pack's
    /// number (see [`Index::pack_numbers`]), the blob id's bytes, and `[offset,
    /// stored_len, raw_len, kind, compression]`. Nothing is decoded or joined, so a
    /// caller comparing rows with TOCs reads the table once, sequentially (verify,
    /// issue 19), and a malformed row is still seen (as not matching).
    pub fn scan_rows<E: From<Error>>(
        &self,
        mut f: impl FnMut(i64, &[u8], [i64; 5]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT pack, id, offset, stored_len, raw_len, kind, compression FROM blobs
                 ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let get = |i| r.get::<_, i64>(i).map_err(|e| self.err(e));
            let id = r
                .get_ref(1)
                .map_err(|e| self.err(e))?
                .as_blob()
                .map_err(|e| self.err(e.into()))?;
            f(get(0)?, id, [get(2)?, get(3)?, get(4)?, get(5)?, get(6)?])?;
        }
        Ok(())
    }

    /// The number each indexed pack has in the blob table ([`Index::scan_rows`]).
    pub fn pack_numbers(&self) -> Result<HashMap<PackId, i64>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, num FROM packs")
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        let mut out = HashMap::new();
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let id: Vec<u8> = r.get(0).map_err(|e| self.err(e))?;
            if let Some(id) = PackId::from_slice(&id) {
                out.insert(id, r.get(1).map_err(|e| self.err(e))?);
            }
        }
        Ok(out)
    }

    /// Every indexed location of every blob, in ascending blob id order (a blob in
    /// several packs gives one call per pack): (blob, pack, stored bytes). Streams the
    /// table in its key order, so a caller merging it with another sorted list of ids
    /// holds nothing per blob (prune's mark, issue 19).
    ///
    /// The pack table (a few dozen bytes per pack) is read into memory first and each
    /// row's pack number looked up there: joining in SQL cost a B-tree search per row,
    /// about a fifth of a pass over 30 million rows. A row whose pack number is in no
    /// pack row is left out, as the join did.
    pub fn scan_locations<E: From<Error>>(
        &self,
        mut f: impl FnMut(BlobId, PackId, u64) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut packs: HashMap<i64, PackId> = HashMap::new();
        let mut stmt = self
            .conn
            .prepare("SELECT num, id FROM packs")
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let id: Vec<u8> = r.get(1).map_err(|e| self.err(e))?;
            let id = PackId::from_slice(&id)
                .ok_or_else(|| self.bad_row("a row of the pack table", "pack id"))?;
            packs.insert(r.get(0).map_err(|e| self.err(e))?, id);
        }
        drop(rows);
        let mut stmt = self
            .conn
            .prepare("SELECT id, pack, stored_len FROM blobs ORDER BY id")
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let num: i64 = r.get(1).map_err(|e| self.err(e))?;
            let Some(pack) = packs.get(&num) else {
                continue;
            };
            let blob = r
                .get_ref(0)
                .map_err(|e| self.err(e))?
                .as_blob()
                .map_err(|e| self.err(e.into()))?;
            let len: i64 = r.get(2).map_err(|e| self.err(e))?;
            let Some(blob) = BlobId::from_slice(blob) else {
                return Err(self.bad_row("a row of the blob table", "id").into());
            };
            f(blob, *pack, len.max(0) as u64)?;
        }
        Ok(())
    }

    /// The packs the index places blob `id` in (condemned or not).
    pub fn packs_holding(&self, id: &BlobId) -> Result<Vec<PackId>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT p.id FROM blobs b JOIN packs p ON p.num = b.pack WHERE b.id = ?1",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([&id.0[..]], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in rows {
            let pack = r.map_err(|e| self.err(e))?;
            out.push(
                PackId::from_slice(&pack)
                    .ok_or_else(|| self.bad_row("a row of the pack table", "pack id"))?,
            );
        }
        Ok(out)
    }

    /// Every pack's recorded length.
    pub fn pack_lengths(&self) -> Result<HashMap<PackId, u64>> {
        let wrap = |source| Error::Index {
            path: self.path.clone(),
            source,
        };
        let mut stmt = self
            .conn
            .prepare("SELECT id, len_bytes FROM packs")
            .map_err(wrap)?;
        let mut rows = stmt.query([]).map_err(wrap)?;
        let mut out = HashMap::new();
        while let Some(r) = rows.next().map_err(wrap)? {
            let id: Vec<u8> = r.get(0).map_err(wrap)?;
            let len: i64 = r.get(1).map_err(wrap)?;
            if let Some(id) = PackId::from_slice(&id) {
                out.insert(id, len as u64);
            }
        }
        Ok(out)
    }

    /// Forgets a pack that no longer exists on disk.
    pub fn remove_pack(&mut self, pack: &PackId) -> Result<()> {
        let path = self.path.clone();
        let wrap = |source| Error::Index {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(wrap)?;
        tx.execute(
            "DELETE FROM blobs WHERE pack = (SELECT num FROM packs WHERE id = ?1)",
            [&pack.0[..]],
        )
        .map_err(wrap)?;
        tx.execute("DELETE FROM packs WHERE id = ?1", [&pack.0[..]])
            .map_err(wrap)?;
        tx.commit().map_err(wrap)
    }

    /// Every pack the index knows.
    pub fn pack_ids(&self) -> Result<HashSet<PackId>> {
        self.packs_where("SELECT id FROM packs")
    }

    /// The pack ids `sql` selects (one column of ids).
    fn packs_where(&self, sql: &str) -> Result<HashSet<PackId>> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| self.err(e))?;
        let mut out = HashSet::new();
        for r in rows {
            if let Some(id) = PackId::from_slice(&r.map_err(|e| self.err(e))?) {
                out.insert(id);
            }
        }
        Ok(out)
    }

    /// Counts and byte totals.
    pub fn totals(&self) -> Result<IndexTotals> {
        let mut t = IndexTotals::default();
        self.conn
            .query_row(
                "SELECT count(*), coalesce(sum(len_bytes), 0) FROM packs",
                [],
                |r| {
                    t.packs = r.get::<_, i64>(0)? as u64;
                    t.pack_bytes = r.get::<_, i64>(1)? as u64;
                    Ok(())
                },
            )
            .map_err(|e| self.err(e))?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT kind, count(*), coalesce(sum(raw_len),0), coalesce(sum(stored_len),0)
                 FROM (SELECT kind, raw_len, min(stored_len) AS stored_len
                       FROM blobs GROUP BY id)
                 GROUP BY kind",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ))
            })
            .map_err(|e| self.err(e))?;
        for r in rows {
            let (kind, n, raw, stored) = r.map_err(|e| self.err(e))?;
            if kind == BlobKind::Data as i64 {
                t.data_blobs = n;
                t.data_raw_bytes = raw;
                t.data_stored_bytes = stored;
            } else {
                t.node_blobs = n;
                t.node_stored_bytes = stored;
            }
        }
        Ok(t)
    }

    /// Starts filling an empty index from many packs (a rebuild from the TOCs, into a
    /// file no other connection has open, deleted if the rebuild fails): until
    /// [`Index::finish_bulk`], [`Index::add_packs`] appends blob rows to a staging
    /// table in the file `staging` (created private; it is deleted there), nothing is
    /// journaled, and the finish inserts the rows sorted by key. Random ids inserted
    /// straight into the table's B-tree write a page per row once the index outgrows
    /// SQLite's cache (17.8 s per million rows at 10 million); sorted, each page is
    /// written once.
    pub fn begin_bulk(&mut self, staging: &Path) -> Result<()> {
        let _ = std::fs::remove_file(staging);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(crate::durable::PRIVATE_FILE_MODE)
            .open(staging)
            .map_err(|e| Error::io(staging, e))?;
        self.conn
            .execute(
                "ATTACH DATABASE ?1 AS bulk",
                [staging.to_string_lossy().as_ref()],
            )
            .map_err(|e| self.err(e))?;
        self.conn
            .execute_batch(
                "PRAGMA bulk.journal_mode = OFF;
                 PRAGMA bulk.synchronous = OFF;
                 PRAGMA main.journal_mode = OFF;
                 PRAGMA main.synchronous = OFF;
                 PRAGMA cache_size = -16384;
                 CREATE TABLE bulk.rows (id BLOB, pack INTEGER, offset INTEGER,
                     stored_len INTEGER, raw_len INTEGER, kind INTEGER, compression INTEGER);
                 DROP INDEX IF EXISTS blobs_by_pack;",
            )
            .map_err(|e| self.err(e))?;
        self.bulk = true;
        Ok(())
    }

    /// Ends [`Index::begin_bulk`]: the staged rows go into the blob table in key order
    /// (SQLite sorts them in bounded memory, spilling to temporary files), the by-pack
    /// index is made again, and the staging file is deleted (`staging`, as given to
    /// `begin_bulk`).
    pub fn finish_bulk(&mut self, staging: &Path) -> Result<()> {
        let path = self.path.clone();
        let wrap = |source| Error::Index {
            path: path.clone(),
            source,
        };
        self.bulk = false;
        let tx = self.conn.transaction().map_err(wrap)?;
        tx.execute_batch(
            "INSERT OR IGNORE INTO blobs SELECT * FROM bulk.rows ORDER BY id, pack;
             CREATE INDEX IF NOT EXISTS blobs_by_pack ON blobs(pack);",
        )
        .map_err(wrap)?;
        tx.commit().map_err(wrap)?;
        self.conn
            .execute_batch(
                "DETACH DATABASE bulk; PRAGMA cache_size = -2000;
                 PRAGMA main.journal_mode = WAL; PRAGMA main.synchronous = NORMAL;",
            )
            .map_err(wrap)?;
        // Written without a journal or a sync: durable before anything renames it in.
        std::fs::File::open(&self.path)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&self.path, e))?;
        std::fs::remove_file(staging).map_err(|e| Error::io(staging, e))?;
        Ok(())
    }

    /// Folds the write-ahead log into the main file (after bulk work such as a rebuild).
    pub fn checkpoint(&self) -> Result<()> {
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::{BlobKind, Compression};

    fn entry(n: u8, offset: u64) -> TocEntry {
        TocEntry {
            id: BlobId([n; 32]),
            kind: if n.is_multiple_of(2) {
                BlobKind::Data
            } else {
                BlobKind::ManifestNode
            },
            compression: Compression::Zstd,
            stored_len: 100 + n as u32,
            raw_len: 1000 + n as u32,
            offset,
        }
    }

    #[test]
    fn rows_are_the_packs_tables_and_go_with_their_pack() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let mut idx = Index::open(&path).unwrap();
        let (a, b) = (PackId([0xa; 32]), PackId([0xb; 32]));
        idx.add_pack(&a, 5000, &[entry(2, 16), entry(3, 200)])
            .unwrap();
        idx.add_pack(&b, 7000, &[entry(4, 16)]).unwrap();
        let loc = idx.lookup(&BlobId([3; 32])).unwrap().unwrap();
        assert_eq!((loc.pack, loc.entry), (a, entry(3, 200)));
        assert!(idx.contains(&BlobId([4; 32])).unwrap());
        assert!(idx.lookup(&BlobId([9; 32])).unwrap().is_none());
        assert_eq!(idx.rows_of_pack(&a).unwrap().len(), 2);
        assert_eq!(idx.pack_ids().unwrap(), [a, b].into_iter().collect());
        let t = idx.totals().unwrap();
        assert_eq!(
            (t.packs, t.pack_bytes, t.data_blobs, t.node_blobs),
            (2, 12000, 2, 1)
        );
        assert_eq!(t.data_raw_bytes, 1002 + 1004);
        // A blob in two packs has two locations; lookup prefers the first indexed,
        // unless a prune condemned it. Totals count the blob once.
        let c = PackId([0xc; 32]);
        idx.add_pack(&c, 100, &[entry(2, 999)]).unwrap();
        assert_eq!(idx.lookup(&BlobId([2; 32])).unwrap().unwrap().pack, a);
        assert_eq!(idx.totals().unwrap().data_blobs, 2);
        idx.set_condemned(&[a].into_iter().collect()).unwrap();
        assert_eq!(idx.condemned().unwrap(), [a].into_iter().collect());
        let loc = idx.lookup(&BlobId([2; 32])).unwrap().unwrap();
        assert_eq!((loc.pack, loc.entry.offset), (c, 999));
        // A blob only in a condemned pack is known but not usable for deduplication.
        assert!(idx.contains(&BlobId([3; 32])).unwrap());
        assert!(!idx.has_usable(&BlobId([3; 32])).unwrap());
        assert!(idx.has_usable(&BlobId([2; 32])).unwrap());
        assert_eq!(idx.set_condemned(&HashSet::new()).unwrap(), 1);
        assert!(idx.has_usable(&BlobId([3; 32])).unwrap());
        // Removing a pack removes its rows and keeps the other copies.
        idx.remove_pack(&b).unwrap();
        assert!(!idx.contains(&BlobId([4; 32])).unwrap());
        idx.remove_pack(&a).unwrap();
        assert_eq!(idx.lookup(&BlobId([2; 32])).unwrap().unwrap().pack, c);
        // Another connection (the file on disk) sees all of it.
        let again = Index::open_existing(&path).unwrap();
        assert_eq!(again.pack_lengths().unwrap().len(), 1);
    }

    #[test]
    fn locations_come_in_id_order_with_their_packs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let mut idx = Index::open(&path).unwrap();
        let (a, b) = (PackId([0xa; 32]), PackId([0xb; 32]));
        idx.add_pack(&a, 5000, &[entry(7, 16), entry(2, 200)])
            .unwrap();
        idx.add_pack(&b, 7000, &[entry(2, 16), entry(5, 300)])
            .unwrap();
        let scan = |idx: &Index| {
            let mut seen = Vec::new();
            idx.scan_locations(|id, pack, len| -> Result<()> {
                seen.push((id.0[0], pack, len));
                Ok(())
            })
            .map(|()| seen)
        };
        let mut want = vec![(2, a, 102), (2, b, 102), (5, b, 105), (7, a, 107)];
        let mut got = scan(&idx).unwrap();
        got.sort(); // the two locations of blob 2 may come in either order
        want.sort();
        assert_eq!(got, want);
        // A row naming a pack number no pack row has is left out, as a join would; a
        // pack row whose id is not 32 bytes is a damaged index.
        // (The file is hostile input: its writer need not have enforced foreign keys.)
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.pragma_update(None, "foreign_keys", false).unwrap();
        raw.execute(
            "INSERT INTO blobs (id, pack, offset, stored_len, raw_len, kind, compression)
             VALUES (?1, 999, 0, 1, 1, 0, 1)",
            [&[1u8; 32][..]],
        )
        .unwrap();
        assert_eq!(scan(&idx).unwrap().len(), 4);
        raw.execute("UPDATE packs SET id = x'00' WHERE id = ?1", [&b.0[..]])
            .unwrap();
        assert!(matches!(scan(&idx), Err(Error::Index { .. })));
    }

    #[test]
    fn openers_for_existing_files_never_create_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        assert!(Index::open_existing(&path).is_err());
        assert!(Index::open_read_only(&path).is_err());
        assert!(!path.exists(), "no empty index was created");
        let mem = Index::open_memory("t").unwrap();
        assert!(mem.pack_ids().unwrap().is_empty());
    }

    /// A new index gets its tables and version in one transaction (CI once saw a prune
    /// killed between the two, and the next prune set the index aside as broken): an
    /// empty file is filled, tables without a version are refused.
    /// Processes that open a new index at once (a job's disks starting together on a new
    /// cache) each get a usable one: the schema is made once, and turning the file to
    /// WAL waits for the others instead of failing with SQLITE_BUSY.
    #[test]
    fn processes_opening_a_new_index_at_once_all_get_one() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..50 {
            let path = dir.path().join(format!("index-{round}.sqlite"));
            let barrier = std::sync::Barrier::new(4);
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        barrier.wait();
                        let idx = Index::open(&path).unwrap();
                        assert!(idx.pack_ids().unwrap().is_empty());
                    });
                }
            });
        }
    }

    #[test]
    fn a_new_index_gets_its_schema_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.sqlite");
        std::fs::write(&path, b"").unwrap();
        let idx = Index::open(&path).unwrap();
        assert!(idx.pack_ids().unwrap().is_empty());
        drop(idx);
        assert!(Index::open_existing(&path).is_ok());
        // Tables without the version (what a kill between the two used to leave) are not
        // taken for an index.
        let path = dir.path().join("half.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        drop(conn);
        let e = Index::open(&path).err().expect("refused");
        assert!(e.is_broken_index(), "{e}");
    }

    #[test]
    fn a_damaged_file_is_a_broken_index_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let e = Index::open_existing(&path)
            .and_then(|i| i.pack_ids().map(|_| ()))
            .unwrap_err();
        assert!(e.is_broken_index(), "{e}");
    }
}
