//! Progress on stderr as a bar (only when stderr is a terminal), or with `--json` as
//! `{"type":"progress",...}` lines on stdout, at most one a second per disk and one
//! when it ends, before the command's summary document. docs/JSON.md lists the fields.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a JSON progress line is printed while a disk is in progress.
const JSON_EVERY: Duration = Duration::from_secs(1);

pub struct Bar {
    bar: Option<ProgressBar>,
    json: Option<JsonProgress>,
}

/// The state behind JSON progress lines.
struct JsonProgress {
    command: &'static str,
    /// The phase the command is in (the command's name until it names one).
    phase: Mutex<String>,
    done: AtomicU64,
    /// (label, total bytes, when it started).
    current: Mutex<(String, Option<u64>, Instant)>,
    /// Milliseconds after `epoch` before which no line is due: workers call `advance`
    /// for every chunk, and only one call a second takes the lock.
    epoch: Instant,
    next_ms: AtomicU64,
}

impl Bar {
    /// A bar if stderr is a terminal and the user did not ask for quiet or JSON output;
    /// JSON lines for `command` with `--json` (unless `--quiet`).
    pub fn new(g: &crate::args::Global, command: &'static str) -> Self {
        let bar = (!g.json && !g.quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            b
        });
        let json = (g.json && !g.quiet).then(|| {
            let now = Instant::now();
            JsonProgress {
                command,
                phase: Mutex::new(command.to_string()),
                done: AtomicU64::new(0),
                current: Mutex::new((String::new(), None, now)),
                epoch: now,
                next_ms: AtomicU64::new(0),
            }
        });
        Bar { bar, json }
    }
}

impl JsonProgress {
    /// Prints a line (always when `last`, else at most every JSON_EVERY).
    fn emit(&self, last: bool) {
        let now = Instant::now();
        let now_ms = now.duration_since(self.epoch).as_millis() as u64;
        if !last && now_ms < self.next_ms.load(Ordering::Relaxed) {
            return;
        }
        let phase = self.phase.lock().expect("no panics while held").clone();
        let cur = self.current.lock().expect("no panics while held");
        // Another thread may have printed while this one waited for the lock.
        if !last && now_ms < self.next_ms.load(Ordering::Relaxed) {
            return;
        }
        self.next_ms
            .store(now_ms + JSON_EVERY.as_millis() as u64, Ordering::Relaxed);
        let done = self.done.load(Ordering::Relaxed);
        let elapsed = now.duration_since(cur.2).as_secs_f64();
        let rate = if elapsed > 0.0 {
            done as f64 / elapsed
        } else {
            0.0
        };
        let eta = match cur.1 {
            Some(total) if rate > 0.0 && !last => {
                Some((total.saturating_sub(done) as f64 / rate).round() as u64)
            }
            Some(_) if last => Some(0),
            _ => None,
        };
        crate::output::json(&serde_json::json!({
            "type": "progress",
            "command": self.command,
            "phase": phase,
            // Work outside a disk (a prune's mark, a verify's pack reads) has none.
            "disk": (!cur.0.is_empty()).then_some(&cur.0),
            "bytes_done": done,
            "bytes_total": cur.1,
            "elapsed_seconds": (elapsed * 10.0).round() / 10.0,
            "bytes_per_second": rate.round() as u64,
            "eta_seconds": eta,
            "done": last,
        }));
    }
}

impl engine::progress::Progress for Bar {
    fn phase(&self, name: &str) {
        if let Some(b) = &self.bar {
            b.set_prefix(name.to_string());
        }
        if let Some(j) = &self.json {
            *j.phase.lock().expect("no panics while held") = name.to_string();
        }
    }
    fn start(&self, label: &str, size_bytes: Option<u64>) {
        if let Some(b) = &self.bar {
            b.reset();
            if !label.is_empty() {
                b.set_prefix(label.to_string());
            }
            b.set_length(size_bytes.unwrap_or(0));
        }
        if let Some(j) = &self.json {
            j.done.store(0, Ordering::Relaxed);
            let now = Instant::now();
            *j.current.lock().expect("no panics while held") = (label.to_string(), size_bytes, now);
            j.next_ms.store(
                (now - j.epoch + JSON_EVERY).as_millis() as u64,
                Ordering::Relaxed,
            );
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
        if let Some(j) = &self.json {
            j.done.fetch_add(bytes, Ordering::Relaxed);
            j.emit(false);
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        if let Some(j) = &self.json {
            j.emit(true);
        }
    }
}
