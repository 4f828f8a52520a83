//! The local cache of a host (FORMAT.md, section 10.5): what this host keeps about a
//! repository outside it. For an encrypted repository that is its index (which would
//! tell an outsider every blob's size and kind) and the newest snapshots this host has
//! seen (to notice a rollback). Rebuildable: deleting it costs a rescan, never data.

use std::path::PathBuf;

use crate::ids::RepoId;

/// `$DEDISK_CACHE_DIR`, else `$XDG_CACHE_HOME/dedisk`, else `$HOME/.cache/dedisk`, else
/// `/var/cache/dedisk`; then the repository's id.
pub fn dir_for(repo: &RepoId) -> PathBuf {
    let base = std::env::var_os("DEDISK_CACHE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .filter(|v| !v.is_empty())
                .map(|x| PathBuf::from(x).join("dedisk"))
        })
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache").join("dedisk"))
        })
        .unwrap_or_else(|| PathBuf::from("/var/cache/dedisk"));
    base.join(repo.to_hex())
}

/// A JSON record of the cache folder `dir`: `T::default()` when it is missing, larger
/// than `max_bytes` (a damaged or planted file is not read whole), not a regular file,
/// or unreadable (logged): a cache is never a reason to fail.
pub fn load_json<T: serde::de::DeserializeOwned + Default>(
    dir: &std::path::Path,
    name: &str,
    max_bytes: u64,
) -> T {
    let p = dir.join(name);
    let read = std::fs::symlink_metadata(&p)
        .ok()
        .filter(|m| m.is_file() && m.len() <= max_bytes)
        .and_then(|_| std::fs::read(&p).ok());
    match read.map(|b| serde_json::from_slice(&b)) {
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            log::warn!("ignoring unreadable {}: {e}", p.display());
            T::default()
        }
        None => T::default(),
    }
}

/// Writes a JSON record into the cache folder `dir` durably (private folder, atomic
/// rename).
pub fn save_json<T: serde::Serialize>(
    dir: &std::path::Path,
    name: &str,
    value: &T,
) -> crate::error::Result<()> {
    crate::durable::create_private_dir(dir)?;
    let bytes = serde_json::to_vec_pretty(value).expect("cache records serialize");
    crate::durable::write_atomic(&dir.join(name), dir, &bytes)
}
