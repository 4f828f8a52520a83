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
