//! Where a repository's objects live: one small contract, [`Backend`], and its two
//! implementations, [`LocalDir`] (the directory layout of FORMAT.md, section 1) and
//! [`S3`] (the same layout as keys under a bucket prefix, FORMAT.md section 11). The
//! repository, the store that writes packs, locks, keys and prune's deletions only ever
//! talk to the trait; [`Location`] says which one a `--repo` names.
//!
//! Packs and snapshots are immutable once put: they are named by the BLAKE3 of their
//! bytes, so "put" never replaces different content under a name, and retrying a put
//! is always safe. Lock objects are the only objects ever rewritten (refreshed by
//! their holder), and the config is written once, at init.

mod local;
mod location;
mod profile;
mod s3;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use local::LocalDir;
pub use location::Location;
pub use s3::{S3Settings, S3};

use crate::error::{Error, Result};

/// The kinds of object a repository keeps; each is one folder locally and one key
/// prefix in an object store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// `config.json` (one object; its name is ignored).
    Config,
    /// `keys/<id>.json`, the key files of an encrypted repository.
    Key,
    /// `locks/<id>.json`, one per holder.
    Lock,
    /// `packs/XX/<id>.pack`, sharded by the id's first byte.
    Pack,
    /// `snapshots/<id>.json`.
    Snapshot,
    /// `condemned/<id>.json`, the packs a prune means to delete (FORMAT.md, section 15).
    Condemned,
}

impl ObjectKind {
    /// The object's path relative to the repository root (a key under the prefix).
    pub fn relative_path(self, name: &str) -> String {
        match self {
            ObjectKind::Config => "config.json".into(),
            ObjectKind::Key => format!("keys/{name}.json"),
            ObjectKind::Lock => format!("locks/{name}.json"),
            ObjectKind::Pack => {
                let shard = name.get(..2).unwrap_or("00");
                format!("packs/{shard}/{name}.pack")
            }
            ObjectKind::Snapshot => format!("snapshots/{name}.json"),
            ObjectKind::Condemned => format!("condemned/{name}.json"),
        }
    }

    /// The folder (key prefix) every object of this kind is under.
    fn folder(self) -> &'static str {
        match self {
            ObjectKind::Config => "",
            ObjectKind::Key => "keys",
            ObjectKind::Lock => "locks",
            ObjectKind::Pack => "packs",
            ObjectKind::Snapshot => "snapshots",
            ObjectKind::Condemned => "condemned",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            ObjectKind::Pack => ".pack",
            _ => ".json",
        }
    }

    /// The object name in a listed relative path (`packs/ab/<hex>.pack` -> `<hex>`), or
    /// None for what is not an object of this kind (stray files, foreign keys). Names
    /// are lower-case hex: nothing a listing returns can name a path outside the folder.
    fn name_in(self, relative: &str) -> Option<String> {
        let rest = relative.strip_prefix(self.folder())?.strip_prefix('/')?;
        let rest = match self {
            ObjectKind::Pack => {
                let (shard, file) = rest.split_once('/')?;
                let name = file.strip_suffix(self.suffix())?;
                if !name.starts_with(shard) {
                    return None;
                }
                name
            }
            _ => rest.strip_suffix(self.suffix())?,
        };
        // Lock objects of other writers (older versions, an admin's plant) may have any
        // plain name and must still be seen, or a lock could be missed.
        let ok = !rest.is_empty()
            && rest.bytes().all(|b| match self {
                ObjectKind::Lock => b.is_ascii_alphanumeric() || b == b'-' || b == b'_',
                _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
            });
        ok.then(|| rest.to_string())
    }
}

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub name: String,
    /// Length in bytes.
    pub len: u64,
    /// When it was last written (a lock's holder refreshes it), if the store says.
    pub modified: Option<SystemTime>,
}

/// The storage contract. Names are lower-case hex ids (checked by the callers that
/// parse them); implementations must be safe to call from many threads at once.
pub trait Backend: Send + Sync {
    /// The repository's location, for messages (a path, or `s3://bucket/prefix`).
    fn describe(&self) -> String;
    /// The directory of a repository on a local filesystem.
    fn local_root(&self) -> Option<&Path> {
        None
    }
    /// Where object `name` is named in messages.
    fn object_name(&self, kind: ObjectKind, name: &str) -> PathBuf {
        PathBuf::from(format!(
            "{}/{}",
            self.describe().trim_end_matches('/'),
            kind.relative_path(name)
        ))
    }
    /// The local file holding object `name`, for backends that have one (readers keep
    /// such files open and read them with pread instead of a request per read).
    fn local_path(&self, _kind: ObjectKind, _name: &str) -> Option<PathBuf> {
        None
    }
    /// Makes the finished file `tmp` (written by this process in its temporary folder)
    /// the object `name`: whole or not at all, durable when this returns, `tmp` gone
    /// afterwards.
    fn put_file(&self, kind: ObjectKind, name: &str, tmp: &Path) -> Result<()>;
    /// Stores `bytes` as the object `name`, with the same guarantees.
    fn put_bytes(&self, kind: ObjectKind, name: &str, bytes: &[u8]) -> Result<()>;
    /// Exactly `len` bytes of object `name` from `offset`; an object that is shorter is
    /// an error, never a short read.
    fn get_range(&self, kind: ObjectKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// The whole object, or None when there is no such object.
    fn try_get(&self, kind: ObjectKind, name: &str) -> Result<Option<Vec<u8>>>;
    /// The whole object; a missing one is an error naming it.
    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>> {
        self.try_get(kind, name)?.ok_or_else(|| {
            Error::io(
                self.object_name(kind, name),
                std::io::ErrorKind::NotFound.into(),
            )
        })
    }
    /// The length of object `name`, or None when there is no such object.
    fn size(&self, kind: ObjectKind, name: &str) -> Result<Option<u64>>;
    /// Every object of `kind`, in no particular order. Entries that are not objects of
    /// this kind (stray files) are skipped.
    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectMeta>>;
    /// Deletes object `name`, durably; an object already gone is not an error (a killed
    /// prune's next run deletes again).
    fn delete(&self, kind: ObjectKind, name: &str) -> Result<()>;
    /// Whether this process may write here; a local directory answers by its
    /// permissions, an object store by trying (false only when it is known not to be).
    fn writable(&self) -> bool {
        true
    }
}

/// A reader of byte ranges: a local file (pread), or an object read with ranged GETs.
/// Pack readers take one, so the same parsing serves both backends.
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

/// Bytes in memory (an object read whole, a pack in a buffer).
impl ReadAt for &[u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|end| *end <= self.len() as u64)
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&self[offset as usize..end as usize]);
        Ok(())
    }
}

/// An object read whole into memory.
impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

/// Object `name` of a backend, read through [`Backend::get_range`].
pub struct RemoteObject<'a> {
    pub backend: &'a dyn Backend,
    pub kind: ObjectKind,
    pub name: &'a str,
}

impl ReadAt for RemoteObject<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match self
            .backend
            .get_range(self.kind, self.name, offset, buf.len() as u64)
        {
            Ok(bytes) if bytes.len() == buf.len() => {
                buf.copy_from_slice(&bytes);
                Ok(())
            }
            Ok(_) => Err(std::io::ErrorKind::UnexpectedEof.into()),
            Err(Error::Io { source, .. }) => Err(source),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }
}

/// The conformance suite every backend passes (run here on [`LocalDir`], and by the
/// end-to-end suite on S3 against a real Garage cluster).
#[cfg(any(test, feature = "conformance"))]
pub fn conformance(backend: &dyn Backend, tmp_dir: &Path) {
    let name = "ab".repeat(32);
    let tmp = tmp_dir.join("conformance.tmp");
    std::fs::write(&tmp, b"0123456789").unwrap();
    backend.put_file(ObjectKind::Pack, &name, &tmp).unwrap();
    assert!(!tmp.exists(), "put_file takes the temporary file");
    assert_eq!(backend.get(ObjectKind::Pack, &name).unwrap(), b"0123456789");
    assert_eq!(
        backend.get_range(ObjectKind::Pack, &name, 3, 4).unwrap(),
        b"3456"
    );
    assert!(
        backend.get_range(ObjectKind::Pack, &name, 8, 4).is_err(),
        "no short reads"
    );
    let missing = "cd".repeat(32);
    assert!(backend.get(ObjectKind::Pack, &missing).is_err());
    assert_eq!(backend.try_get(ObjectKind::Pack, &missing).unwrap(), None);
    assert_eq!(backend.size(ObjectKind::Pack, &missing).unwrap(), None);
    assert_eq!(backend.size(ObjectKind::Pack, &name).unwrap(), Some(10));
    backend
        .put_bytes(ObjectKind::Snapshot, &name, b"{}")
        .unwrap();
    let packs = backend.list(ObjectKind::Pack).unwrap();
    assert_eq!(
        packs
            .iter()
            .map(|m| (&m.name[..], m.len))
            .collect::<Vec<_>>(),
        [(&name[..], 10)]
    );
    let snaps = backend.list(ObjectKind::Snapshot).unwrap();
    assert_eq!(
        snaps
            .iter()
            .map(|m| (&m.name[..], m.len))
            .collect::<Vec<_>>(),
        [(&name[..], 2)]
    );
    // Locks are rewritten in place by their holder.
    backend.put_bytes(ObjectKind::Lock, "0f", b"one").unwrap();
    backend.put_bytes(ObjectKind::Lock, "0f", b"two!").unwrap();
    assert_eq!(backend.get(ObjectKind::Lock, "0f").unwrap(), b"two!");
    let locks = backend.list(ObjectKind::Lock).unwrap();
    assert_eq!(locks.len(), 1);
    assert!(locks[0].modified.is_some(), "locks age by their write time");
    backend.delete(ObjectKind::Lock, "0f").unwrap();
    backend.delete(ObjectKind::Pack, &name).unwrap();
    backend.delete(ObjectKind::Pack, &name).unwrap();
    assert!(backend.list(ObjectKind::Pack).unwrap().is_empty());
    assert!(backend.list(ObjectKind::Lock).unwrap().is_empty());
    assert_eq!(backend.list(ObjectKind::Snapshot).unwrap().len(), 1);
    backend.delete(ObjectKind::Snapshot, &name).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_names_are_objects_of_their_kind_only() {
        let pack = format!("packs/ab/ab{}.pack", "0".repeat(62));
        assert!(ObjectKind::Pack.name_in(&pack).is_some());
        assert_eq!(ObjectKind::Pack.name_in("packs/cd/ab00.pack"), None);
        assert_eq!(ObjectKind::Pack.name_in("packs/ab/AB00.pack"), None);
        assert_eq!(ObjectKind::Snapshot.name_in("snapshots/../x.json"), None);
        assert_eq!(ObjectKind::Snapshot.name_in("snapshots/a/b.json"), None);
        assert_eq!(ObjectKind::Lock.name_in("locks/0f.json"), Some("0f".into()));
        assert_eq!(
            ObjectKind::Lock.name_in("locks/prune.json"),
            Some("prune".into())
        );
        assert_eq!(ObjectKind::Lock.name_in("locks/../x.json"), None);
        assert_eq!(ObjectKind::Key.name_in("locks/0f.json"), None);
    }
}
