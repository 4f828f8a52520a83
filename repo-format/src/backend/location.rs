//! [`Location`]: what `--repo` (or DEDISK_REPO) names, a local directory or an S3
//! bucket prefix, checked before anything is sent anywhere.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Backend, LocalDir, S3Settings, S3};
use crate::error::{Error, Result};

/// Where a repository is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A directory on a local (or mounted) filesystem.
    Local(PathBuf),
    /// Objects under `prefix` (no leading or trailing `/`; may be empty) in `bucket`.
    S3 { bucket: String, prefix: String },
}

impl Location {
    /// Parses `s3://BUCKET[/PREFIX]`, or takes anything else as a path.
    pub fn parse(text: &str) -> Result<Location> {
        let Some(rest) = text.strip_prefix("s3://") else {
            return Ok(Location::Local(PathBuf::from(text)));
        };
        let bad = |reason: &str| Error::BadLocation {
            text: text.into(),
            reason: reason.into(),
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // The S3 naming rules (3 to 63 of a-z 0-9 . -, starting and ending with a letter
        // or digit); anything else would be read as part of a host name or a path.
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && bucket.as_bytes()[0].is_ascii_alphanumeric()
            && bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric();
        if !bucket_ok {
            return Err(bad(
                "the bucket name must be 3 to 63 characters of a-z, 0-9, '.' and '-'",
            ));
        }
        let prefix = prefix.trim_end_matches('/');
        for segment in prefix.split('/').filter(|_| !prefix.is_empty()) {
            let ok = !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(bad(
                    "each part of the prefix must be non-empty, not '.' or '..', and of A-Z a-z 0-9 . _ -",
                ));
            }
        }
        Ok(Location::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        })
    }

    /// The directory of a local repository.
    pub fn local_root(&self) -> Option<&Path> {
        match self {
            Location::Local(p) => Some(p),
            Location::S3 { .. } => None,
        }
    }

    /// Connects to where the repository is (for S3: the AWS_* environment and shared
    /// config files, checked with one request so that a wrong endpoint, key or bucket
    /// is one clear error now rather than a failure half-way through a backup).
    pub fn connect(&self) -> Result<Arc<dyn Backend>> {
        match self {
            Location::Local(p) => Ok(Arc::new(LocalDir::new(p))),
            Location::S3 { bucket, prefix } => {
                let settings = S3Settings::from_env(bucket, prefix)?;
                Ok(Arc::new(S3::connect(settings)?))
            }
        }
    }
}

impl From<&Path> for Location {
    fn from(p: &Path) -> Self {
        Location::Local(p.into())
    }
}

impl From<&PathBuf> for Location {
    fn from(p: &PathBuf) -> Self {
        Location::Local(p.clone())
    }
}

impl From<&Location> for Location {
    fn from(l: &Location) -> Self {
        l.clone()
    }
}

impl From<PathBuf> for Location {
    fn from(p: PathBuf) -> Self {
        Location::Local(p)
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_locations_are_checked_and_paths_pass_through() {
        assert_eq!(
            Location::parse("s3://backups/fleet/eu-1/").unwrap(),
            Location::S3 {
                bucket: "backups".into(),
                prefix: "fleet/eu-1".into()
            }
        );
        assert_eq!(
            Location::parse("s3://backups").unwrap().to_string(),
            "s3://backups"
        );
        for bad in [
            "s3://",
            "s3://ab",
            "s3://Backups/x",
            "s3://-bucket/x",
            "s3://bucket/../other",
            "s3://bucket/a//b",
            "s3://bucket/a b",
            "s3://bucket/a?x=1",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Location::parse("/srv/repo").unwrap(),
            Location::Local("/srv/repo".into())
        );
    }
}
