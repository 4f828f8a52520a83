//! `notify_email`: the job's summary as a mail through the real local MTA's sendmail
//! (dma on CI, which delivers to /var/mail/root), sent always or only on problems, and
//! a sendmail that refuses the mail makes the run partial.

use std::time::{Duration, Instant};

use crate::helpers::*;

/// The messages in root's mailbox (mbox) whose text contains `token`.
fn mails_with(token: &str) -> Vec<String> {
    let mbox = std::fs::read_to_string("/var/mail/root").unwrap_or_default();
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in mbox.lines() {
        if line.starts_with("From ") && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push_str(line);
        cur.push('\n');
    }
    out.push(cur);
    out.into_iter().filter(|m| m.contains(token)).collect()
}

/// Waits (up to 30 s: the MTA may deliver in the background) for `n` mails with `token`.
fn wait_for(token: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = mails_with(token);
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn notify_email_goes_through_the_local_sendmail() {
    if !is_root() || !std::path::Path::new("/usr/sbin/sendmail").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "root and an MTA's /usr/sbin/sendmail are required under CI"
        );
        eprintln!("SKIPPED: needs root and /usr/sbin/sendmail");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    new_repo(d, &[]);
    let disk = random_image(d, "disk.raw", 1 << 20, 4 << 20);
    // A token in the VM names tells this test's mails from every other in the box.
    let token = format!(
        "m{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let job = d.join("nightly.toml");
    let write_job = |extra: &str, broken: bool| {
        let mut text = format!(
            "repository = \"repo\"\n{extra}\n[[vm]]\nname = \"web-{token}\"\ndisks = {{ vda = \"{}\" }}\n",
            p(&disk)
        );
        if broken {
            text.push_str(&format!(
                "[[vm]]\nname = \"db-{token}\"\ndisks = {{ vda = \"{}/missing.raw\" }}\n",
                p(d)
            ));
        }
        std::fs::write(&job, text).unwrap();
    };

    // A partial night: one mail with the per-VM summary.
    write_job("notify_email = [\"root\"]", true);
    fails(&["run", p(&job)], 3, "some VMs failed");
    let mails = wait_for(&token, 1);
    assert_eq!(mails.len(), 1, "one mail: {mails:?}");
    let m = &mails[0];
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(
        m.contains(&format!(
            "Subject: [dedisk] nightly on {}: partial, 1 of 2 VMs backed up\n",
            host.trim()
        )),
        "{m}"
    );
    assert!(m.contains("Content-Type: text/plain; charset=utf-8"), "{m}");
    assert!(m.contains(&format!("  web-{token} ok snapshot ")), "{m}");
    assert!(
        m.contains(&format!("  db-{token} failed snapshot -")) && m.contains("missing.raw"),
        "{m}"
    );

    // notify_email_on = "problems": a good night sends nothing, a bad one does.
    let token2 = format!("{token}b");
    std::fs::write(
        &job,
        format!(
            "repository = \"repo\"\nnotify_email = \"root\"\nnotify_email_on = \"problems\"\n\
             [[vm]]\nname = \"web-{token2}\"\ndisks = {{ vda = \"{}\" }}\n",
            p(&disk)
        ),
    )
    .unwrap();
    ok(&["run", p(&job)]);
    std::fs::write(
        &job,
        format!(
            "repository = \"repo\"\nnotify_email = \"root\"\nnotify_email_on = \"problems\"\n\
             [[vm]]\nname = \"web-{token2}\"\ndisks = {{ vda = \"{}\" }}\n\
             [[vm]]\nname = \"db-{token2}\"\ndisks = {{ vda = \"{}/missing.raw\" }}\n",
            p(&disk),
            p(d)
        ),
    )
    .unwrap();
    fails(&["run", p(&job)], 3, "some VMs failed");
    let mails = wait_for(&format!("db-{token2}"), 1);
    assert_eq!(mails.len(), 1, "{mails:?}");
    // The good night's mail would have been delivered before the bad night's.
    assert_eq!(mails_with(&format!("web-{token2}")).len(), 1);

    // A sendmail that refuses the mail: the backup is there, the run is partial (3) and
    // says why; the report records it.
    write_job("notify_email = \"root\"\nsendmail = \"/bin/false\"", false);
    fails(&["run", p(&job)], 3, "some VMs failed or need attention");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("nightly.report.json")).unwrap()).unwrap();
    assert_eq!(report["status"], "partial");
    assert_eq!(report["vms"][0]["status"], "ok");
    assert!(
        report["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("notify_email: /bin/false refused the message"),
        "{report}"
    );

    // Addresses that could be options or a second header are refused when loading.
    write_job("notify_email = [\"-oQ/tmp\"]", false);
    fails(
        &["run", p(&job)],
        1,
        "nightly.toml line 2: \"-oQ/tmp\" is not a mail address",
    );
    write_job("notify_email = \"root\\nBcc: x@y\"", false);
    fails(&["run", p(&job)], 1, "is not a mail address");
}
