//! What every command shares: its [`Outcome`], the cancellation flag, opening the
//! repository and taking its locks. Commands import from here; this module imports from
//! no command.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use repo_format::backend::Backend;
use repo_format::crypto::MasterKey;
use repo_format::lock::{ExclusiveLock, SharedLock};
use repo_format::{Location, Repository};

use crate::args::Global;

/// What a command reports besides its output.
#[derive(Default)]
pub struct Outcome {
    /// Things the user should know; exit code 3 when non-empty.
    pub warnings: Vec<String>,
}

/// Set by SIGINT/SIGTERM (see `main`): backup and restore stop at the next safe point.
pub static CANCEL: std::sync::LazyLock<engine::cancel::Cancel> =
    std::sync::LazyLock::new(engine::cancel::Cancel::new);

/// Where `--repo` (or DEDISK_REPO) says the repository is: a directory or
/// `s3://BUCKET/PREFIX`.
pub fn repo_location(g: &Global) -> Result<Location> {
    let text = g
        .repo
        .as_deref()
        .context("no repository given: pass --repo REPO or set DEDISK_REPO")?;
    Ok(Location::parse(text)?)
}

/// The repository's location and a connection to it (for S3, checked with one request).
pub fn connect(g: &Global) -> Result<(Location, Arc<dyn Backend>)> {
    let at = repo_location(g)?;
    let store = at
        .connect()
        .with_context(|| format!("opening repository {at}"))?;
    Ok((at, store))
}

/// The master key this process unlocked, so that a command run again (after an index
/// recovery) or a second open does not ask for the password twice.
static UNLOCKED: std::sync::Mutex<Option<(String, MasterKey)>> = std::sync::Mutex::new(None);

/// Asks on the terminal, when there is one (never when stdin is a pipe or a file: a
/// script gets the clear error instead of a hang).
fn prompt(message: &str) -> engine::Result<engine::secret::Password> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(engine::Error::Password {
            what: "password".into(),
            reason: "none given: set DEDISK_PASSWORD, DEDISK_PASSWORD_FILE or DEDISK_PASSWORD_COMMAND, or run on a terminal".into(),
        });
    }
    rpassword::prompt_password(message)
        .map(|p| zeroize::Zeroizing::new(p.into_bytes()))
        .map_err(|e| engine::Error::Password {
            what: "terminal".into(),
            reason: e.to_string(),
        })
}

/// How this command unlocks an encrypted repository: `--key-file`, the password
/// variables, else a prompt.
pub fn key_access(g: &Global) -> engine::secret::KeyAccess<'_> {
    engine::secret::KeyAccess {
        key_file: g.key_file.as_deref(),
        password: engine::secret::PasswordFrom::from_env(),
        prompt: Some(&prompt),
    }
}

/// A new password (for `init`, `key add`, `key passwd`, `key import`):
/// DEDISK_NEW_PASSWORD, DEDISK_NEW_PASSWORD_FILE, else asked twice on the terminal.
/// `init` also takes the DEDISK_PASSWORD variables, which later commands read.
pub fn new_password(also_current: bool) -> Result<engine::secret::Password> {
    use engine::secret::PasswordFrom;
    let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    let from = var("DEDISK_NEW_PASSWORD")
        .map(PasswordFrom::Text)
        .or_else(|| var("DEDISK_NEW_PASSWORD_FILE").map(|f| PasswordFrom::File(f.into())))
        .or_else(|| also_current.then(PasswordFrom::from_env).flatten());
    if let Some(from) = from {
        return Ok(from.read()?);
    }
    let first = prompt("new password: ")?;
    let again = prompt("the same password again: ")?;
    if first != again {
        anyhow::bail!("the two passwords differ; nothing was changed");
    }
    Ok(first)
}

/// The master key of the encrypted repository in `store` (asking at most once per
/// process), with the key file that opened it.
pub fn unlock(
    g: &Global,
    store: &Arc<dyn Backend>,
    config: &repo_format::RepoConfig,
) -> Result<(MasterKey, Option<repo_format::keys::Opener>)> {
    let here = store.describe();
    let mut cached = UNLOCKED.lock().expect("no panic holds it");
    if let Some((p, key)) = cached.as_ref() {
        if *p == here {
            return Ok((key.clone(), None));
        }
    }
    let (key, opener) = engine::secret::unlock(&**store, config, &key_access(g))
        .with_context(|| format!("opening repository {here}"))?;
    *cached = Some((here, key.clone()));
    Ok((key, Some(opener)))
}

/// Opens the repository `--repo` names with its key if it is encrypted, without
/// turning repairs into warnings.
pub fn open_quietly(g: &Global) -> Result<Repository> {
    let (at, store) = connect(g)?;
    let config =
        Repository::read_config(&*store).with_context(|| format!("opening repository {at}"))?;
    let master = if config.is_encrypted() {
        Some(unlock(g, &store, &config)?.0)
    } else {
        None
    };
    Repository::open_as(store, config, master).with_context(|| format!("opening repository {at}"))
}

/// Opens the target of `dedisk copy`: `to` with its own key (`key_file`, else the
/// DEDISK_TO_PASSWORD variables, else a prompt naming it).
pub fn open_target(to: &str, key_file: Option<&std::path::Path>) -> Result<Repository> {
    let at = Location::parse(to)?;
    let access = engine::secret::KeyAccess {
        key_file,
        password: engine::secret::PasswordFrom::from_env_prefixed("DEDISK_TO_"),
        prompt: Some(&prompt),
    };
    engine::secret::open_repository(&at, &access)
        .with_context(|| format!("opening target repository {at}"))
}

/// Opens the repository, turning what opening had to repair into warnings.
pub fn open_repo(g: &Global, out: &mut Outcome) -> Result<Repository> {
    let repo = open_quietly(g)?;
    let r = repo.index_repair;
    if r.rebuilt {
        out.warnings.push(format!(
            "the index was missing or unusable and was rebuilt from {} packs",
            r.packs_added
        ));
    }
    Ok(repo)
}

/// A shared lock, waiting up to `--lock-wait` seconds for a conflicting holder (a
/// nightly backup should wait for a prune to finish, not fail). What the reconciliation
/// under the lock found missing becomes a warning in `out`: it is true (no prune can be
/// running), unlike what an unlocked open sees.
pub fn lock_shared(
    g: &Global,
    repo: &Repository,
    command: &str,
    out: &mut Outcome,
) -> Result<SharedLock> {
    let lock = engine::locking::shared(repo, command, Duration::from_secs(g.lock_wait), &CANCEL)
        .context("locking the repository")?;
    warn_dropped(&lock, out);
    Ok(lock)
}

/// A prune's lock, waiting as [`lock_shared`] does (for another prune or an exclusive
/// holder only).
pub fn lock_prune(
    g: &Global,
    repo: &Repository,
    command: &str,
    out: &mut Outcome,
) -> Result<repo_format::lock::PruneLock> {
    let lock = engine::locking::prune(repo, command, Duration::from_secs(g.lock_wait), &CANCEL)
        .context("locking the repository")?;
    warn_dropped(&lock, out);
    Ok(lock)
}

/// An exclusive lock, waiting as [`lock_shared`] does.
pub fn lock_exclusive(
    g: &Global,
    repo: &Repository,
    command: &str,
    out: &mut Outcome,
) -> Result<ExclusiveLock> {
    let lock = engine::locking::exclusive(repo, command, Duration::from_secs(g.lock_wait), &CANCEL)
        .context("locking the repository")?;
    warn_dropped(&lock, out);
    Ok(lock)
}

fn warn_dropped(lock: &SharedLock, _out: &mut Outcome) {
    // Packs vanish when a prune (on this host or another, beside us since issue 15)
    // sweeps them: not a warning. A pack a snapshot needs that is gone is what
    // `verify` and every read report, naming it.
    let dropped = lock.reconciled().packs_dropped;
    if dropped > 0 {
        log::info!(
            "{dropped} pack(s) deleted since this host last looked were dropped from its index"
        );
    }
}
