//! `notify_email`: the job's per-VM summary as a plain-text mail, handed to the local
//! `sendmail` (the interface every Debian MTA provides: exim, postfix, dma, msmtp,
//! nullmailer), as NAUbackup and sanoid users expect.
//!
//! The message is built here rather than with a mail crate: it is one text/plain part
//! whose headers are all ASCII, and lettre (the well-kept one) insists on `user@domain`
//! mailboxes where local delivery conventionally names `root`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// When a mail is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOn {
    /// After every run.
    Always,
    /// Only when the run was not a full success (partial or failed).
    Problems,
}

/// A job's `notify_email*` settings.
#[derive(Clone, Debug)]
pub struct EmailNotify {
    pub to: Vec<String>,
    /// The From: header; the MTA's default sender when absent.
    pub from: Option<String>,
    pub sendmail: PathBuf,
    pub on: SendOn,
}

/// How long sendmail may take to accept the message before it is killed.
const SENDMAIL_TIMEOUT: Duration = Duration::from_secs(120);
/// RFC 5322 allows 998 bytes a line; longer lines are cut into pieces.
const MAX_LINE: usize = 900;

/// Checks an address from a job file: `root`, `backup-admins`, `ops@example.org`. It
/// becomes an argument of sendmail and a header line, so nothing that could be read as
/// an option, a second address or a second header gets through.
pub fn check_address(a: &str) -> Result<(), String> {
    let bad = a.is_empty()
        || a.len() > 254
        || a.starts_with('-')
        || a.matches('@').count() > 1
        || a.ends_with('@')
        || a.starts_with('@')
        || !a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@.!#$%&'*+/=?^_`{|}~-".contains(&b));
    if bad {
        Err(format!(
            "{a:?} is not a mail address (a local user such as root, or user@domain)"
        ))
    } else {
        Ok(())
    }
}

/// Sends `body` under `subject`. The error is one line: sendmail's own message when it
/// refused the mail.
pub fn send(n: &EmailNotify, subject: &str, body: &str) -> Result<(), String> {
    let message = compose(n, subject, body, jiff::Zoned::now());
    let sendmail = n.sendmail.display();
    // -i: a line holding only "." is text, not the end; "--": the rest are addresses.
    let mut child = Command::new(&n.sendmail)
        .arg("-i")
        .arg("--")
        .args(&n.to)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {sendmail}: {e} (is an MTA installed?)"))?;
    // A sendmail that refuses at once may exit before reading: the write then fails
    // (broken pipe), but its exit status and message are the better answer, so the
    // write error is kept until the child has been waited for.
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(message.as_bytes()),
        None => Ok(()),
    };
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if started.elapsed() > SENDMAIL_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{sendmail} did not accept the message within {}s",
                SENDMAIL_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if status.success() {
        return written.map_err(|e| format!("writing the message to {sendmail}: {e}"));
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    Err(format!(
        "{sendmail} refused the message ({status}){}",
        if first.is_empty() {
            String::new()
        } else {
            format!(": {}", clean(first))
        }
    ))
}

/// The whole message, headers and body, with LF line ends (sendmail converts them).
fn compose(n: &EmailNotify, subject: &str, body: &str, now: jiff::Zoned) -> String {
    let mut m = String::new();
    if let Some(from) = &n.from {
        m.push_str(&format!("From: dedisk <{from}>\n"));
    }
    m.push_str(&format!("To: {}\n", n.to.join(", ")));
    m.push_str(&format!("Subject: {}\n", ascii_header(subject)));
    m.push_str(&format!(
        "Date: {}\n",
        now.strftime("%a, %d %b %Y %H:%M:%S %z")
    ));
    m.push_str("MIME-Version: 1.0\n");
    m.push_str("Content-Type: text/plain; charset=utf-8\n");
    m.push_str("Content-Transfer-Encoding: 8bit\n");
    // RFC 3834: vacation responders do not answer it.
    m.push_str("Auto-Submitted: auto-generated\n");
    m.push('\n');
    for line in body.lines() {
        let line = clean(line);
        let mut rest = line.as_str();
        while rest.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            m.push_str(&rest[..cut]);
            m.push('\n');
            rest = &rest[cut..];
        }
        m.push_str(rest);
        m.push('\n');
    }
    m
}

/// Control characters (a terminal escape in a VM's error text) shown as `\u{..}`.
fn clean(line: &str) -> String {
    line.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                format!("\\u{{{:x}}}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A header value kept to printable ASCII on one line: anything else becomes `?`.
fn ascii_header(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_that_could_be_options_or_headers_are_refused() {
        for good in ["root", "backup-admins", "ops@example.org", "a.b+c@d-e.f"] {
            assert!(check_address(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-oQ/tmp",
            "a b",
            "a,b",
            "a\nBcc: x",
            "a@b@c",
            "@x",
            "x@",
            "<a>",
            "é@x",
        ] {
            assert!(check_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_message_has_ascii_headers_and_a_clean_body() {
        let n = EmailNotify {
            to: vec!["root".into(), "ops@example.org".into()],
            from: Some("dedisk@host".into()),
            sendmail: "/usr/sbin/sendmail".into(),
            on: SendOn::Always,
        };
        let now: jiff::Zoned = "2026-12-07T01:02:03+00:00[UTC]".parse().unwrap();
        let long = "x".repeat(2000);
        let m = compose(
            &n,
            "nightly: ok\r\nBcc: evil",
            &format!("web01 ok\nterm \u{1b}[2J\n{long}\n"),
            now,
        );
        let (head, body) = m.split_once("\n\n").unwrap();
        assert!(head.contains("Subject: nightly: ok??Bcc: evil\n"), "{head}");
        assert!(!head.contains("\nBcc:"));
        assert!(
            head.contains("Date: Mon, 07 Dec 2026 01:02:03 +0000"),
            "{head}"
        );
        assert!(head.contains("To: root, ops@example.org\n"));
        assert!(body.contains("term \\u{1b}[2J\n"), "{body}");
        assert!(body.lines().all(|l| l.len() <= MAX_LINE));
        assert_eq!(body.matches('x').count(), 2000);
    }

    #[test]
    fn a_sendmail_that_exits_before_reading_is_named_by_its_status() {
        // The body is larger than a pipe's buffer, so the write always meets a closed
        // pipe: the answer must still be the status and message sendmail gave.
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("sendmail");
        std::fs::write(&script, "#!/bin/sh\necho 'no such user' >&2\nexit 67\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let n = EmailNotify {
            to: vec!["root".into()],
            from: None,
            sendmail: script.clone(),
            on: SendOn::Always,
        };
        let body = "y\n".repeat(1 << 20);
        let e = send(&n, "nightly", &body).unwrap_err();
        assert!(e.contains("refused the message"), "{e}");
        assert!(e.ends_with(": no such user"), "{e}");
    }
}
