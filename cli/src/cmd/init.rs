//! `dedisk init`: a new repository.

use anyhow::{bail, Context, Result};
use repo_format::crypto::{KdfParams, KeyFile, MasterKey};
use repo_format::{ChunkerAlgorithm, ChunkerParams, CompressionParams, RepoConfig, Repository};
use serde_json::json;

use crate::args::{ChunkerArg, EncryptionArg, Global, InitArgs, KdfArgs};
use crate::context::Outcome;
use crate::output;

pub fn init(g: &Global, a: &InitArgs) -> Result<Outcome> {
    let path = a
        .path
        .as_deref()
        .or(g.repo.as_deref())
        .context("where? give `dedisk init REPO` or --repo")?;
    let path = repo_format::Location::parse(path)?;
    let algorithm = match a.chunker {
        ChunkerArg::AlignedCdc => ChunkerAlgorithm::AlignedCdc,
        ChunkerArg::Fastcdc => ChunkerAlgorithm::Fastcdc,
        ChunkerArg::Fixed => ChunkerAlgorithm::Fixed,
    };
    let mut chunker = ChunkerParams::default_for(algorithm);
    if let Some(k) = a.chunk_min {
        chunker.min_bytes = k.saturating_mul(1024);
    }
    if let Some(k) = a.chunk_avg {
        chunker.avg_bytes = k.saturating_mul(1024);
    }
    if let Some(k) = a.chunk_max {
        chunker.max_bytes = k.saturating_mul(1024);
    }
    chunker.zero_run_min_bytes = chunker
        .zero_run_min_bytes
        .min(chunker.min_bytes.max(chunker.align_bytes));
    chunker.zero_run_min_bytes -= chunker.zero_run_min_bytes % chunker.align_bytes;
    if let Some(t) = a.file_start_tail {
        chunker.file_start_tail_bytes = t;
    }
    if let Err(e) = chunker.validate() {
        bail!("invalid chunker settings: {e}");
    }
    let compression = CompressionParams {
        level: a.compression_level,
        ..CompressionParams::default()
    };
    let config = RepoConfig::new(chunker, compression, a.pack_size << 20)?;
    let repo = match a.encryption {
        EncryptionArg::None => {
            if g.key_file.is_some() {
                bail!("--key-file is for encrypted repositories; drop it or --encryption none");
            }
            Repository::init(path.clone(), config)
        }
        EncryptionArg::Aes256Gcm => {
            // Checked before the password is asked for: nothing to type in vain.
            if let Some(kf) = &g.key_file {
                if kf.exists() || kf.is_symlink() {
                    bail!(
                        "key file {} already exists; refusing to overwrite it",
                        kf.display()
                    );
                }
            }
            let password = crate::context::new_password(true)?;
            let master = MasterKey::generate()?;
            let label = key_label(a.key_label.as_deref());
            let key = KeyFile::wrap(
                &master,
                &password,
                kdf_params(&a.kdf),
                &config.repo_id.0,
                &label,
            )?;
            Repository::init_encrypted(path.clone(), config, master, &key, g.key_file.as_deref())
        }
    }
    .with_context(|| format!("creating repository {path}"))?;
    let c = repo.config();
    if g.json {
        output::json(
            &json!({"type": "init", "repo": path.to_string(), "config": c, "encrypted": repo.is_encrypted()}),
        );
    } else {
        output::line(format!(
            "created {} repository {} (id {}, chunker {} {}/{}/{} KiB, zstd level {})",
            if repo.is_encrypted() {
                "encrypted"
            } else {
                "UNENCRYPTED"
            },
            path,
            c.repo_id.short(),
            c.chunker.algorithm,
            c.chunker.min_bytes / 1024,
            c.chunker.avg_bytes / 1024,
            c.chunker.max_bytes / 1024,
            c.compression.level
        ));
    }
    Ok(Outcome::default())
}

/// argon2id parameters from the command line.
pub fn kdf_params(a: &KdfArgs) -> KdfParams {
    KdfParams {
        m_kib: a.kdf_memory * 1024,
        t: a.kdf_passes,
        p: a.kdf_lanes,
    }
}

/// A key's label: the one given, else this host's name.
pub fn key_label(given: Option<&str>) -> String {
    given
        .map(String::from)
        .unwrap_or_else(repo_format::lock::hostname)
}
