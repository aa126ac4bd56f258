//! Progress for long work (downloads, hashing, conversion): a live bar on a terminal,
//! a line every quarter otherwise (CI logs, systemd journal).

use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    done: AtomicU64,
    reported_quarter: AtomicU64,
}

impl Progress {
    pub fn bytes(label: &str, total: u64) -> Progress {
        Progress::new(label, total, "{msg:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    }

    pub fn items(label: &str, total: u64) -> Progress {
        Progress::new(label, total, "{msg:>24} [{bar:30}] {pos}/{len}")
    }

    fn new(label: &str, total: u64, template: &str) -> Progress {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(ProgressStyle::with_template(template).expect("static template").progress_chars("=> "));
            bar.set_message(label.to_string());
            bar
        });
        Progress { bar, label: label.to_string(), total, done: AtomicU64::new(0), reported_quarter: AtomicU64::new(0) }
    }

    pub fn advance(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        match &self.bar {
            Some(bar) => bar.set_position(done),
            // Hashing or converting a few hundred MB takes a second or two: not worth lines.
            None if self.total > (256 << 20) => {
                let quarter = done * 4 / self.total.max(1);
                if quarter > self.reported_quarter.load(Ordering::Relaxed) && quarter < 4 {
                    self.reported_quarter.store(quarter, Ordering::Relaxed);
                    eprintln!("  {}: {}%", self.label, quarter * 25);
                }
            }
            None => {}
        }
    }

    pub fn set(&self, done: u64) {
        let before = self.done.load(Ordering::Relaxed);
        self.advance(done.saturating_sub(before));
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
