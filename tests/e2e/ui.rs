//! `dedisk ui`: the dashboard as Debian's chromium (headless) renders it, checked
//! against `snapshots --json`; tenant-chosen text stays text; the token, the Host check
//! and the read-only rule hold against raw requests.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::*;

/// A running `dedisk ui`, stopped with SIGINT when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = dedisk()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert_eq!(v["type"], "listening", "{v}");
        Server {
            child,
            url: v["url"].as_str().unwrap().to_string(),
        }
    }

    fn addr(&self) -> String {
        self.url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

/// What headless chromium makes of `url`: the DOM after rendering.
fn dom(profile: &Path, url: &str) -> String {
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One raw HTTP/1.0 request; the status code and the whole answer.
fn raw(addr: &str, request: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, answer)
}

/// The values of attribute `attr` on the elements whose opening tag starts with `open`.
fn attrs(html: &str, open: &str, attr: &str) -> Vec<String> {
    html.match_indices(open)
        .filter_map(|(at, _)| {
            let tag = &html[at..at + html[at..].find('>').unwrap()];
            let key = format!("{attr}=\"");
            let start = tag.find(&key)? + key.len();
            Some(tag[start..start + tag[start..].find('"').unwrap()].to_string())
        })
        .collect()
}

#[test]
fn the_dashboard_shows_what_snapshots_json_says_in_a_real_browser() {
    if !have("chromium") {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is required under CI"
        );
        eprintln!("SKIPPED: no chromium");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let r = p(&repo);
    // Three VMs over several nights: web01 and db01 every night up to last night,
    // mail01 stopped four days ago (stale).
    let now = jiff::Timestamp::now();
    for night in (1..=6).rev() {
        let at = (now - jiff::SignedDuration::from_hours(24 * night - 2)).to_string();
        for vm in ["web01", "db01", "mail01"] {
            if vm == "mail01" && night < 4 {
                continue;
            }
            let img = random_image(
                d,
                &format!("{vm}.raw"),
                (1 + night as u64 % 3) << 20,
                8 << 20,
            );
            ok(&[
                "--repo",
                r,
                "backup",
                "-q",
                "--name",
                vm,
                "--time",
                &at,
                &format!("vda={}", p(&img)),
            ]);
        }
    }
    // A tag a tenant chose, with markup in it.
    let hostile = "<img src=x onerror=alert(1)>";
    let img = random_image(d, "db01.raw", 1 << 20, 8 << 20);
    ok(&[
        "--repo",
        r,
        "backup",
        "-q",
        "--name",
        "db01",
        "--tag",
        hostile,
        &format!("vda={}", p(&img)),
    ]);
    ok(&["--repo", r, "verify"]);
    // A job's report: one VM backed up, one failed.
    let job = d.join("nightly.toml");
    std::fs::write(
        &job,
        format!(
            "repository = \"repo\"\n[[vm]]\nname = \"web01\"\ndisks = {{ vda = \"{}\" }}\n[[vm]]\nname = \"gone\"\ndisks = {{ vda = \"{}/missing.raw\" }}\n",
            p(&d.join("web01.raw")),
            p(d)
        ),
    )
    .unwrap();
    fails(&["run", p(&job)], 3, "some VMs failed");
    let report = d.join("nightly.report.json");

    let listed = ok_json(&["--repo", r, "snapshots"]);
    let snaps = listed["snapshots"].as_array().unwrap();
    // Per VM: (count, newest id).
    let mut want: BTreeMap<String, (usize, String, String)> = BTreeMap::new();
    for s in snaps {
        let e = want.entry(s["name"].as_str().unwrap().into()).or_insert((
            0,
            String::new(),
            String::new(),
        ));
        e.0 += 1;
        let t = s["time"].as_str().unwrap().to_string();
        if t >= e.2 {
            (e.1, e.2) = (s["id"].as_str().unwrap().into(), t);
        }
    }

    let server = Server::start(&[
        "--json",
        "--repo",
        r,
        "ui",
        "--listen",
        "127.0.0.1:0",
        "--report",
        p(&report),
    ]);
    let profile = d.join("chromium");
    let html = dom(&profile, &server.url);

    // Every VM, with its snapshot count and newest snapshot; and the job's VM that was
    // never backed up, in red.
    assert!(
        html.contains("<tr class=\"vm stale\" data-vm=\"gone\" data-snapshots=\"0\""),
        "{html}"
    );
    let gone = html
        .find("<tr class=\"vm stale\" data-vm=\"gone\"")
        .unwrap();
    let end = gone + html[gone..].find("</tr>").unwrap();
    let html = format!("{}{}", &html[..gone], &html[end..]);
    let vms = attrs(&html, "<tr class=\"vm", "data-vm");
    assert_eq!(
        vms.iter().cloned().collect::<BTreeSet<_>>(),
        want.keys().cloned().collect::<BTreeSet<_>>(),
        "{html}"
    );
    let counts = attrs(&html, "<tr class=\"vm", "data-snapshots");
    let lasts = attrs(&html, "<tr class=\"vm", "data-last");
    for (i, vm) in vms.iter().enumerate() {
        assert_eq!(counts[i], want[vm].0.to_string(), "{vm}");
        assert_eq!(lasts[i], want[vm].1, "{vm}");
    }
    // mail01's newest is four days old: red; the others are not.
    let stale = attrs(&html, "<tr class=\"vm", "data-stale");
    for (i, vm) in vms.iter().enumerate() {
        assert_eq!(stale[i], (vm == "mail01").to_string(), "{vm}");
    }
    assert!(html.contains("<tr class=\"vm stale\" data-vm=\"mail01\""));
    // Every snapshot, once.
    let ids = attrs(&html, "<tr class=\"snap\"", "data-id");
    assert_eq!(ids.len(), snaps.len());
    assert_eq!(
        ids.iter().cloned().collect::<BTreeSet<_>>(),
        snaps
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect::<BTreeSet<_>>()
    );
    // A bar per UTC day with backups (six nights, and today's backups).
    let days: BTreeSet<_> = snaps
        .iter()
        .map(|s| s["time"].as_str().unwrap()[..10].to_string())
        .collect();
    let bars = attrs(&html, "<rect class=\"bar\"", "data-label");
    assert_eq!(bars.into_iter().collect::<BTreeSet<_>>(), days);
    // The growth line ends at the sum of what every snapshot added.
    let added: u64 = snaps
        .iter()
        .flat_map(|s| s["disks"].as_array().unwrap())
        .map(|d| d["new_stored_bytes"].as_u64().unwrap())
        .sum();
    let growth = attrs(&html, "<circle class=\"point\"", "data-value");
    assert_eq!(growth.last().unwrap(), &added.to_string());
    // This host's verify, and the job's partial night with the VM that failed.
    assert!(
        html.contains(
            "<tr id=\"last-verify\"><th>last verify</th><td><span class=\"ok\">OK</span>"
        ),
        "{html}"
    );
    assert!(html.contains("data-status=\"partial\""), "{html}");
    assert!(html.contains("gone failed"), "{html}");
    // The tag is text: the browser made no element of it.
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{html}"
    );
    assert!(!html.contains("<img"), "{html}");

    // A snapshot's page: its disks as the listing has them.
    let s = &snaps[0];
    let page = dom(
        &profile,
        &format!("{}snapshot/{}", server.url, s["id"].as_str().unwrap()),
    );
    assert!(page.contains(&format!(
        "<code id=\"snapshot-id\">{}</code>",
        s["id"].as_str().unwrap()
    )));
    let labels = attrs(&page, "<tr class=\"disk\"", "data-label");
    let sizes = attrs(&page, "<tr class=\"disk\"", "data-size");
    let disks = s["disks"].as_array().unwrap();
    assert_eq!(labels.len(), disks.len());
    for (i, disk) in disks.iter().enumerate() {
        assert_eq!(labels[i], disk["label"].as_str().unwrap());
        assert_eq!(sizes[i], disk["size_bytes"].to_string());
    }

    // A screenshot of what an admin sees (kept for the closing note).
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,1400",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&server.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{}",
        png.len()
    );

    // Raw requests: read-only, and only to its own name without a token.
    let addr = server.addr();
    let (code, answer) = raw(&addr, &format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n"));
    assert_eq!(code, 200);
    for h in [
        "Content-Security-Policy: default-src 'none'",
        "X-Frame-Options: DENY",
        "X-Content-Type-Options: nosniff",
    ] {
        assert!(answer.contains(h), "{h}: {answer}");
    }
    let (code, _) = raw(
        &addr,
        &format!("POST / HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"),
    );
    assert_eq!(code, 405);
    let port = addr.rsplit(':').next().unwrap();
    let (code, _) = raw(
        &addr,
        &format!("GET / HTTP/1.0\r\nHost: attacker.example:{port}\r\n\r\n"),
    );
    assert_eq!(code, 403, "a rebinding name is refused");
    let (code, _) = raw(
        &addr,
        &format!(
            "GET /snapshot/{} HTTP/1.0\r\nHost: {addr}\r\n\r\n",
            "0".repeat(64)
        ),
    );
    assert_eq!(code, 404);
    drop(server);

    // With a token: nothing without it, the page with it (once in the URL, then the
    // cookie; or a bearer header).
    let token = "s3cret-token-0123456789";
    let token_file = d.join("ui.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    fails(
        &[
            "--repo",
            r,
            "ui",
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            p(&token_file),
        ],
        1,
        "can be read by other users",
    );
    fails(
        &["--repo", r, "ui", "--listen", "0.0.0.0:0"],
        1,
        "is reachable from other hosts: give --token-file",
    );
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = Server::start(&[
        "--json",
        "--repo",
        r,
        "ui",
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        p(&token_file),
    ]);
    let denied = dom(&profile, &server.url);
    assert!(
        denied.contains("a token is required") && !denied.contains("data-vm"),
        "{denied}"
    );
    let wrong = dom(
        &profile,
        &format!("{}?token=nope-nope-nope-nope", server.url),
    );
    assert!(!wrong.contains("data-vm"), "{wrong}");
    let shown = dom(&profile, &format!("{}?token={token}", server.url));
    assert!(shown.contains("data-vm=\"web01\""), "{shown}");
    let addr = server.addr();
    let (code, _) = raw(
        &addr,
        &format!("GET / HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"),
    );
    assert_eq!(code, 200);
    let (code, _) = raw(
        &addr,
        &format!("GET / HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}x\r\n\r\n"),
    );
    assert_eq!(code, 401);
    // The token in the URL is turned into a cookie and a redirect to a path of this
    // site only (never "//elsewhere").
    let (code, answer) = raw(
        &addr,
        &format!("GET //evil.example/?token={token} HTTP/1.0\r\nHost: {addr}\r\n\r\n"),
    );
    assert_eq!(code, 303, "{answer}");
    assert!(answer.contains("Location: /\r\n"), "{answer}");
    assert!(answer.contains("HttpOnly; SameSite=Strict"), "{answer}");
}
