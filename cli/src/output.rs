//! Printing results: human text or JSON on stdout, a broken pipe ends quietly.

use std::io::Write;

/// Writes a line to stdout; a closed pipe (`dedisk snapshots | head`) exits 0.
pub fn line(text: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{}", text.as_ref()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("dedisk: error: writing output: {e}");
        std::process::exit(1);
    }
}

/// Prints a JSON value as one line.
pub fn json(value: &serde_json::Value) {
    line(serde_json::to_string(value).expect("JSON values serialize"));
}

/// `1536` -> `1.5 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// Bytes per second, human.
pub fn rate(n: u64, seconds: f64) -> String {
    if seconds <= 0.0 {
        return "-".into();
    }
    format!("{}/s", bytes((n as f64 / seconds) as u64))
}

/// Local time of a timestamp, to the second.
pub fn time(t: jiff::Timestamp) -> String {
    t.to_zoned(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_are_human() {
        assert_eq!(super::bytes(12), "12 B");
        assert_eq!(super::bytes(1536), "1.50 KiB");
        assert_eq!(super::bytes(3 << 30), "3.00 GiB");
    }
}
