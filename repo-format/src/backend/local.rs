//! [`LocalDir`]: a repository directory on a local (or mounted) filesystem.

use std::path::{Path, PathBuf};

use super::{Backend, ObjectKind, ObjectMeta};
use crate::durable::{create_private_dir, rename_durable, sync_dir, write_atomic};
use crate::error::{Error, IoContext, Result};

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
        self.root.join(kind.relative_path(name))
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The folders objects of `kind` are listed from.
    fn folders(&self, kind: ObjectKind) -> Result<Vec<PathBuf>> {
        let top = self.root.join(kind.folder());
        if kind != ObjectKind::Pack {
            return Ok(vec![top]);
        }
        let mut dirs = Vec::new();
        let entries = match std::fs::read_dir(&top) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(dirs),
            Err(e) => return Err(Error::io(&top, e)),
        };
        for sub in entries {
            let sub = sub.at(&top)?.path();
            if sub.is_dir() {
                dirs.push(sub);
            }
        }
        Ok(dirs)
    }
}

impl Backend for LocalDir {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn object_name(&self, kind: ObjectKind, name: &str) -> PathBuf {
        self.path(kind, name)
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn local_path(&self, kind: ObjectKind, name: &str) -> Option<PathBuf> {
        Some(self.path(kind, name))
    }

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
        let len = usize::try_from(len)
            .map_err(|_| Error::io(&path, std::io::ErrorKind::InvalidInput.into()))?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).at(&path)?;
        Ok(buf)
    }

    fn try_get(&self, kind: ObjectKind, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(kind, name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn size(&self, kind: ObjectKind, name: &str) -> Result<Option<u64>> {
        let path = self.path(kind, name);
        match std::fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectMeta>> {
        if kind == ObjectKind::Config {
            let path = self.path(kind, "");
            return Ok(std::fs::metadata(&path)
                .ok()
                .map(|m| ObjectMeta {
                    name: String::new(),
                    len: m.len(),
                    modified: m.modified().ok(),
                })
                .into_iter()
                .collect());
        }
        let mut out = Vec::new();
        for dir in self.folders(kind)? {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&dir, e)),
            };
            for e in entries {
                let e = e.at(&dir)?;
                let path = e.path();
                let relative = path
                    .strip_prefix(&self.root)
                    .ok()
                    .and_then(|p| p.to_str())
                    .and_then(|p| kind.name_in(p));
                match relative {
                    Some(name) => {
                        // Gone since it was listed (a prune beside us): not listed.
                        let Ok(meta) = e.metadata() else { continue };
                        out.push(ObjectMeta {
                            name,
                            len: meta.len(),
                            modified: meta.modified().ok(),
                        });
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

    fn writable(&self) -> bool {
        rustix::fs::access(&self.root, rustix::fs::Access::WRITE_OK).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_dir_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["packs", "snapshots", "tmp", "locks"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("snapshots").join("notes.txt"), b"x").unwrap();
        super::super::conformance(&LocalDir::new(dir.path()), &dir.path().join("tmp"));
    }
}
