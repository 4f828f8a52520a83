//! Passwords and opening a repository with its key: where a password comes from (a file,
//! a command, the environment, or a prompt the caller supplies) and the one way every
//! command and the job runner open a repository, encrypted or not.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use repo_format::backend::Backend;
use repo_format::{Location, Repository};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// A password, zeroed when dropped.
pub type Password = Zeroizing<Vec<u8>>;

/// Longest password read from a file or a command (a key file's password, not a file).
const MAX_PASSWORD_BYTES: usize = 4096;

/// Where a password comes from, besides a prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordFrom {
    /// The text itself (`DEDISK_PASSWORD`).
    Text(String),
    /// A file's first line (`DEDISK_PASSWORD_FILE`, a job's `password_file`).
    File(PathBuf),
    /// A command's first line of output (`DEDISK_PASSWORD_COMMAND`, a job's
    /// `password_command`), split into words like a shell would but run without one.
    Command(String),
}

impl PasswordFrom {
    /// `DEDISK_PASSWORD`, `DEDISK_PASSWORD_FILE` or `DEDISK_PASSWORD_COMMAND`, in that
    /// order of preference (restic's and borg's conventions); `None` when none is set.
    pub fn from_env() -> Option<PasswordFrom> {
        PasswordFrom::from_env_prefixed("DEDISK_")
    }

    /// The same variables under another prefix: `DEDISK_TO_PASSWORD` and the others
    /// for the target of `dedisk copy`.
    pub fn from_env_prefixed(prefix: &str) -> Option<PasswordFrom> {
        let var = |n: &str| {
            std::env::var(format!("{prefix}{n}"))
                .ok()
                .filter(|v| !v.is_empty())
        };
        if let Some(p) = var("PASSWORD") {
            return Some(PasswordFrom::Text(p));
        }
        if let Some(f) = var("PASSWORD_FILE") {
            return Some(PasswordFrom::File(f.into()));
        }
        var("PASSWORD_COMMAND").map(PasswordFrom::Command)
    }

    /// Reads the password.
    pub fn read(&self) -> Result<Password> {
        let bad = |what: String, reason: String| Error::Password { what, reason };
        let text: Password = match self {
            PasswordFrom::Text(t) => Zeroizing::new(t.as_bytes().to_vec()),
            PasswordFrom::File(path) => {
                use std::io::Read;
                let mut buf = Zeroizing::new(Vec::new());
                std::fs::File::open(path)
                    .and_then(|f| f.take(MAX_PASSWORD_BYTES as u64 + 1).read_to_end(&mut buf))
                    .map_err(|e| bad(format!("password file {}", path.display()), e.to_string()))?;
                buf
            }
            PasswordFrom::Command(cmd) => {
                let what = format!("password command {cmd:?}");
                let words =
                    shell_words::split(cmd).map_err(|e| bad(what.clone(), e.to_string()))?;
                let (program, args) = words
                    .split_first()
                    .ok_or_else(|| bad(what.clone(), "empty command".into()))?;
                let out = Command::new(program)
                    .args(args)
                    .stdin(Stdio::null())
                    .stderr(Stdio::inherit())
                    .output()
                    .map_err(|e| bad(what.clone(), e.to_string()))?;
                let stdout = Zeroizing::new(out.stdout);
                if !out.status.success() {
                    return Err(bad(what, format!("exited with {}", out.status)));
                }
                Zeroizing::new(stdout.to_vec())
            }
        };
        let what = match self {
            PasswordFrom::Text(_) => "DEDISK_PASSWORD".to_string(),
            PasswordFrom::File(p) => format!("password file {}", p.display()),
            PasswordFrom::Command(c) => format!("password command {c:?}"),
        };
        if text.len() > MAX_PASSWORD_BYTES {
            return Err(bad(what, format!("longer than {MAX_PASSWORD_BYTES} bytes")));
        }
        // The first line, without its line ending.
        let line_end = text.iter().position(|&b| b == b'\n').unwrap_or(text.len());
        let mut line = &text[..line_end];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        if line.is_empty() {
            return Err(bad(what, "the password is empty".into()));
        }
        Ok(Zeroizing::new(line.to_vec()))
    }
}

/// How to unlock an encrypted repository.
#[derive(Default)]
pub struct KeyAccess<'a> {
    /// A key file kept outside the repository (`--key-file`).
    pub key_file: Option<&'a Path>,
    /// Where the password comes from; `None` means "ask", through `prompt`.
    pub password: Option<PasswordFrom>,
    /// Asks for the password interactively; `None` when nobody can be asked.
    #[allow(clippy::type_complexity)]
    pub prompt: Option<&'a dyn Fn(&str) -> Result<Password>>,
}

impl KeyAccess<'_> {
    /// The password: from its source, else by prompting, else an error naming the ways.
    pub fn password(&self, repo: &str) -> Result<Password> {
        if let Some(src) = &self.password {
            return src.read();
        }
        match self.prompt {
            Some(ask) => ask(&format!("password for {repo}: ")),
            None => Err(Error::Repo(repo_format::Error::KeyNeeded {
                path: repo.into(),
            })),
        }
    }
}

/// Opens the repository at `at`: an unencrypted one as it is, an encrypted one with
/// the master key a password unlocks (argon2id runs once per key file tried).
pub fn open_repository(at: &Location, access: &KeyAccess<'_>) -> Result<Repository> {
    let store = at.connect()?;
    let config = Repository::read_config(&*store)?;
    let master = if config.is_encrypted() {
        Some(unlock(&*store, &config, access)?.0)
    } else {
        None
    };
    Ok(Repository::open_as(store, config, master)?)
}

/// The master key of the encrypted repository in `store` and the key file that opened
/// it.
pub fn unlock(
    store: &dyn Backend,
    config: &repo_format::RepoConfig,
    access: &KeyAccess<'_>,
) -> Result<(repo_format::crypto::MasterKey, repo_format::keys::Opener)> {
    // A missing key file is said before asking for a password it could not use.
    if let Some(kf) = access.key_file {
        if !kf.exists() {
            return Err(Error::Password {
                what: format!("key file {}", kf.display()),
                reason: "not found".into(),
            });
        }
    } else if repo_format::keys::list(store)?.is_empty() {
        return Err(repo_format::Error::NoKeyFile {
            path: store.describe().into(),
        }
        .into());
    }
    let password = access.password(&store.describe())?;
    Ok(repo_format::keys::unlock(
        store,
        access.key_file,
        &password,
        &config.repo_id.0,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_come_from_the_first_line_of_a_file_or_command() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\r\nignored\n").unwrap();
        assert_eq!(&*PasswordFrom::File(f.clone()).read().unwrap(), b"s3cret");
        let c = PasswordFrom::Command(format!("cat '{}'", f.display()));
        assert_eq!(&*c.read().unwrap(), b"s3cret");
        // No shell: `;` is an argument of echo, not a second command.
        let c = PasswordFrom::Command("echo a ; touch /nonexistent-dir/x".into());
        assert_eq!(&*c.read().unwrap(), b"a ; touch /nonexistent-dir/x");
        let e = PasswordFrom::Command("false".into()).read().unwrap_err();
        assert!(e.to_string().contains("exited"), "{e}");
        std::fs::write(&f, "\n").unwrap();
        let e = PasswordFrom::File(f).read().unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }
}
