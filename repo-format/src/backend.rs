//! Where a repository's objects live: one small contract, [`Backend`], and its first
//! implementation, [`LocalDir`] (the directory layout of FORMAT.md, section 1). An
//! object store (S3) is a second implementation of the same trait; the repository, the
//! store that writes packs and prune's deletions only ever talk to the trait.
//!
//! Every object is immutable once put: packs and snapshots are named by the BLAKE3 of
//! their bytes, so "put" never replaces different content under a name.

use std::path::{Path, PathBuf};

use crate::durable::{create_private_dir, rename_durable, sync_dir, write_atomic};
use crate::error::{Error, IoContext, Result};

/// The kinds of object a repository keeps; each is one folder locally and one key
/// prefix in an object store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// `packs/XX/<id>.pack`, sharded by the id's first byte.
    Pack,
    /// `snapshots/<id>.json`.
    Snapshot,
}

/// The storage contract. Names are lower-case hex ids (checked by the callers that
/// parse them); implementations must be safe to call from many threads at once.
pub trait Backend: Send + Sync {
    /// Makes the finished file `tmp` (written by this process in the repository's
    /// `tmp/`) the object `name`: whole or not at all, durable when this returns, `tmp`
    /// gone afterwards.
    fn put_file(&self, kind: ObjectKind, name: &str, tmp: &Path) -> Result<()>;
    /// Stores `bytes` as the object `name`, with the same guarantees.
    fn put_bytes(&self, kind: ObjectKind, name: &str, bytes: &[u8]) -> Result<()>;
    /// Exactly `len` bytes of object `name` from `offset`; an object that is shorter is
    /// an error, never a short read.
    fn get_range(&self, kind: ObjectKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// The whole object.
    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>>;
    /// Every object of `kind` as (name, length in bytes), in no particular order. Entries
    /// that are not objects of this kind (stray files) are skipped with a warning.
    fn list(&self, kind: ObjectKind) -> Result<Vec<(String, u64)>>;
    /// Deletes object `name`, durably; an object already gone is not an error (a killed
    /// prune's next run deletes again).
    fn delete(&self, kind: ObjectKind, name: &str) -> Result<()>;
}

/// A repository directory on a local (or mounted) filesystem.
#[derive(Clone, Debug)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    pub fn new(root: &Path) -> Self {
        LocalDir { root: root.into() }
    }

    /// Where object `name` of `kind` lives.
    pub fn path(&self, kind: ObjectKind, name: &str) -> PathBuf {
        match kind {
            ObjectKind::Pack => {
                let shard = name.get(..2).unwrap_or("00");
                self.root
                    .join("packs")
                    .join(shard)
                    .join(format!("{name}.pack"))
            }
            ObjectKind::Snapshot => self.root.join("snapshots").join(format!("{name}.json")),
        }
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn suffix(kind: ObjectKind) -> &'static str {
        match kind {
            ObjectKind::Pack => ".pack",
            ObjectKind::Snapshot => ".json",
        }
    }
}

impl Backend for LocalDir {
    fn put_file(&self, kind: ObjectKind, name: &str, tmp: &Path) -> Result<()> {
        let path = self.path(kind, name);
        if let Some(dir) = path.parent() {
            create_private_dir(dir)?;
        }
        rename_durable(tmp, &path)
    }

    fn put_bytes(&self, kind: ObjectKind, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(kind, name);
        if let Some(dir) = path.parent() {
            create_private_dir(dir)?;
        }
        write_atomic(&path, &self.tmp_dir(), bytes)
    }

    fn get_range(&self, kind: ObjectKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let path = self.path(kind, name);
        let file = std::fs::File::open(&path).at(&path)?;
        let mut buf =
            vec![
                0u8;
                usize::try_from(len)
                    .map_err(|_| Error::io(&path, std::io::ErrorKind::InvalidInput.into()))?
            ];
        file.read_exact_at(&mut buf, offset).at(&path)?;
        Ok(buf)
    }

    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>> {
        let path = self.path(kind, name);
        std::fs::read(&path).at(&path)
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<(String, u64)>> {
        let suffix = Self::suffix(kind);
        let dirs = match kind {
            ObjectKind::Snapshot => vec![self.root.join("snapshots")],
            ObjectKind::Pack => {
                let top = self.root.join("packs");
                let mut dirs = Vec::new();
                for sub in std::fs::read_dir(&top).at(&top)? {
                    let sub = sub.at(&top)?.path();
                    if sub.is_dir() {
                        dirs.push(sub);
                    }
                }
                dirs
            }
        };
        let mut out = Vec::new();
        for dir in dirs {
            for e in std::fs::read_dir(&dir).at(&dir)? {
                let e = e.at(&dir)?;
                let path = e.path();
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(suffix))
                    .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_hexdigit()));
                match name {
                    Some(n) => {
                        // Gone since it was listed (a prune beside us): not listed.
                        let Ok(meta) = e.metadata() else { continue };
                        out.push((n.to_string(), meta.len()));
                    }
                    None if kind == ObjectKind::Pack => {
                        log::warn!("ignoring unexpected file {}", path.display())
                    }
                    None => {}
                }
            }
        }
        Ok(out)
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<()> {
        let path = self.path(kind, name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
        match path.parent() {
            Some(dir) => sync_dir(dir),
            None => Ok(()),
        }
    }
}

/// The conformance suite every backend passes (run here on [`LocalDir`]; an object
/// store runs the same function against a real server).
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
    assert!(backend
        .get(ObjectKind::Pack, "cd".repeat(32).as_str())
        .is_err());
    backend
        .put_bytes(ObjectKind::Snapshot, &name, b"{}")
        .unwrap();
    assert_eq!(
        backend.list(ObjectKind::Pack).unwrap(),
        [(name.clone(), 10)]
    );
    assert_eq!(
        backend.list(ObjectKind::Snapshot).unwrap(),
        [(name.clone(), 2)]
    );
    backend.delete(ObjectKind::Pack, &name).unwrap();
    backend.delete(ObjectKind::Pack, &name).unwrap();
    assert!(backend.list(ObjectKind::Pack).unwrap().is_empty());
    assert_eq!(backend.list(ObjectKind::Snapshot).unwrap().len(), 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_dir_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["packs", "snapshots", "tmp"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("snapshots").join("notes.txt"), b"x").unwrap();
        conformance(&LocalDir::new(dir.path()), &dir.path().join("tmp"));
    }
}
