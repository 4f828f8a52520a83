//! `dedisk serve-nbd` and `dedisk mount`: snapshots used in place, read-only.

use std::sync::Arc;

use anyhow::{Context, Result};
use engine::access::nbd::{Export, Exports, Listener};
use engine::job::select::{resolve_snapshot, split_label};
use repo_format::{Repository, Snapshot, SnapshotId};

use crate::args::{Global, MountArgs, ServeNbdArgs};
use crate::context::{lock_shared, open_repo, Outcome, CANCEL};
use crate::output;

/// Every disk of `snap` as an export named `VM@ID:LABEL`, with its other names.
fn exports_of(
    id: &SnapshotId,
    snap: &Snapshot,
    latest: bool,
    label: Option<&str>,
    alias: Option<&str>,
) -> Vec<Export> {
    snap.disks
        .iter()
        .filter(|d| label.is_none_or(|l| l == d.label))
        .map(|d| {
            let mut aliases = vec![
                format!("{}:{}", id.short(), d.label),
                format!("{}:{}", id.to_hex(), d.label),
            ];
            if latest {
                aliases.push(format!("{}@latest:{}", snap.name, d.label));
            }
            if let Some(a) = alias {
                aliases.push(a.to_string());
            }
            Export {
                name: format!("{}@{}:{}", snap.name, id.short(), d.label),
                aliases,
                manifest: d.manifest,
            }
        })
        .collect()
}

/// The exports the arguments name (every disk of every snapshot with `--all`).
fn choose(repo: &Repository, specs: &[String]) -> Result<Vec<Export>> {
    let all: Vec<(SnapshotId, Snapshot)> = repo
        .list_snapshots()?
        .into_iter()
        .filter_map(|r| r.ok())
        .collect();
    let is_latest = |id: &SnapshotId, s: &Snapshot| {
        all.iter()
            .rev()
            .find(|(_, o)| o.name == s.name)
            .is_some_and(|(l, _)| l == id)
    };
    let mut out = Vec::new();
    if specs.is_empty() {
        for (id, s) in &all {
            out.extend(exports_of(id, s, is_latest(id, s), None, None));
        }
    }
    for spec in specs {
        let (snap_spec, label) = split_label(spec);
        let (id, s) =
            resolve_snapshot(repo, snap_spec).with_context(|| format!("export {spec}"))?;
        let found = exports_of(&id, &s, is_latest(&id, &s), label, Some(spec));
        if found.is_empty() {
            anyhow::bail!(
                "snapshot {} has no disk {:?}",
                id.short(),
                label.unwrap_or("")
            );
        }
        out.extend(found);
    }
    Ok(out)
}

pub fn serve_nbd(g: &Global, a: &ServeNbdArgs) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    if a.exports.is_empty() && !a.all {
        anyhow::bail!(
            "name the disks to export (SNAPSHOT[:LABEL]...), or pass --all to export every disk of every snapshot to whoever can connect"
        );
    }
    // Shared with the server threads; the exports hold the lock while serving.
    let repo = Arc::new(open_repo(g, &mut outcome)?);
    let lock = lock_shared(g, &repo, "serve-nbd", &mut outcome)?;
    let list = choose(&repo, &a.exports)?;
    if list.is_empty() {
        anyhow::bail!("the repository holds no snapshot to export");
    }
    let (listener, place) = match &a.unix {
        Some(path) => {
            let l = bind_unix(path, a.socket_mode, a.socket_owner.as_deref())?;
            (
                Listener::Unix(l),
                format!("nbd+unix:///EXPORT?socket={}", path.display()),
            )
        }
        None => {
            let l = std::net::TcpListener::bind(&a.listen)
                .with_context(|| format!("listening on {}", a.listen))?;
            let addr = l.local_addr()?;
            if !addr.ip().is_loopback() {
                log::warn!(
                    "listening on {addr}, beyond this host, without TLS or authentication: anyone who can reach it reads these disks; prefer 127.0.0.1 or --unix with --socket-mode"
                );
            }
            (Listener::Tcp(l), format!("nbd://{addr}/EXPORT"))
        }
    };
    if g.json {
        let names: Vec<_> = list
            .iter()
            .map(|e| serde_json::json!({"name": e.name, "size_bytes": e.manifest.len_bytes}))
            .collect();
        output::json(&serde_json::json!({"type": "listening", "url": place, "exports": names}));
    } else {
        output::line(format!(
            "serving {} export(s) read-only at {place} (Ctrl-C stops):",
            list.len()
        ));
        for e in &list {
            output::line(format!(
                "  {}  {}",
                e.name,
                output::bytes(e.manifest.len_bytes)
            ));
        }
    }
    let exports = Arc::new(Exports::new(repo, lock, list));
    let limits = engine::access::nbd::ServeLimits {
        max_clients: a.max_clients.into(),
        idle_timeout: std::time::Duration::from_secs(a.idle_timeout.into()),
    };
    engine::access::nbd::serve(exports, listener, limits, &CANCEL).context("NBD server")?;
    if let Some(path) = &a.unix {
        remove_socket(path);
    }
    Ok(outcome)
}

/// Removes `path` only if it is a socket (never a file someone put there).
fn remove_socket(path: &std::path::Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Binds a Unix socket at `path` with `mode` (and owner) from the start. Whatever is at
/// `path` already is only replaced when it is a socket nobody listens on any more.
fn bind_unix(
    path: &std::path::Path,
    mode: u32,
    owner: Option<&str>,
) -> Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!("{} is a socket another server listens on", path.display());
            }
            remove_socket(path); // stale: left by a server that was killed
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(_) => {}
    }
    let ids = match owner {
        None => None,
        Some(text) => {
            let (u, g) = text
                .split_once(':')
                .map_or((text, None), |(u, g)| (u, Some(g)));
            let uid: u32 = u
                .parse()
                .with_context(|| format!("--socket-owner {text}: UID"))?;
            let gid: Option<u32> = g
                .map(|g| {
                    g.parse()
                        .with_context(|| format!("--socket-owner {text}: GID"))
                })
                .transpose()?;
            Some((uid, gid))
        }
    };
    // Bound under a umask that lets nobody in, then opened up to `mode`: no moment
    // where the socket is more open than asked.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    rustix::process::umask(old);
    let l = bound.with_context(|| format!("listening on {}", path.display()))?;
    if let Some((uid, gid)) = ids {
        rustix::fs::chown(
            path,
            Some(rustix::fs::Uid::from_raw(uid)),
            gid.map(rustix::fs::Gid::from_raw),
        )
        .with_context(|| format!("changing the owner of {}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(l)
}

pub fn mount(g: &Global, a: &MountArgs) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let repo = Arc::new(open_repo(g, &mut outcome)?);
    // Held by the filesystem until it is unmounted.
    let lock = lock_shared(g, &repo, "mount", &mut outcome)?;
    let snapshot = match &a.snapshot {
        Some(spec) => Some(resolve_snapshot(&repo, spec)?.0),
        None => None,
    };
    let filter = engine::access::mount::MountFilter {
        name: a.name.clone(),
        snapshot,
    };
    let fs = engine::access::mount::SnapshotFs::new(repo, lock, filter);
    let count = fs.snapshot_count();
    let session = engine::access::mount::mount(fs, &a.mountpoint).with_context(|| {
        format!(
            "mounting at {} (is /dev/fuse there and fusermount3 installed?)",
            a.mountpoint.display()
        )
    })?;
    if g.json {
        output::json(
            &serde_json::json!({"type": "mounted", "mountpoint": a.mountpoint, "snapshots": count}),
        );
    } else {
        output::line(format!(
            "mounted {count} snapshot(s) read-only at {}; Ctrl-C or `fusermount3 -u {}` unmounts",
            a.mountpoint.display(),
            a.mountpoint.display()
        ));
    }
    // Until Ctrl-C/SIGTERM, or until someone unmounts it from outside.
    while CANCEL.check().is_ok() && !session.guard.is_finished() {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    if session.guard.is_finished() {
        // Unmounted from outside (fusermount3 -u): dropping the session would try again
        // and log a failure for nothing.
        std::mem::forget(session);
    } else {
        drop(session); // unmounts
    }
    Ok(outcome)
}
