//! The AWS shared config and credentials files (`~/.aws/config`, `~/.aws/credentials`,
//! or AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE), for the profile AWS_PROFILE
//! names (else `default`): what the AWS CLI and SDKs read, so that a host already set
//! up for them needs nothing more. Only static settings are read (keys, region,
//! endpoint_url); environment variables win over both files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What a profile sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    pub values: HashMap<String, String>,
}

impl Profile {
    /// The profile `name` from the files the environment points at.
    pub fn load(name: &str) -> Profile {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let file = |var: &str, default: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
        };
        let mut profile = Profile::default();
        // The config file names sections `[profile NAME]` (but `[default]`); the
        // credentials file `[NAME]`. Credentials win where both set a value.
        if let Some(path) = file("AWS_CONFIG_FILE", "config") {
            let section = if name == "default" {
                "default".to_string()
            } else {
                format!("profile {name}")
            };
            profile.merge(read_section(&path, &section));
        }
        if let Some(path) = file("AWS_SHARED_CREDENTIALS_FILE", "credentials") {
            profile.merge(read_section(&path, name));
        }
        profile
    }

    fn merge(&mut self, other: HashMap<String, String>) {
        self.values.extend(other);
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(|s| s.as_str())
    }
}

fn read_section(path: &Path, section: &str) -> HashMap<String, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_section(&text, section),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
        Err(e) => {
            log::warn!("{}: {e}; ignoring it", path.display());
            HashMap::new()
        }
    }
}

/// The `key = value` lines of `[section]` in an INI text. Indented lines belong to a
/// nested block (`s3 =` followed by settings) and are skipped.
pub fn parse_section(text: &str, section: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if !inside {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            if !v.is_empty() {
                out.insert(k.trim().to_ascii_lowercase(), v.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_section_is_read_and_others_are_not() {
        let text = "[default]\naws_access_key_id = AKDEF\n\n[profile garage]\n\
                    region = garage\nendpoint_url = http://127.0.0.1:3900\ns3 =\n  \
                    addressing_style = path\n# comment\n[other]\nregion = x\n";
        let s = parse_section(text, "profile garage");
        assert_eq!(s.get("region").map(|s| &s[..]), Some("garage"));
        assert_eq!(
            s.get("endpoint_url").map(|s| &s[..]),
            Some("http://127.0.0.1:3900")
        );
        assert!(!s.contains_key("addressing_style") && !s.contains_key("aws_access_key_id"));
        assert_eq!(parse_section(text, "default").len(), 1);
    }
}
