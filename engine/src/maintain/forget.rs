//! Retention: which snapshots a policy keeps, and forgetting the rest.
//!
//! Policies apply per VM: each VM's snapshots are counted on their own. Walking a VM's
//! snapshots newest first, `keep-last N` keeps the N newest, and each calendar rule keeps
//! the newest snapshot of each of its N most recent buckets that hold a snapshot (hour,
//! day, ISO week, month, year, in the given time zone), like restic and borg do. A
//! snapshot is kept when any rule keeps it; the rules that did are recorded, so a dry run
//! can say why.
//!
//! Calendar buckets are local dates; hourly buckets also carry the UTC offset, so the hour
//! that repeats when clocks go back counts as the two real hours it is. Forgetting only
//! removes snapshot files; the data they alone used is reclaimed by prune.

use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Zoned};
use repo_format::{Repository, Snapshot, SnapshotId};
use serde::Serialize;

use crate::error::{Error, Result};

/// A retention policy. An empty policy is refused: it would forget everything.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    /// Keep everything newer than the VM's newest snapshot minus this span.
    pub within: Option<Span>,
    /// Keep every snapshot carrying one of these tags.
    pub tags: Vec<String>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within.is_none()
            && self.tags.is_empty()
    }
}

/// Parses a duration like `7d`, `2w`, `6m`, `1y`, `36h` or `1y6m` (y years, m months,
/// w weeks, d days, h hours).
pub fn parse_within(text: &str) -> Result<Span> {
    let bad = || {
        Error::Usage(format!(
            "invalid duration {text:?}: use numbers with y, m, w, d or h, like 7d or 1y6m"
        ))
    };
    let mut span = Span::new();
    let mut digits = String::new();
    let mut any = false;
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        span = match c {
            'y' => span.try_years(n),
            'm' => span.try_months(n),
            'w' => span.try_weeks(n),
            'd' => span.try_days(n),
            'h' => span.try_hours(n),
            _ => return Err(bad()),
        }
        .map_err(|_| bad())?;
        any = true;
    }
    if !digits.is_empty() || !any {
        return Err(bad());
    }
    Ok(span)
}

/// The verdict on one snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub id: SnapshotId,
    pub time: Timestamp,
    pub name: String,
    pub keep: bool,
    /// The rules that keep it (`last`, `daily`, `tag nightly`, `within 7d` ...).
    pub reasons: Vec<String>,
}

/// Applies `policy` to one VM's snapshots; returns decisions newest first.
pub fn apply(
    policy: &Policy,
    snapshots: &[(SnapshotId, &Snapshot)],
    tz: &TimeZone,
) -> Vec<Decision> {
    let mut snaps: Vec<&(SnapshotId, &Snapshot)> = snapshots.iter().collect();
    snaps.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(b.0.cmp(&a.0)));
    let newest = snaps.first().map(|s| s.1.time.to_zoned(tz.clone()));
    let cutoff = match (&newest, policy.within) {
        (Some(n), Some(span)) => n.checked_sub(span).ok().map(|z| z.timestamp()),
        _ => None,
    };
    type Key = fn(&Zoned) -> String;
    let hour: Key = |z| format!("{} {:02} {}", z.date(), z.hour(), z.offset());
    let day: Key = |z| z.date().to_string();
    let week: Key = |z| {
        let w = z.date().iso_week_date();
        format!("{}-W{:02}", w.year(), w.week())
    };
    let month: Key = |z| format!("{}-{:02}", z.year(), z.month());
    let year: Key = |z| z.year().to_string();
    let mut rules: Vec<(&str, u32, Key, Option<String>)> = vec![
        ("hourly", policy.hourly, hour, None),
        ("daily", policy.daily, day, None),
        ("weekly", policy.weekly, week, None),
        ("monthly", policy.monthly, month, None),
        ("yearly", policy.yearly, year, None),
    ];
    let mut last_left = policy.last;
    let mut out = Vec::with_capacity(snaps.len());
    for (id, s) in snaps {
        let local = s.time.to_zoned(tz.clone());
        let mut reasons = Vec::new();
        if last_left > 0 {
            last_left -= 1;
            reasons.push("last".to_string());
        }
        for (name, left, key, seen) in rules.iter_mut() {
            if *left == 0 {
                continue;
            }
            let k = key(&local);
            if seen.as_deref() != Some(k.as_str()) {
                *left -= 1;
                *seen = Some(k);
                reasons.push(name.to_string());
            }
        }
        if let (Some(cut), Some(span)) = (cutoff, policy.within) {
            if s.time >= cut {
                reasons.push(format!("within {span:#}"));
            }
        }
        for t in &policy.tags {
            if s.tags.contains(t) {
                reasons.push(format!("tag {t}"));
            }
        }
        out.push(Decision {
            id: *id,
            time: s.time,
            name: s.name.clone(),
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    out
}

/// Applies `policy` to every VM (or only `name`) and, unless `dry_run`, deletes the
/// snapshot files it does not keep. Returns every decision, grouped by VM.
pub fn forget(
    repo: &Repository,
    _lock: &repo_format::lock::SharedLock,
    policy: &Policy,
    name: Option<&str>,
    dry_run: bool,
    tz: &TimeZone,
) -> Result<Vec<Decision>> {
    if policy.is_empty() {
        return Err(Error::Usage(
            "no keep rule given: that would forget every snapshot (give --keep-last, --keep-daily, ...)".into(),
        ));
    }
    // A snapshot file that cannot be read is never deleted by a policy.
    let all: Vec<(SnapshotId, Snapshot)> = repo.list_snapshots()?.into_iter().flatten().collect();
    let mut vms: Vec<&str> = all.iter().map(|(_, s)| s.name.as_str()).collect();
    vms.sort();
    vms.dedup();
    let mut decisions = Vec::new();
    for vm in vms.into_iter().filter(|vm| name.is_none_or(|n| n == *vm)) {
        let group: Vec<(SnapshotId, &Snapshot)> = all
            .iter()
            .filter(|(_, s)| s.name == vm)
            .map(|(id, s)| (*id, s))
            .collect();
        decisions.extend(apply(policy, &group, tz));
    }
    if !dry_run {
        for d in decisions.iter().filter(|d| !d.keep) {
            // Recorded first: a gap this host made is not an attack (FORMAT.md 10.6).
            repo_format::history::History::update(repo, |h| {
                h.forgotten.insert(d.id);
            });
            repo.remove_snapshot(&d.id)?;
        }
    }
    Ok(decisions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(name: &str, local: &str, tags: &[&str], tz: &TimeZone) -> (SnapshotId, Snapshot) {
        // `local` is "YYYY-MM-DDTHH:MM[+HH:MM]" in `tz`; an explicit offset picks one side
        // of an ambiguous hour.
        let zoned: Zoned = if local.len() > 16 {
            let ts: Timestamp = format!("{local}:00").parse().unwrap();
            ts.to_zoned(tz.clone())
        } else {
            let dt: jiff::civil::DateTime = local.parse().unwrap();
            dt.to_zoned(tz.clone()).unwrap()
        };
        let s = Snapshot {
            snapshot_version: 1,
            time: zoned.timestamp(),
            name: name.into(),
            hostname: "h".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            disks: vec![],
            meta: vec![],
            program_version: "t".into(),
            previous: None,
        };
        let id = SnapshotId(*blake3::hash(format!("{name}{local}").as_bytes()).as_bytes());
        (id, s)
    }

    /// Runs `policy` over snapshots at `times` (local, Europe/Berlin) and returns the
    /// kept times, newest first.
    fn kept(policy: Policy, times: &[&str]) -> Vec<String> {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let snaps: Vec<_> = times.iter().map(|t| snap("vm", t, &[], &tz)).collect();
        let refs: Vec<_> = snaps.iter().map(|(id, s)| (*id, s)).collect();
        let mut by_time: std::collections::HashMap<Timestamp, &str> = Default::default();
        for ((_, s), t) in snaps.iter().zip(times) {
            by_time.insert(s.time, t);
        }
        apply(&policy, &refs, &tz)
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| by_time[&d.time].to_string())
            .collect()
    }

    #[test]
    fn daily_across_a_leap_day() {
        let p = Policy {
            daily: 3,
            ..Default::default()
        };
        let times = [
            "2028-02-27T23:30",
            "2028-02-28T01:00",
            "2028-02-28T23:59",
            "2028-02-29T00:01",
            "2028-02-29T12:00",
            "2028-03-01T00:00",
        ];
        assert_eq!(
            kept(p, &times),
            ["2028-03-01T00:00", "2028-02-29T12:00", "2028-02-28T23:59"]
        );
    }

    #[test]
    fn hourly_when_clocks_go_back_counts_the_repeated_hour_twice() {
        // 2026-10-25 in Berlin: 03:00 CEST becomes 02:00 CET; 02:xx happens twice.
        let p = Policy {
            hourly: 10,
            ..Default::default()
        };
        let times = [
            "2026-10-25T01:30",
            "2026-10-25T02:15+02:00",
            "2026-10-25T02:40+02:00",
            "2026-10-25T02:15+01:00",
            "2026-10-25T02:45+01:00",
            "2026-10-25T03:10",
        ];
        assert_eq!(
            kept(p, &times),
            [
                "2026-10-25T03:10",
                "2026-10-25T02:45+01:00",
                "2026-10-25T02:40+02:00",
                "2026-10-25T01:30"
            ]
        );
    }

    #[test]
    fn daily_when_clocks_go_forward() {
        // 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST; the day has 23 hours.
        let p = Policy {
            daily: 2,
            hourly: 0,
            ..Default::default()
        };
        let times = [
            "2026-03-28T23:00",
            "2026-03-29T01:30",
            "2026-03-29T03:30",
            "2026-03-30T00:30",
        ];
        assert_eq!(kept(p, &times), ["2026-03-30T00:30", "2026-03-29T03:30"]);
    }

    #[test]
    fn weekly_uses_iso_weeks_across_the_new_year() {
        // 2026-12-31 (Thu) and 2027-01-01 (Fri) are both in ISO week 2026-W53.
        let p = Policy {
            weekly: 2,
            ..Default::default()
        };
        let times = [
            "2026-12-27T10:00",
            "2026-12-31T10:00",
            "2027-01-01T10:00",
            "2027-01-04T10:00",
        ];
        assert_eq!(kept(p, &times), ["2027-01-04T10:00", "2027-01-01T10:00"]);
    }

    #[test]
    fn monthly_yearly_last_and_within_combine() {
        let times = [
            "2025-06-15T12:00",
            "2026-01-31T12:00",
            "2026-02-28T12:00",
            "2026-03-01T12:00",
            "2026-03-31T12:00",
        ];
        let p = Policy {
            monthly: 2,
            ..Default::default()
        };
        assert_eq!(kept(p, &times), ["2026-03-31T12:00", "2026-02-28T12:00"]);
        let p = Policy {
            yearly: 5,
            ..Default::default()
        };
        assert_eq!(kept(p, &times), ["2026-03-31T12:00", "2025-06-15T12:00"]);
        // One month before 2026-03-31 is 2026-02-28 (the month is shorter): inclusive.
        let p = Policy {
            within: Some(parse_within("1m").unwrap()),
            ..Default::default()
        };
        assert_eq!(
            kept(p, &times),
            ["2026-03-31T12:00", "2026-03-01T12:00", "2026-02-28T12:00"]
        );
        let p = Policy {
            last: 1,
            yearly: 1,
            ..Default::default()
        };
        assert_eq!(kept(p, &times), ["2026-03-31T12:00"]);
    }

    #[test]
    fn tags_keep_and_reasons_are_recorded() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let a = snap("vm", "2026-01-01T00:00", &["golden"], &tz);
        let b = snap("vm", "2026-01-02T00:00", &[], &tz);
        let c = snap("vm", "2026-01-03T00:00", &[], &tz);
        let refs = vec![(a.0, &a.1), (b.0, &b.1), (c.0, &c.1)];
        let p = Policy {
            last: 1,
            tags: vec!["golden".into()],
            ..Default::default()
        };
        let d = apply(&p, &refs, &tz);
        let summary: Vec<_> = d.iter().map(|d| (d.keep, d.reasons.join(","))).collect();
        assert_eq!(
            summary,
            [
                (true, "last".to_string()),
                (false, String::new()),
                (true, "tag golden".to_string())
            ]
        );
    }

    #[test]
    fn durations_parse() {
        assert!(parse_within("7d").is_ok());
        assert!(parse_within("1y6m").is_ok());
        assert!(parse_within("36h").is_ok());
        for bad in ["", "7", "d", "7x", "1.5d", "-1d"] {
            assert!(parse_within(bad).is_err(), "{bad}");
        }
    }
}
