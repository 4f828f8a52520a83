//! Small inline SVG plots, drawn on the server: no script, no external file.

use std::fmt::Write;

use super::page::esc;
use crate::output::bytes as human_bytes;

const W: f64 = 640.0;
const H: f64 = 180.0;
/// Room for the axis labels.
const LEFT: f64 = 70.0;
const BOTTOM: f64 = 22.0;

/// A bar per (label, value), each with a tooltip; the y axis from 0 to the largest.
pub fn bars(title: &str, id: &str, values: &[(String, u64)]) -> String {
    let max = values.iter().map(|v| v.1).max().unwrap_or(0).max(1) as f64;
    let mut s = open(title, id);
    axis(&mut s, max);
    let n = values.len().max(1) as f64;
    let slot = (W - LEFT - 10.0) / n;
    for (i, (label, v)) in values.iter().enumerate() {
        let h = (*v as f64 / max) * (H - BOTTOM - 10.0);
        let x = LEFT + i as f64 * slot + slot * 0.1;
        let _ = write!(
            s,
            r#"<rect class="bar" x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" data-label="{}" data-value="{v}"><title>{}: {}</title></rect>"#,
            H - BOTTOM - h,
            (slot * 0.8).max(1.0),
            esc(label),
            esc(label),
            human_bytes(*v)
        );
    }
    x_labels(
        &mut s,
        values.first().map(|v| v.0.as_str()),
        values.last().map(|v| v.0.as_str()),
    );
    s.push_str("</svg>");
    s
}

/// A line through (label, value) points in order, e.g. a cumulative total.
pub fn line(title: &str, id: &str, points: &[(String, u64)]) -> String {
    let max = points.iter().map(|v| v.1).max().unwrap_or(0).max(1) as f64;
    let mut s = open(title, id);
    axis(&mut s, max);
    let n = points.len().saturating_sub(1).max(1) as f64;
    let xy = |i: usize, v: u64| {
        (
            LEFT + (W - LEFT - 10.0) * i as f64 / n,
            H - BOTTOM - (v as f64 / max) * (H - BOTTOM - 10.0),
        )
    };
    let path: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, (_, v))| {
            let (x, y) = xy(i, *v);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let _ = write!(s, r#"<polyline class="line" points="{}"/>"#, path.join(" "));
    for (i, (label, v)) in points.iter().enumerate() {
        let (x, y) = xy(i, *v);
        let _ = write!(
            s,
            r#"<circle class="point" cx="{x:.1}" cy="{y:.1}" r="3" data-label="{}" data-value="{v}"><title>{}: {}</title></circle>"#,
            esc(label),
            esc(label),
            human_bytes(*v)
        );
    }
    x_labels(
        &mut s,
        points.first().map(|v| v.0.as_str()),
        points.last().map(|v| v.0.as_str()),
    );
    s.push_str("</svg>");
    s
}

/// A strip from `from` to `to` with a dot at each snapshot time (red when `bad`).
pub fn timeline(
    times: &[(jiff::Timestamp, String)],
    from: jiff::Timestamp,
    to: jiff::Timestamp,
) -> String {
    let (w, h) = (260.0, 18.0);
    let span = (to.as_second() - from.as_second()).max(1) as f64;
    let mut s = format!(
        r#"<svg class="timeline" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="snapshots over time"><line x1="0" y1="9" x2="{w}" y2="9" class="track"/>"#
    );
    for (t, label) in times {
        let x =
            4.0 + (w - 8.0) * ((t.as_second() - from.as_second()) as f64 / span).clamp(0.0, 1.0);
        let _ = write!(
            s,
            r#"<circle cx="{x:.1}" cy="9" r="4"><title>{}</title></circle>"#,
            esc(label)
        );
    }
    s.push_str("</svg>");
    s
}

fn open(title: &str, id: &str) -> String {
    format!(
        r#"<svg id="{id}" class="plot" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{t}"><title>{t}</title>"#,
        t = esc(title)
    )
}

fn axis(s: &mut String, max: f64) {
    let _ = write!(
        s,
        r#"<line class="axis" x1="{LEFT}" y1="{}" x2="{}" y2="{}"/><line class="axis" x1="{LEFT}" y1="10" x2="{LEFT}" y2="{}"/><text x="{}" y="14" text-anchor="end">{}</text><text x="{}" y="{}" text-anchor="end">0</text>"#,
        H - BOTTOM,
        W - 10.0,
        H - BOTTOM,
        H - BOTTOM,
        LEFT - 4.0,
        human_bytes(max as u64),
        LEFT - 4.0,
        H - BOTTOM
    );
}

fn x_labels(s: &mut String, first: Option<&str>, last: Option<&str>) {
    if let Some(f) = first {
        let _ = write!(s, r#"<text x="{LEFT}" y="{}">{}</text>"#, H - 6.0, esc(f));
    }
    if let Some(l) = last.filter(|l| Some(*l) != first) {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            W - 10.0,
            H - 6.0,
            esc(l)
        );
    }
}
