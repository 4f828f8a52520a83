//! The dashboard's HTML. Everything that came from a repository, a report or a tenant
//! (VM names, tags, labels, sources, error text) goes through [`esc`].

use std::collections::BTreeMap;
use std::fmt::Write;

use repo_format::SnapshotId;

use super::data::Data;
use super::plot;
use crate::output::bytes as human_bytes;

/// Text for HTML, in element content or a quoted attribute.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M UTC").to_string()
}

/// `3 h 12 min`, `2 d 4 h`.
fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}\
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}\
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:left;vertical-align:middle}\
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.cards{display:flex;flex-wrap:wrap;gap:.6em}.card{border:1px solid #ddd;border-radius:6px;padding:.5em .8em;min-width:9em}\
.card b{display:block;font-size:1.2em}.ok{color:#1a7f37}.bad,.stale td.age{color:#c0162b;font-weight:bold}\
tr.stale{background:#fde8eb}.muted{color:#777}code{font-size:.9em}\
svg.plot text{font-size:11px;fill:#555}svg .axis{stroke:#999}svg .bar{fill:#4a7fc1}\
svg .line{fill:none;stroke:#4a7fc1;stroke-width:2}svg .point{fill:#4a7fc1}\
svg.timeline .track{stroke:#ccc}svg.timeline circle{fill:#4a7fc1}a{color:#0b5cad}";

fn doc(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        esc(title)
    )
}

/// A page with one message (errors, 401, 404).
pub fn message(title: &str, text: &str) -> String {
    doc(
        title,
        &format!("<h1>{}</h1><p id=\"message\">{}</p>", esc(title), esc(text)),
    )
}

/// One line about a verify, prune or boot result.
fn outcome(o: Option<&engine::maintain::last_runs::Outcome>, now: jiff::Timestamp) -> String {
    match o {
        None => "<span class=\"muted\">not run on this host</span>".into(),
        Some(o) => format!(
            "<span class=\"{}\">{}</span> {} ({} ago, {:.0} s)",
            if o.ok { "ok" } else { "bad" },
            if o.ok { "OK" } else { "FAILED" },
            esc(&o.summary),
            age(now.as_second() - o.time.as_second()),
            o.seconds
        ),
    }
}

/// The overview: the repository, health, VMs, nights, growth and every snapshot.
pub fn overview(d: &Data, stale_after: std::time::Duration) -> String {
    let now = d.at;
    let mut b = String::new();
    let _ = write!(
        b,
        "<h1>dedisk: <span id=\"repo\">{}</span></h1><p class=\"muted\">{}; read {}</p>",
        esc(&d.repo),
        if d.encrypted {
            "encrypted"
        } else {
            "UNENCRYPTED"
        },
        time(now)
    );

    // The numbers.
    let t = &d.totals;
    let logical: u64 = d.snapshots.iter().map(|(_, s)| s.size_bytes()).sum();
    let referenced: u64 = d.snapshots.iter().map(|(_, s)| s.data_bytes()).sum();
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let vms: BTreeMap<&str, Vec<(SnapshotId, &repo_format::Snapshot)>> =
        d.snapshots.iter().fold(BTreeMap::new(), |mut m, (id, s)| {
            m.entry(s.name.as_str())
                .or_insert_with(Vec::new)
                .push((*id, s));
            m
        });
    b.push_str("<div class=\"cards\">");
    for (id, label, value) in [
        ("snapshots", "snapshots", d.snapshots.len().to_string()),
        ("vms", "VMs", vms.len().to_string()),
        ("logical", "logical size", human_bytes(logical)),
        ("stored", "stored", human_bytes(t.pack_bytes)),
        ("unique", "unique data", human_bytes(t.data_raw_bytes)),
        (
            "dedup",
            "dedup ratio",
            format!("{:.2}x", ratio(referenced, t.data_raw_bytes)),
        ),
        (
            "compression",
            "compression ratio",
            format!("{:.2}x", ratio(t.data_raw_bytes, t.data_stored_bytes)),
        ),
        (
            "overall",
            "logical / stored",
            format!("{:.2}x", ratio(logical, t.pack_bytes)),
        ),
    ] {
        let _ = write!(
            b,
            "<div class=\"card\" id=\"card-{id}\">{label}<b>{}</b></div>",
            esc(&value)
        );
    }
    b.push_str("</div>");
    for u in &d.unreadable {
        let _ = write!(b, "<p class=\"bad\">unreadable snapshot: {}</p>", esc(u));
    }

    // Health: this host's last verify and prune, and the jobs' last runs.
    b.push_str("<h2>Checks</h2><table id=\"checks\">");
    let _ = write!(
        b,
        "<tr id=\"last-verify\"><th>last verify</th><td>{}</td></tr><tr id=\"last-prune\"><th>last prune</th><td>{}</td></tr>",
        outcome(d.last.verify.as_ref(), now),
        outcome(d.last.prune.as_ref(), now)
    );
    for (path, r) in &d.reports {
        let shown = match r {
            Ok(v) => {
                let status = v["status"].as_str().unwrap_or("?");
                let class = if status == "success" { "ok" } else { "bad" };
                let failed: Vec<String> = v["vms"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|vm| vm["status"] != "ok")
                    .map(|vm| {
                        format!(
                            "{} {}: {}",
                            vm["name"].as_str().unwrap_or("?"),
                            vm["status"].as_str().unwrap_or("?"),
                            vm["errors"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|e| e.as_str())
                                .collect::<Vec<_>>()
                                .join("; ")
                        )
                    })
                    .collect();
                format!(
                    "<span class=\"{class}\" data-status=\"{}\">{}</span>, finished {}{}",
                    esc(status),
                    esc(status),
                    esc(v["finished"].as_str().unwrap_or("?")),
                    failed
                        .iter()
                        .map(|f| format!("<br>{}", esc(f)))
                        .collect::<String>()
                )
            }
            Err(e) => format!("<span class=\"bad\">unreadable: {}</span>", esc(e)),
        };
        let _ = write!(
            b,
            "<tr class=\"job\"><th>job report <code>{}</code></th><td>{shown}</td></tr>",
            esc(&path.display().to_string())
        );
    }
    b.push_str("</table>");

    // VMs.
    let from = now - jiff::SignedDuration::from_hours(24 * 30);
    let _ = write!(
        b,
        "<h2>VMs</h2><p class=\"muted\">Red: the newest snapshot is older than {}. The strip shows the last 30 days.</p>\
         <table id=\"vms\"><tr><th>VM</th><th>last backup</th><th>age</th><th>snapshots</th><th>size</th><th>added</th><th>boot test</th><th>last 30 days</th></tr>",
        age(stale_after.as_secs() as i64)
    );
    for (name, snaps) in &vms {
        let (last_id, last) = snaps.last().expect("a VM has a snapshot");
        let secs = now.as_second() - last.time.as_second();
        let stale = secs > stale_after.as_secs() as i64;
        let added = last.new_stored_bytes();
        let times: Vec<_> = snaps
            .iter()
            .filter(|(_, s)| s.time >= from)
            .map(|(id, s)| (s.time, format!("{} {}", id.short(), time(s.time))))
            .collect();
        let boot = match d.last.boot.get(*name) {
            None => "<span class=\"muted\">-</span>".to_string(),
            Some(o) => outcome(Some(o), now),
        };
        let _ = write!(
            b,
            "<tr class=\"vm{}\" data-vm=\"{}\" data-snapshots=\"{}\" data-last=\"{}\" data-stale=\"{stale}\"><td>{}</td><td><a href=\"/snapshot/{}\">{}</a> {}</td><td class=\"age\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{boot}</td><td>{}</td></tr>",
            if stale { " stale" } else { "" },
            esc(name),
            snaps.len(),
            last_id.to_hex(),
            esc(name),
            last_id.to_hex(),
            last_id.short(),
            time(last.time),
            age(secs),
            snaps.len(),
            human_bytes(last.size_bytes()),
            human_bytes(added),
            plot::timeline(&times, from, now)
        );
    }
    // VMs a job report names that have no snapshot at all: never backed up.
    let never: std::collections::BTreeSet<&str> = d
        .reports
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .flat_map(|v| v["vms"].as_array().into_iter().flatten())
        .filter_map(|vm| vm["name"].as_str())
        .filter(|name| !vms.contains_key(name))
        .collect();
    for name in never {
        let _ = write!(
            b,
            "<tr class=\"vm stale\" data-vm=\"{}\" data-snapshots=\"0\" data-last=\"\" data-stale=\"true\"><td>{}</td><td>never backed up</td><td class=\"age\">-</td><td class=\"n\">0</td><td></td><td></td><td></td><td></td></tr>",
            esc(name),
            esc(name)
        );
    }
    b.push_str("</table>");

    // Nights and growth: per UTC day, the bytes the snapshots of that day added.
    let mut nights: BTreeMap<String, u64> = BTreeMap::new();
    for (_, s) in &d.snapshots {
        let day = s.time.strftime("%Y-%m-%d").to_string();
        *nights.entry(day).or_default() += s.new_stored_bytes();
    }
    let nights: Vec<(String, u64)> = nights.into_iter().collect();
    let shown = &nights[nights.len().saturating_sub(60)..];
    let mut total = 0u64;
    let growth: Vec<(String, u64)> = nights
        .iter()
        .map(|(day, n)| {
            total += n;
            (day.clone(), total)
        })
        .collect();
    let _ = write!(
        b,
        "<h2>Nights</h2><p class=\"muted\">Bytes stored per day (UTC) by the snapshots kept, compressed and after deduplication: the last {} day(s) with backups.</p>{}<h2>Growth</h2><p class=\"muted\">Their running total: what the snapshots kept added to the repository, day by day.</p>{}",
        shown.len(),
        plot::bars("stored bytes added per day", "plot-nights", shown),
        plot::line("repository growth (stored bytes, cumulative)", "plot-growth", &growth)
    );

    // Every snapshot, newest first.
    b.push_str("<h2>Snapshots</h2><table id=\"snapshots\"><tr><th>id</th><th>time</th><th>VM</th><th>tags</th><th>disks</th><th>size</th><th>added</th></tr>");
    for (id, s) in d.snapshots.iter().rev() {
        let added = s.new_stored_bytes();
        let _ = write!(
            b,
            "<tr class=\"snap\" data-id=\"{}\" data-vm=\"{}\"><td><a href=\"/snapshot/{}\"><code>{}</code></a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            id.to_hex(),
            esc(&s.name),
            id.to_hex(),
            id.short(),
            time(s.time),
            esc(&s.name),
            s.tags.iter().map(|t| esc(t)).collect::<Vec<_>>().join(", "),
            s.disks.iter().map(|d| esc(&d.label)).collect::<Vec<_>>().join(", "),
            human_bytes(s.size_bytes()),
            human_bytes(added)
        );
    }
    b.push_str("</table>");
    doc(&format!("dedisk: {}", d.repo), &b)
}

/// One snapshot: its disks, what the backup did with each, its metadata files.
pub fn snapshot(d: &Data, id: SnapshotId) -> Option<String> {
    let (_, s) = d.snapshots.iter().find(|(i, _)| *i == id)?;
    let mut b = String::new();
    let _ = write!(
        b,
        "<p><a href=\"/\">&larr; overview</a></p><h1>Snapshot <code id=\"snapshot-id\">{}</code></h1><table id=\"snapshot\">\
         <tr><th>VM</th><td id=\"snapshot-vm\">{}</td></tr><tr><th>time</th><td>{}</td></tr><tr><th>host</th><td>{}</td></tr>\
         <tr><th>tags</th><td id=\"snapshot-tags\">{}</td></tr><tr><th>size</th><td>{}</td></tr><tr><th>previous</th><td>{}</td></tr><tr><th>written by</th><td>{}</td></tr></table>",
        id.to_hex(),
        esc(&s.name),
        time(s.time),
        esc(&s.hostname),
        s.tags.iter().map(|t| esc(t)).collect::<Vec<_>>().join(", "),
        human_bytes(s.size_bytes()),
        match s.previous {
            Some(p) => format!("<a href=\"/snapshot/{}\">{}</a>", p.to_hex(), p.short()),
            None => "-".into(),
        },
        esc(&s.program_version)
    );
    b.push_str("<h2>Disks</h2><table id=\"disks\"><tr><th>label</th><th>size</th><th>source</th><th>read</th><th>data</th><th>chunks (new)</th><th>stored</th><th>seconds</th><th>change map</th><th>lost</th></tr>");
    for disk in &s.disks {
        let st = &disk.stats;
        let changes = match &disk.changes {
            None => "full read".to_string(),
            Some(c) => format!(
                "{}{}",
                esc(&c.map),
                match (&c.base, &c.full_read) {
                    (Some(base), _) => format!(
                        ", incremental from {}: {} changed, {} re-read and verified",
                        base.short(),
                        human_bytes(c.changed_bytes),
                        human_bytes(c.verified_bytes)
                    ),
                    (None, Some(why)) => format!(", read in full: {}", esc(why)),
                    (None, None) => String::new(),
                }
            ),
        };
        let _ = write!(
            b,
            "<tr class=\"disk\" data-label=\"{}\" data-size=\"{}\"><td>{}</td><td class=\"n\">{}</td><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{} ({})</td><td class=\"n\">{}</td><td class=\"n\">{:.1}</td><td>{}</td><td>{}</td></tr>",
            esc(&disk.label),
            disk.size_bytes,
            esc(&disk.label),
            human_bytes(disk.size_bytes),
            esc(&disk.source),
            human_bytes(st.read_bytes),
            human_bytes(st.data_bytes),
            st.chunks,
            st.new_chunks,
            human_bytes(st.new_stored_bytes),
            st.seconds,
            changes,
            if disk.lost.is_empty() {
                "-".to_string()
            } else {
                format!(
                    "<span class=\"bad\">{} range(s), {}</span>",
                    disk.lost.len(),
                    human_bytes(disk.lost.iter().map(|l| l.len).sum())
                )
            }
        );
    }
    b.push_str("</table>");
    if !s.meta.is_empty() {
        b.push_str("<h2>Metadata</h2><table id=\"meta\"><tr><th>file</th><th>size</th></tr>");
        for m in &s.meta {
            let _ = write!(
                b,
                "<tr class=\"meta\"><td><code>{}</code></td><td class=\"n\">{}</td></tr>",
                esc(&m.name),
                human_bytes(m.size_bytes)
            );
        }
        b.push_str("</table>");
    }
    Some(doc(&format!("dedisk: snapshot {}", id.short()), &b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn markup_in_names_is_text() {
        assert_eq!(
            super::esc("<img src=x onerror=\"a('1')\">&\u{1b}"),
            "&lt;img src=x onerror=&quot;a(&#39;1&#39;)&quot;&gt;&amp;\\u{1b}"
        );
    }
}
