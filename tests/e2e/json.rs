//! `--json`: the long commands print progress lines before their summary, and every
//! field of every document they print is described in docs/JSON.md.

use std::collections::{BTreeMap, BTreeSet};

use crate::helpers::*;

/// Every key path in `v`: `a.b` for objects, `a[]` for array elements.
fn paths(v: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(path.clone());
                paths(v, &path, out);
            }
        }
        serde_json::Value::Array(a) => {
            for v in a {
                paths(v, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

/// The fields docs/JSON.md lists per type: the first backticked word of each table row
/// under a heading "## `TYPE`" (several types may share one heading).
fn documented() -> (String, BTreeMap<String, BTreeSet<String>>) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/JSON.md"))
        .expect("docs/JSON.md");
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            current = h
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect();
            for t in &current {
                map.entry(t.clone()).or_default();
            }
        } else if let Some(row) = line.strip_prefix("| `") {
            let field = row.split('`').next().unwrap().to_string();
            for t in &current {
                map.get_mut(t).unwrap().insert(field.clone());
            }
        }
    }
    (text, map)
}

/// The JSON lines of a command's stdout.
fn lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Runs `args` with `--json` (expecting `code`), keeping every line it printed.
fn record(seen: &mut Vec<serde_json::Value>, args: &[&str], code: i32) -> Vec<serde_json::Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run(&all);
    assert_eq!(
        out.status.code(),
        Some(code),
        "dedisk {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = lines(&String::from_utf8_lossy(&out.stdout));
    seen.extend(got.iter().cloned());
    got
}

/// The command's summary: the last line but the warnings and errors that close it.
fn summary(lines: &[serde_json::Value]) -> &serde_json::Value {
    lines
        .iter()
        .rfind(|l| l["type"] != "warning" && l["type"] != "error")
        .expect("a summary")
}

/// The phases a command's progress lines went through, in order, without repeats.
fn phases(lines: &[serde_json::Value]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in lines.iter().filter(|l| l["type"] == "progress") {
        let ph = l["phase"].as_str().unwrap().to_string();
        if out.last() != Some(&ph) {
            out.push(ph);
        }
    }
    out
}

#[test]
fn long_commands_print_progress_and_every_json_field_is_documented() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut seen = Vec::new();
    let repo = d.join("repo");
    record(
        &mut seen,
        &[
            "init",
            "--kdf-memory",
            "8",
            "--kdf-passes",
            "1",
            "--kdf-lanes",
            "1",
            p(&repo),
        ],
        0,
    );
    let r = p(&repo);
    let a = random_image(d, "a.raw", 3 << 20, 8 << 20);
    let b = random_image(d, "b.raw", 2 << 20, 4 << 20);
    let vda = format!("vda={}", p(&a));
    record(
        &mut seen,
        &["--repo", r, "backup", "--name", "web", &vda, "--tag", "t"],
        0,
    );
    sh(&format!(
        "head -c 1M /dev/urandom | dd of='{}' bs=1M seek=1 conv=notrunc status=none",
        p(&a)
    ));
    record(
        &mut seen,
        &["--repo", r, "backup", "--name", "web", &vda],
        0,
    );
    record(&mut seen, &["--repo", r, "snapshots"], 0);
    record(&mut seen, &["--repo", r, "stats"], 0);
    record(&mut seen, &["--repo", r, "key", "list"], 0);

    // verify: the index, the packs' data, then every snapshot's disks.
    let v = record(&mut seen, &["--repo", r, "verify", "--read-data"], 0);
    assert_eq!(phases(&v), ["index", "read-data", "snapshots"], "{v:?}");
    assert_eq!(summary(&v)["type"], "verify");
    let disk_lines: BTreeSet<_> = v
        .iter()
        .filter(|l| l["phase"] == "snapshots")
        .map(|l| l["disk"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(disk_lines, BTreeSet::from(["web/vda".to_string()]));
    let read = v.iter().rfind(|l| l["phase"] == "read-data").unwrap();
    assert_eq!(read["done"], true);
    assert_eq!(read["bytes_done"], read["bytes_total"]);
    assert!(read["disk"].is_null(), "{read}");

    // copy: per disk, the bytes of the disk.
    let other = d.join("other");
    ok(&["init", "--encryption", "none", p(&other)]);
    let c = record(&mut seen, &["--repo", r, "copy", "--to", p(&other)], 0);
    let ends: Vec<_> = c
        .iter()
        .filter(|l| l["type"] == "progress" && l["done"] == true)
        .collect();
    assert_eq!(ends.len(), 2, "two snapshots of one disk: {c:?}");
    for e in ends {
        assert_eq!(e["command"], "copy");
        assert_eq!(e["disk"], "web/vda");
        assert_eq!(e["bytes_done"], 8 << 20);
    }

    // forget and prune: the mark, the repack, the sweep.
    record(
        &mut seen,
        &["--repo", r, "forget", "--keep-last", "1", "--name", "web"],
        0,
    );
    let pr = record(
        &mut seen,
        &[
            "--repo",
            r,
            "prune",
            "--max-unused",
            "0",
            "--listing-lag",
            "0s",
        ],
        0,
    );
    // A sweep follows when an earlier condemnation record is ready to be swept.
    let ph = phases(&pr);
    assert!(
        ph == ["mark", "repack", "delete"] || ph == ["mark", "repack", "delete", "sweep"],
        "{pr:?}"
    );
    assert_eq!(summary(&pr)["type"], "prune");

    // restore, in full and in place.
    let back = d.join("back.raw");
    record(&mut seen, &["--repo", r, "restore", "latest", p(&back)], 0);
    record(
        &mut seen,
        &[
            "--repo",
            r,
            "restore",
            "latest",
            p(&back),
            "--differential",
            "--check",
        ],
        0,
    );

    // run: each VM's disks (labelled VM/disk), the copy and the prune.
    let job = d.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "repository = \"repo\"\nprune_on = [\"Mon\", \"Tue\", \"Wed\", \"Thu\", \"Fri\", \"Sat\", \"Sun\"]\n\
             copy = {{ to = \"{other}\" }}\n[defaults]\nkeep_last = 2\n\
             [[vm]]\nname = \"web\"\ndisks = {{ vda = \"{a}\" }}\n\
             [[vm]]\nname = \"db\"\ndisks = {{ sda = \"{b}\" }}\n\
             [[vm]]\nname = \"gone\"\ndisks = {{ sda = \"{d}/missing.raw\" }}\n",
            other = p(&other),
            a = p(&a),
            b = p(&b),
            d = p(d),
        ),
    )
    .unwrap();
    record(&mut seen, &["run", p(&job), "--preview"], 1);
    let j = record(&mut seen, &["run", p(&job)], 3);
    let ph = phases(&j);
    assert_eq!(
        ph[..5],
        ["backup", "copy", "mark", "repack", "delete"],
        "{j:?}"
    );
    assert!(ph.len() == 5 || ph[5] == "sweep", "{j:?}");
    let disks: BTreeSet<_> = j
        .iter()
        .filter(|l| l["phase"] == "backup" && l["done"] == true)
        .map(|l| l["disk"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(disks, BTreeSet::from(["db/sda".into(), "web/vda".into()]));
    assert_eq!(summary(&j)["type"], "run");
    assert_eq!(
        j.last().unwrap()["type"],
        "warning",
        "exit 3 ends with the warning"
    );

    record(&mut seen, &["--repo", r, "repair", "index"], 0);
    record(&mut seen, &["--repo", r, "repair", "snapshots"], 0);
    record(&mut seen, &["--repo", r, "unlock"], 0);
    record(&mut seen, &["--repo", r, "restore", "nosuch", p(&back)], 1);

    // Every field seen is documented under its type.
    let (doc, documented) = documented();
    assert!(doc.contains("Version 1"), "docs/JSON.md names its version");
    let mut missing = Vec::new();
    for v in &seen {
        let t = v["type"].as_str().unwrap_or_else(|| panic!("no type: {v}"));
        let mut got = BTreeSet::new();
        paths(v, "", &mut got);
        let Some(fields) = documented.get(t) else {
            missing.push(format!("type {t}"));
            continue;
        };
        for f in got.difference(fields) {
            missing.push(format!("{t}: {f}"));
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "not in docs/JSON.md:\n{}",
        missing.join("\n")
    );
}
