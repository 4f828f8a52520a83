//! `dedisk init`: a new repository.

use anyhow::{bail, Context, Result};
use repo_format::{ChunkerAlgorithm, ChunkerParams, CompressionParams, RepoConfig, Repository};
use serde_json::json;

use crate::args::{ChunkerArg, Global, InitArgs};
use crate::context::Outcome;
use crate::output;

pub fn init(g: &Global, a: &InitArgs) -> Result<Outcome> {
    let path = a
        .path
        .as_deref()
        .or(g.repo.as_deref())
        .context("where? give `dedisk init REPO` or --repo")?;
    let algorithm = match a.chunker {
        ChunkerArg::AlignedCdc => ChunkerAlgorithm::AlignedCdc,
        ChunkerArg::Fastcdc => ChunkerAlgorithm::Fastcdc,
        ChunkerArg::Fixed => ChunkerAlgorithm::Fixed,
    };
    let mut chunker = ChunkerParams {
        algorithm,
        ..ChunkerParams::default()
    };
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
    if let Err(e) = chunker.validate() {
        bail!("invalid chunk sizes: {e}");
    }
    let compression = CompressionParams {
        level: a.compression_level,
        ..CompressionParams::default()
    };
    let config = RepoConfig::new(chunker, compression, a.pack_size << 20)?;
    let repo = Repository::init(path, config)
        .with_context(|| format!("creating repository {}", path.display()))?;
    let c = repo.config();
    if g.json {
        output::json(&json!({"type": "init", "repo": path, "config": c}));
    } else {
        output::line(format!(
            "created repository {} (id {}, chunker {} {}/{}/{} KiB, zstd level {})",
            path.display(),
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
