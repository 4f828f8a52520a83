//! `config.json`: the repository's identity and the parameters that decide what
//! deduplicates against what. Written once at `init`, never changed afterwards. In an
//! encrypted repository (version 2) it stays readable, so a reader knows what to ask
//! for, and carries a MAC under the master key, checked once the key is unlocked.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::RepoId;

/// The format version of unencrypted repositories (`init --encryption none`).
pub const FORMAT_VERSION: u32 = 1;
/// The format version of encrypted repositories, the default for new ones.
pub const FORMAT_VERSION_SEALED: u32 = 2;

/// How an encrypted repository's objects are sealed (FORMAT.md, section 10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EncryptionScheme {
    /// Keyed BLAKE3 ids, AES-256-GCM under a key per object, Padmé padding.
    #[serde(rename = "blake3-aes256gcm")]
    Blake3Aes256Gcm,
}

/// How disks are cut into chunks. Part of the repository's identity: two backups only
/// deduplicate against each other when they were cut with the same parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChunkerAlgorithm {
    /// Content-defined cut points allowed only at `align_bytes` boundaries of the disk,
    /// decided from the first 64 bytes of the block that starts there.
    AlignedCdc,
    /// FastCDC 2020 (byte-granular gear hash, normalization level 1).
    Fastcdc,
    /// Fixed-size chunks at multiples of `avg_bytes` from the start of the disk.
    Fixed,
}

impl std::fmt::Display for ChunkerAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChunkerAlgorithm::AlignedCdc => "aligned-cdc",
            ChunkerAlgorithm::Fastcdc => "fastcdc",
            ChunkerAlgorithm::Fixed => "fixed",
        })
    }
}

/// Chunker identity (see FORMAT.md, "Chunking"). Unknown fields are refused: a chunker
/// setting this version does not know would cut differently from what the writer meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerParams {
    pub algorithm: ChunkerAlgorithm,
    pub min_bytes: u32,
    pub avg_bytes: u32,
    pub max_bytes: u32,
    /// Block size whose boundaries aligned-cdc may cut at, and whose all-zero runs become holes.
    pub align_bytes: u32,
    /// Mixed into the cut-point hash; 0 for the published default.
    pub seed: u64,
    /// A run of all-zero aligned blocks at least this long is recorded as a hole, not stored.
    pub zero_run_min_bytes: u32,
    /// aligned-cdc only: a block boundary after this many zero bytes (the slack a file
    /// leaves after its end in its last block) is also a cut, from one block into a chunk
    /// on, when the block it starts is not all zero there. The same files then make the
    /// same chunks in whatever order and at whatever offsets a filesystem put them
    /// (FORMAT.md 7.2). 0 is off: repositories made before the field existed have none,
    /// and keep cutting as they did. Written only when non-zero, so their config (and its
    /// MAC) stay byte for byte what they were.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub file_start_tail_bytes: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Default for ChunkerParams {
    fn default() -> Self {
        // Chosen by measurement on the shared workload: see FORMAT.md, "Choosing the chunker".
        ChunkerParams {
            algorithm: ChunkerAlgorithm::AlignedCdc,
            min_bytes: 16 * 1024,
            avg_bytes: 64 * 1024,
            max_bytes: 256 * 1024,
            align_bytes: 4096,
            seed: 0,
            zero_run_min_bytes: 16 * 1024,
            file_start_tail_bytes: 256,
        }
    }
}

impl ChunkerParams {
    /// The default parameters with another algorithm: cuts at file starts belong to
    /// aligned-cdc only.
    pub fn default_for(algorithm: ChunkerAlgorithm) -> Self {
        let d = ChunkerParams::default();
        ChunkerParams {
            algorithm,
            file_start_tail_bytes: match algorithm {
                ChunkerAlgorithm::AlignedCdc => d.file_start_tail_bytes,
                _ => 0,
            },
            ..d
        }
    }

    /// Checks the invariants every chunker relies on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let ChunkerParams {
            min_bytes: min,
            avg_bytes: avg,
            max_bytes: max,
            align_bytes: align,
            ..
        } = *self;
        if !(align.is_power_of_two() && (512..=1 << 20).contains(&align)) {
            return Err(format!(
                "align_bytes {align} must be a power of two in 512..=1MiB"
            ));
        }
        if !(min < avg && avg < max) {
            return Err(format!("need min < avg < max, got {min} / {avg} / {max}"));
        }
        if min < 1024 || max > crate::blob::MAX_CHUNK_BYTES as u32 {
            return Err(format!(
                "chunk sizes must lie in 1KiB..={} bytes",
                crate::blob::MAX_CHUNK_BYTES
            ));
        }
        if self.algorithm != ChunkerAlgorithm::Fastcdc
            && (min % align != 0 || avg % align != 0 || max % align != 0)
        {
            return Err(format!(
                "{} needs min/avg/max to be multiples of align_bytes {align}",
                self.algorithm
            ));
        }
        if self.zero_run_min_bytes < align || !self.zero_run_min_bytes.is_multiple_of(align) {
            return Err("zero_run_min_bytes must be a non-zero multiple of align_bytes".into());
        }
        let tail = self.file_start_tail_bytes;
        if tail != 0 {
            if self.algorithm != ChunkerAlgorithm::AlignedCdc {
                return Err(format!(
                    "file_start_tail_bytes is for aligned-cdc, not {}",
                    self.algorithm
                ));
            }
            if !(8..=align / 2).contains(&tail) || !tail.is_multiple_of(8) {
                return Err(format!(
                    "file_start_tail_bytes {tail} must be 0 or a multiple of 8 in 8..={}",
                    align / 2
                ));
            }
        }
        Ok(())
    }
}

/// How new blobs are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressionParams {
    /// Always "zstd" in format version 1.
    pub algorithm: CompressionAlgorithm,
    /// zstd level (1..=19); blobs zstd does not shrink are stored uncompressed.
    pub level: i32,
}

/// The compression algorithm of new blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionAlgorithm {
    Zstd,
}

impl Default for CompressionParams {
    fn default() -> Self {
        CompressionParams {
            algorithm: CompressionAlgorithm::Zstd,
            level: 3,
        }
    }
}

/// The contents of `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RepoConfig {
    pub format_version: u32,
    pub repo_id: RepoId,
    pub created: jiff::Timestamp,
    pub chunker: ChunkerParams,
    pub compression: CompressionParams,
    /// Packs are closed once they reach this size.
    pub pack_target_bytes: u64,
    /// Version 2 only: how objects are sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionScheme>,
    /// Version 2 only: hex MAC of [`RepoConfig::mac_input`] under the master key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl RepoConfig {
    /// A new config with a fresh random repository id.
    pub fn new(
        chunker: ChunkerParams,
        compression: CompressionParams,
        pack_target_bytes: u64,
    ) -> Result<Self> {
        Ok(RepoConfig {
            format_version: FORMAT_VERSION,
            repo_id: RepoId(crate::ids::random_bytes()?),
            created: jiff::Timestamp::now(),
            chunker,
            compression,
            pack_target_bytes,
            encryption: None,
            mac: None,
        })
    }

    /// Whether this is an encrypted (version 2) repository.
    pub fn is_encrypted(&self) -> bool {
        self.format_version == FORMAT_VERSION_SEALED
    }

    /// Makes this a version 2 config sealed under `master`: the chunker's public seed is
    /// unused there (the cut decision is keyed by a secret derived from the key).
    pub fn seal(&mut self, master: &crate::crypto::MasterKey) {
        self.format_version = FORMAT_VERSION_SEALED;
        self.encryption = Some(EncryptionScheme::Blake3Aes256Gcm);
        self.chunker.seed = 0;
        self.mac = Some(hex::encode(master.config_mac(&self.mac_input())));
    }

    /// The bytes the MAC covers: the config without `mac` as compact JSON with every
    /// object's keys in byte order (FORMAT.md, section 10.3), so that any reader can
    /// recompute it from the file.
    pub fn mac_input(&self) -> Vec<u8> {
        let mut c = self.clone();
        c.mac = None;
        let mut out = Vec::new();
        canonical_json(
            &serde_json::to_value(&c).expect("config serializes"),
            &mut out,
        );
        out
    }

    /// Checks the MAC of a version 2 config under `master` (a changed chunker or
    /// compression setting, or a config of another repository, fails).
    pub fn check_mac(&self, path: &Path, master: &crate::crypto::MasterKey) -> Result<()> {
        let want = hex::encode(master.config_mac(&self.mac_input()));
        match &self.mac {
            // Compared without an early exit (no timing hint of how much matched).
            Some(mac)
                if mac.len() == want.len()
                    && mac
                        .bytes()
                        .zip(want.bytes())
                        .fold(0, |d, (a, b)| d | (a ^ b))
                        == 0 =>
            {
                Ok(())
            }
            _ => Err(Error::Unauthenticated {
                what: format!(
                    "{} (its MAC does not match: a setting was changed)",
                    path.display()
                ),
            }),
        }
    }

    /// Parses and checks a config file's bytes.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        // Read the version first so a future format gets a version error, not a parse error.
        #[derive(Deserialize)]
        struct VersionOnly {
            format_version: u32,
        }
        let v: VersionOnly = serde_json::from_slice(bytes).map_err(|e| Error::BadConfig {
            path: path.into(),
            reason: e.to_string(),
        })?;
        if v.format_version != FORMAT_VERSION && v.format_version != FORMAT_VERSION_SEALED {
            return Err(Error::UnsupportedVersion {
                path: path.into(),
                found: v.format_version,
                supported: FORMAT_VERSION_SEALED,
            });
        }
        let cfg: RepoConfig = serde_json::from_slice(bytes).map_err(|e| Error::BadConfig {
            path: path.into(),
            reason: e.to_string(),
        })?;
        cfg.validate().map_err(|reason| Error::BadConfig {
            path: path.into(),
            reason,
        })?;
        Ok(cfg)
    }

    /// Checks every parameter against the limits of the format.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.chunker.validate()?;
        match (self.format_version, self.encryption, &self.mac) {
            (FORMAT_VERSION, None, None) => {}
            (FORMAT_VERSION, ..) => {
                return Err("a version 1 config has no encryption or mac field".into())
            }
            (FORMAT_VERSION_SEALED, Some(_), Some(mac)) if mac.len() == 64 => {}
            (FORMAT_VERSION_SEALED, ..) => {
                return Err(
                    "a version 2 config needs its encryption scheme and a 64-hex mac".into(),
                )
            }
            (v, ..) => return Err(format!("format version {v}")),
        }
        if !(1..=19).contains(&self.compression.level) {
            return Err(format!(
                "zstd level {} outside 1..=19",
                self.compression.level
            ));
        }
        if !(1 << 20..=1 << 30).contains(&self.pack_target_bytes) {
            return Err("pack_target_bytes must lie in 1MiB..=1GiB".into());
        }
        Ok(())
    }
}

/// Compact JSON of `v` with object keys sorted by their bytes.
fn canonical_json(v: &serde_json::Value, out: &mut Vec<u8>) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&serde_json::to_vec(k).expect("a string serializes"));
                out.push(b':');
                canonical_json(&map[k], out);
            }
            out.push(b'}');
        }
        serde_json::Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(&serde_json::to_vec(scalar).expect("a value serializes")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_round_trips_and_validates() {
        let cfg = RepoConfig::new(
            ChunkerParams::default(),
            CompressionParams::default(),
            32 << 20,
        )
        .unwrap();
        let bytes = serde_json::to_vec_pretty(&cfg).unwrap();
        let back = RepoConfig::parse(Path::new("config.json"), &bytes).unwrap();
        assert_eq!(cfg, back);
    }

    #[test]
    fn future_version_is_a_version_error() {
        let text = br#"{"format_version": 9, "anything": true}"#;
        let err = RepoConfig::parse(Path::new("c"), text).unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedVersion { found: 9, .. }),
            "{err}"
        );
    }

    #[test]
    fn bad_chunker_is_rejected() {
        let mut p = ChunkerParams::default();
        p.min_bytes = p.max_bytes;
        assert!(p.validate().is_err());
        let mut p = ChunkerParams::default();
        p.avg_bytes += 1;
        assert!(p.validate().is_err());
        for tail in [4, 260, 2056, 4096] {
            let p = ChunkerParams {
                file_start_tail_bytes: tail,
                ..ChunkerParams::default()
            };
            assert!(p.validate().is_err(), "tail {tail}");
        }
        let p = ChunkerParams {
            algorithm: ChunkerAlgorithm::Fastcdc,
            ..ChunkerParams::default()
        };
        assert!(p.validate().unwrap_err().contains("aligned-cdc"));
    }

    /// A chunker written before `file_start_tail_bytes` existed reads as 0 (its cuts do
    /// not move) and serializes without the field, so an encrypted config's MAC input is
    /// still the bytes its MAC was made over. A field this version does not know is
    /// refused rather than ignored.
    #[test]
    fn a_chunker_without_file_starts_keeps_its_bytes() {
        let old = r#"{"algorithm":"aligned-cdc","min_bytes":16384,"avg_bytes":65536,"max_bytes":262144,"align_bytes":4096,"seed":0,"zero_run_min_bytes":16384}"#;
        let p: ChunkerParams = serde_json::from_str(old).unwrap();
        assert_eq!(p.file_start_tail_bytes, 0);
        assert!(p.validate().is_ok());
        assert_eq!(serde_json::to_string(&p).unwrap(), old);
        let new = serde_json::to_string(&ChunkerParams::default()).unwrap();
        assert!(new.contains(r#""file_start_tail_bytes":256"#), "{new}");
        let unknown = old.replace('}', r#","cut_at_magic":true}"#);
        assert!(serde_json::from_str::<ChunkerParams>(&unknown).is_err());
    }
}
