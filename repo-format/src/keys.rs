//! The key files of an encrypted repository (FORMAT.md, section 10.2): `keys/<16 hex>.json`,
//! each the master key wrapped by one password, or one file kept outside the repository
//! (`--key-file`) for repositories on storage that should not even hold the wrapped key.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::backend::{Backend, ObjectKind};
use crate::crypto::{KeyFile, MasterKey};
use crate::durable::{sync_dir, PRIVATE_FILE_MODE};
use crate::error::{Error, IoContext, Result};

/// One key file found in `keys/`.
#[derive(Clone, Debug)]
pub struct StoredKey {
    /// The 16 hex digits of its name.
    pub id: String,
    /// Where it is, for messages.
    pub path: PathBuf,
    pub file: KeyFile,
}

/// The most a key file can hold; anything larger is not one.
const MAX_KEY_FILE: usize = 64 * 1024;

/// Every key file in `keys/`, by name; an unreadable one comes back as an error in the
/// list (it never hides the others).
pub fn list(backend: &dyn Backend) -> Result<Vec<Result<StoredKey>>> {
    let mut names: Vec<String> = backend
        .list(ObjectKind::Key)?
        .into_iter()
        .filter(|m| m.name.len() == 16)
        .map(|m| m.name)
        .collect();
    names.sort();
    let mut out = Vec::new();
    for id in names {
        let path = backend.object_name(ObjectKind::Key, &id);
        let parsed = backend.get(ObjectKind::Key, &id).and_then(|bytes| {
            if bytes.len() > MAX_KEY_FILE {
                return Err(Error::BadKey {
                    what: path.display().to_string(),
                    reason: "larger than a key file can be".into(),
                });
            }
            KeyFile::parse(&bytes, &path.display().to_string())
        });
        out.push(parsed.map(|file| StoredKey { id, path, file }));
    }
    Ok(out)
}

/// Reads and parses one key file (in `keys/` or anywhere), refusing to follow a
/// symlink or to read more than a key file can hold.
pub fn read(path: &Path) -> Result<KeyFile> {
    use std::io::Read;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .at(path)?;
    let mut bytes = Vec::new();
    f.take(MAX_KEY_FILE as u64)
        .read_to_end(&mut bytes)
        .at(path)?;
    KeyFile::parse(&bytes, &path.display().to_string())
}

/// Adds a key file to `keys/` durably; returns its id.
pub fn add(backend: &dyn Backend, key: &KeyFile) -> Result<String> {
    let id = hex::encode(&crate::ids::random_bytes()?[..8]);
    backend.put_bytes(ObjectKind::Key, &id, &key.to_bytes())?;
    Ok(id)
}

/// Writes a key file outside the repository: a new private file (never an existing
/// one, never through a symlink), fsync'd.
pub fn write_external(path: &Path, key: &KeyFile) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .at(path)?;
    f.write_all(&key.to_bytes()).at(path)?;
    f.sync_all().at(path)?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Removes key `id` from `keys/`, refusing to remove the last one that opens (a
/// repository without a key is lost) unless `external` says a key file outside the
/// repository opened it.
pub fn remove(backend: &dyn Backend, id: &str, external: bool) -> Result<()> {
    let keys = list(backend)?;
    let readable = keys.iter().filter(|k| k.is_ok()).count();
    let target = keys
        .iter()
        .flatten()
        .find(|k| k.id == id)
        .ok_or_else(|| Error::BadKey {
            what: format!("key {id}"),
            reason: "no such key in keys/ (`dedisk key list` shows them)".into(),
        })?;
    if readable <= 1 && !external {
        return Err(Error::BadKey {
            what: format!("key {id}"),
            reason: "it is the repository's last key: refusing to remove it (add another first)"
                .into(),
        });
    }
    backend.delete(ObjectKind::Key, &target.id)
}

/// Which key file opened the repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opener {
    /// `keys/<id>.json`.
    Stored(String),
    /// A key file outside the repository.
    External(PathBuf),
}

/// The master key: from `external` if given, else from the first key file in `keys/`
/// that `password` opens (each try costs one argon2id run). A wrong password is
/// [`Error::WrongPassword`]; no key file at all is [`Error::NoKeyFile`].
pub fn unlock(
    backend: &dyn Backend,
    external: Option<&Path>,
    password: &[u8],
    repo_id: &[u8],
) -> Result<(MasterKey, Opener)> {
    if let Some(path) = external {
        let kf = read(path)?;
        let key = kf.unwrap_key(password, repo_id, &path.display().to_string())?;
        return Ok((key, Opener::External(path.into())));
    }
    let mut damaged = Vec::new();
    let mut tried = Vec::new();
    for k in list(backend)? {
        match k {
            Ok(k) => {
                tried.push(k.path.clone());
                match k
                    .file
                    .unwrap_key(password, repo_id, &k.path.display().to_string())
                {
                    Ok(key) => return Ok((key, Opener::Stored(k.id))),
                    Err(Error::WrongPassword { .. }) => {}
                    Err(e) => damaged.push(e.to_string()),
                }
            }
            Err(e) => damaged.push(e.to_string()),
        }
    }
    if tried.is_empty() && damaged.is_empty() {
        return Err(Error::NoKeyFile {
            path: backend.describe().into(),
        });
    }
    let mut what = match tried.as_slice() {
        [one] => one.display().to_string(),
        _ => format!(
            "{}/keys ({} key files tried)",
            backend.describe(),
            tried.len()
        ),
    };
    if !damaged.is_empty() {
        what.push_str(&format!("; unusable: {}", damaged.join("; ")));
    }
    Err(Error::WrongPassword { key: what })
}
