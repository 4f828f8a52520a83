//! `dedisk key ...`: the key files of an encrypted repository (FORMAT.md, section 10.2).

use std::io::Read;

use anyhow::{bail, Context, Result};
use repo_format::crypto::{paper_key, parse_paper_key, KeyFile, MasterKey};
use repo_format::keys::{self, Opener};
use repo_format::Repository;
use serde_json::json;

use crate::args::{Global, KeyWhat};
use crate::cmd::init::{kdf_params, key_label};
use crate::context::{connect, new_password, unlock, Outcome};
use crate::output;

/// What `key export FILE` writes: the master key and the repository it belongs to.
#[derive(serde::Serialize, serde::Deserialize)]
struct ExportedKey {
    /// Always "dedisk master key".
    kind: String,
    repo_id: String,
    key: String,
}

pub fn key(g: &Global, what: &KeyWhat) -> Result<Outcome> {
    let (path, store) = connect(g)?;
    let config =
        Repository::read_config(&*store).with_context(|| format!("opening repository {path}"))?;
    if !config.is_encrypted() {
        bail!("{path} is not encrypted (format version 1): it has no keys");
    }
    let repo_id = config.repo_id.0;
    match what {
        KeyWhat::List => {
            let mut out = Outcome::default();
            let list = keys::list(&*store)?;
            let mut rows = Vec::new();
            for k in list {
                match k {
                    Ok(k) => rows.push(k),
                    Err(e) => out.warnings.push(e.to_string()),
                }
            }
            if g.json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|k| {
                        json!({"id": k.id, "label": k.file.label, "created": k.file.created,
                        "kdf": k.file.kdf, "params": k.file.params})
                    })
                    .collect();
                output::json(&json!({"type": "keys", "keys": v}));
            } else {
                if rows.is_empty() {
                    output::line("no key files in keys/ (the key is kept elsewhere: --key-file)");
                }
                for k in &rows {
                    output::line(format!(
                        "{}  {}  {}  argon2id {} MiB, {} passes, {} lanes",
                        k.id,
                        k.file.created,
                        repo_format::names::escape(&k.file.label),
                        k.file.params.m_kib / 1024,
                        k.file.params.t,
                        k.file.params.p
                    ));
                }
            }
            Ok(out)
        }
        KeyWhat::Add { label, kdf } => {
            let (master, _) = unlock(g, &store, &config)?;
            let id = add_key(&*store, &master, &repo_id, label.as_deref(), kdf)?;
            report(g, "key-add", &id, format!("added key {id}"));
            Ok(Outcome::default())
        }
        KeyWhat::Remove { id } => {
            // Only someone who can open the repository may take a key away.
            let (_, opener) = unlock(g, &store, &config)?;
            let external = matches!(opener, Some(Opener::External(_)));
            keys::remove(&*store, id, external)?;
            report(g, "key-remove", id, format!("removed key {id}"));
            Ok(Outcome::default())
        }
        KeyWhat::Passwd { kdf } => {
            let (master, opener) = unlock(g, &store, &config)?;
            let password = new_password(false)?;
            match opener {
                Some(Opener::Stored(old)) => {
                    let label = keys::list(&*store)?
                        .into_iter()
                        .flatten()
                        .find(|k| k.id == old)
                        .map(|k| k.file.label);
                    let kf = KeyFile::wrap(
                        &master,
                        &password,
                        kdf_params(kdf),
                        &repo_id,
                        &key_label(label.as_deref()),
                    )?;
                    // The new key is durable before the old one goes.
                    let id = keys::add(&*store, &kf)?;
                    keys::remove(&*store, &old, true)?;
                    report(
                        g,
                        "key-passwd",
                        &id,
                        format!("password changed: key {old} replaced by {id}"),
                    );
                }
                Some(Opener::External(file)) => {
                    let old = keys::read(&file)?;
                    let kf =
                        KeyFile::wrap(&master, &password, kdf_params(kdf), &repo_id, &old.label)?;
                    let tmp = file.with_extension(format!(
                        "new-{}",
                        hex::encode(&repo_format::ids::random_bytes()?[..4])
                    ));
                    keys::write_external(&tmp, &kf)?;
                    std::fs::rename(&tmp, &file)
                        .with_context(|| format!("replacing {}", file.display()))?;
                    report(
                        g,
                        "key-passwd",
                        &file.display().to_string(),
                        format!("password changed in {}", file.display()),
                    );
                }
                None => bail!("no key file opened the repository in this process"),
            }
            Ok(Outcome::default())
        }
        KeyWhat::Export { file, paper } => {
            let (master, _) = unlock(g, &store, &config)?;
            if *paper {
                output::line(format!(
                    "dedisk master key of repository {}\n{}",
                    config.repo_id,
                    paper_key(&master)
                ));
            }
            if let Some(file) = file {
                let bytes = serde_json::to_vec_pretty(&ExportedKey {
                    kind: "dedisk master key".into(),
                    repo_id: config.repo_id.to_hex(),
                    key: hex::encode(master.expose()),
                })?;
                write_private(file, &bytes)?;
                report(
                    g,
                    "key-export",
                    &file.display().to_string(),
                    format!("master key written to {} (keep it offline)", file.display()),
                );
            }
            Ok(Outcome::default())
        }
        KeyWhat::Import { from, label, kdf } => {
            let master = read_exported(from, &config)?;
            // The right key for this repository opens its config's MAC.
            config
                .check_mac(
                    &store.object_name(repo_format::backend::ObjectKind::Config, ""),
                    &master,
                )
                .context("the imported key is not this repository's")?;
            let id = add_key(&*store, &master, &repo_id, label.as_deref(), kdf)?;
            report(
                g,
                "key-import",
                &id,
                format!("added key {id} from the exported master key"),
            );
            Ok(Outcome::default())
        }
    }
}

/// Wraps `master` under a new password (asked for, or DEDISK_NEW_PASSWORD) into a new
/// key file in `keys/`; returns its id.
fn add_key(
    store: &dyn repo_format::backend::Backend,
    master: &MasterKey,
    repo_id: &[u8],
    label: Option<&str>,
    kdf: &crate::args::KdfArgs,
) -> Result<String> {
    let password = new_password(false)?;
    let kf = KeyFile::wrap(
        master,
        &password,
        kdf_params(kdf),
        repo_id,
        &key_label(label),
    )?;
    Ok(keys::add(store, &kf)?)
}

fn report(g: &Global, kind: &str, id: &str, text: String) {
    if g.json {
        output::json(&json!({"type": kind, "id": id}));
    } else {
        output::line(text);
    }
}

/// A new private file, never through a symlink, never over an existing file.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    engine::io::write_new_file(path, 0o600, bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// The master key from a file `key export` wrote, or from the paper form on stdin (`-`).
fn read_exported(from: &std::path::Path, config: &repo_format::RepoConfig) -> Result<MasterKey> {
    let mut text = zeroize::Zeroizing::new(String::new());
    if from == std::path::Path::new("-") {
        std::io::stdin()
            .take(64 * 1024)
            .read_to_string(&mut text)
            .context("reading the paper key from stdin")?;
        // Only the numbered lines count: the heading `key export --paper` prints (and
        // anything else around them) may be pasted back in too.
        let body: String = text
            .lines()
            .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
            .map(|l| format!("{l}\n"))
            .collect();
        return Ok(parse_paper_key(&body)?);
    }
    std::fs::File::open(from)
        .and_then(|f| f.take(64 * 1024).read_to_string(&mut text))
        .with_context(|| format!("reading {}", from.display()))?;
    let e: ExportedKey = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a key `dedisk key export` wrote", from.display()))?;
    if e.kind != "dedisk master key" {
        bail!("{}: not a dedisk master key", from.display());
    }
    if e.repo_id != config.repo_id.to_hex() {
        bail!(
            "{}: the key of repository {}, not of this one ({})",
            from.display(),
            &e.repo_id.chars().take(8).collect::<String>(),
            config.repo_id.short()
        );
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(e.key.as_bytes(), &mut bytes)
        .with_context(|| format!("{}: key is not 64 hex digits", from.display()))?;
    Ok(MasterKey::from_bytes(bytes))
}
