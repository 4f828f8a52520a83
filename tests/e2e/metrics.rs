//! `dedisk metrics` and a job's `metrics_file`: Prometheus text that `promtool check
//! metrics` accepts, with the values the repository and the run have.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use crate::helpers::*;

/// `promtool check metrics` on `text`: no problem and no lint finding.
fn promtool_accepts(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );
}

/// The value of the sample whose line starts with `prefix` (name and labels).
fn value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn repository_and_job_metrics_pass_promtool_and_say_what_happened() {
    if !have("promtool") {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is required under CI"
        );
        eprintln!("SKIPPED: promtool (Debian's prometheus) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let web = random_image(d, "web.raw", 3 << 20, 8 << 20);
    let db = random_image(d, "db.raw", 2 << 20, 4 << 20);
    backup(&repo, "web01", &[&format!("vda={}", p(&web))]);
    backup(&repo, "web01", &[&format!("vda={}", p(&web))]);
    backup(&repo, "db01", &[&format!("vda={}", p(&db))]);

    let text = ok(&["--repo", p(&repo), "metrics"]);
    promtool_accepts(&text);
    assert_eq!(value(&text, "dedisk_repository_snapshots"), 3.0);
    assert_eq!(value(&text, "dedisk_vm_snapshots{vm=\"web01\"}"), 2.0);
    assert_eq!(value(&text, "dedisk_vm_snapshots{vm=\"db01\"}"), 1.0);
    assert_eq!(
        value(&text, "dedisk_vm_last_snapshot_size_bytes{vm=\"db01\"}"),
        (4 << 20) as f64
    );
    let snaps = ok_json(&["--repo", p(&repo), "snapshots", "--name", "db01"]);
    let time: jiff::Timestamp = snaps["snapshots"][0]["time"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        value(
            &text,
            "dedisk_vm_last_snapshot_timestamp_seconds{vm=\"db01\"}"
        ),
        time.as_second() as f64
    );
    assert!(value(&text, "dedisk_repository_stored_bytes") > (4 << 20) as f64);
    assert!(
        !text.contains("dedisk_repository_last_verify"),
        "no verify has run: {text}"
    );
    // This host's last verify and prune, from its cache.
    ok(&["--repo", p(&repo), "verify"]);
    ok(&["--repo", p(&repo), "prune", "--listing-lag", "0s"]);
    let text = ok(&["--repo", p(&repo), "metrics"]);
    promtool_accepts(&text);
    assert_eq!(value(&text, "dedisk_repository_last_verify_problems"), 0.0);
    let now = jiff::Timestamp::now().as_second() as f64;
    for t in [
        "dedisk_repository_last_verify_timestamp_seconds",
        "dedisk_repository_last_prune_timestamp_seconds",
    ] {
        assert!((now - value(&text, t)).abs() < 120.0, "{t}: {text}");
    }
    assert_eq!(
        value(&text, "dedisk_repository_last_prune_reclaimed_bytes"),
        0.0
    );

    // A job that asks for a textfile: one VM backs up, one has a missing disk.
    let prom = d.join("textfile").join("dedisk.prom");
    std::fs::create_dir(d.join("textfile")).unwrap();
    let job = d.join("nightly.toml");
    std::fs::write(
        &job,
        format!(
            "repository = '{}'\nmetrics_file = '{}'\n\
             [[vm]]\nname = 'web01'\ndisks = {{ vda = '{}' }}\n\
             [[vm]]\nname = 'gone'\ndisks = {{ vda = '{}' }}\n",
            p(&repo),
            p(&prom),
            p(&web),
            p(&d.join("missing.raw"))
        ),
    )
    .unwrap();
    let out = run(&["run", p(&job)]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&prom).unwrap();
    promtool_accepts(&text);
    assert_eq!(value(&text, "dedisk_job_status{status=\"partial\"}"), 1.0);
    assert_eq!(value(&text, "dedisk_job_status{status=\"success\"}"), 0.0);
    assert_eq!(value(&text, "dedisk_job_vm_success{vm=\"web01\"}"), 1.0);
    assert_eq!(value(&text, "dedisk_job_vm_success{vm=\"gone\"}"), 0.0);
    assert_eq!(value(&text, "dedisk_vm_snapshots{vm=\"web01\"}"), 3.0);
    assert!(value(&text, "dedisk_job_vm_read_bytes{vm=\"web01\"}") > 0.0);
    // The collector runs as another user; no temporary file is left beside it.
    let mode = std::fs::metadata(&prom).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    assert_eq!(std::fs::read_dir(d.join("textfile")).unwrap().count(), 1);
}
