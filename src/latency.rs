//! `voxd latency report`: what the latency logs say, for the person tuning voxd —
//! each stage's p50/p90/p99 and the round trip's distribution, grouped by models and
//! configuration; before/after deltas (`--compare`); a plot (`--plot`).
//!
//! Stages are the ones `voxd bench` uses (`bench::STAGES`): each stage's own time,
//! and its share of the round trip — the part of it that came after everything
//! before it, so work done during the hangover costs nothing and the shares of a turn
//! add up to its round trip.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::bench::{percentile, stage_times, STAGES};
use crate::pipeline::telemetry::TurnRecord;

/// What was read from latency logs: the turn records, and the lines that were not.
pub struct Loaded {
    pub turns: Vec<TurnRecord>,
    /// Per log with lines that are not turn records: skipped, not fatal.
    pub skipped: Vec<Skipped>,
}

/// Lines of one log that were not turn records: a torn last line after a crash,
/// garbage from a disk or an editor. The rest of the log still counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub path: PathBuf,
    pub lines: usize,
    /// The first such line (1-based) and why it is not a record.
    pub first_line: usize,
    pub first_error: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (path, n) = (self.path.display(), self.lines);
        write!(f, "{path}: skipped {n} line{} that {} not a voxd turn record; the first at {path}:{} ({})", if n == 1 { "" } else { "s" }, if n == 1 { "is" } else { "are" }, self.first_line, self.first_error)
    }
}

/// Reads latency logs. A line that is not a turn record — anywhere in a log — is
/// skipped and counted; the rest of the log is read.
pub fn load(paths: &[PathBuf]) -> Result<Loaded> {
    let mut loaded = Loaded { turns: Vec::new(), skipped: Vec::new() };
    for path in paths {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading latency log {}", path.display()))?;
        let (turns, skipped) = parse(&text, path);
        loaded.turns.extend(turns);
        loaded.skipped.extend(skipped);
    }
    Ok(loaded)
}

/// The turn records in one log's text, and what was skipped.
pub fn parse(text: &str, path: &Path) -> (Vec<TurnRecord>, Option<Skipped>) {
    let mut turns = Vec::new();
    let mut skipped: Option<Skipped> = None;
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match serde_json::from_str::<TurnRecord>(line) {
            Ok(t) => turns.push(t),
            Err(e) => match &mut skipped {
                Some(s) => s.lines += 1,
                None => skipped = Some(Skipped { path: path.to_path_buf(), lines: 1, first_line: i + 1, first_error: e.to_string() }),
            },
        }
    }
    (turns, skipped)
}

/// Turns that were spoken and answered (heard): the ones with a round trip. (A typed
/// turn has no speech to measure from.)
fn answered(turns: &[TurnRecord]) -> Vec<&TurnRecord> {
    turns.iter().filter(|t| !t.cancelled && !t.typed && t.round_trip_ms.is_some()).collect()
}

/// What a group of turns has in common: the models, the configuration and the clock.
fn group_key(t: &TurnRecord) -> String {
    let config = if t.config.is_empty() { "unknown".to_string() } else { t.config.clone() };
    format!("asr {} · llm {} · voice {} · config {config} · {}", t.models.asr, t.models.llm, t.models.tts, t.clock)
}

/// The figures of one set of turns: per row (round trip, then each stage's own time
/// and share), every turn's value.
struct Figures {
    turns: usize,
    answered: usize,
    cancelled: usize,
    rows: Vec<(String, Vec<f64>)>,
}

fn figures(turns: &[&TurnRecord]) -> Figures {
    let heard: Vec<&TurnRecord> = turns.iter().copied().filter(|t| !t.cancelled && t.round_trip_ms.is_some()).collect();
    let mut rows = vec![("round trip (speech end → first audio)".to_string(), heard.iter().filter_map(|t| t.round_trip_ms).collect())];
    let per_turn: Vec<Vec<(f64, f64)>> = heard.iter().map(|t| stage_times(&t.marks, t.asr.ms)).collect();
    for (i, (name, _)) in STAGES.iter().enumerate() {
        rows.push((format!("{name}: own"), per_turn.iter().map(|s| s[i].0).collect()));
        rows.push((format!("{name}: share"), per_turn.iter().map(|s| s[i].1).collect()));
    }
    Figures { turns: turns.len(), answered: heard.len(), cancelled: turns.iter().filter(|t| t.cancelled).count(), rows }
}

const PERCENTILES: [f64; 3] = [50.0, 90.0, 99.0];

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.0}"))
}

/// The plain-text report: for each group, the percentile table and a histogram of
/// the round trip.
pub fn report(turns: &[TurnRecord]) -> String {
    let mut out = String::new();
    let mut groups: BTreeMap<String, Vec<&TurnRecord>> = BTreeMap::new();
    for t in turns {
        groups.entry(group_key(t)).or_default().push(t);
    }
    if groups.is_empty() {
        return "no turns in the log(s)\n".into();
    }
    for (key, group) in &groups {
        let f = figures(group);
        let _ = writeln!(out, "{key}");
        let _ = writeln!(out, "{} turns: {} answered, {} cancelled", f.turns, f.answered, f.cancelled);
        let _ = writeln!(out, "{:<52} {:>7} {:>7} {:>7}", "ms", "p50", "p90", "p99");
        for (name, values) in &f.rows {
            let p: Vec<String> = PERCENTILES.iter().map(|p| fmt_ms(percentile(values, *p))).collect();
            let _ = writeln!(out, "{:<52} {:>7} {:>7} {:>7}", name, p[0], p[1], p[2]);
        }
        let _ = writeln!(out, "\nround trip distribution");
        out.push_str(&histogram_text(&f.rows[0].1));
        out.push('\n');
    }
    out
}

/// Buckets of the round trip, as a text bar chart.
fn histogram_text(values: &[f64]) -> String {
    let mut out = String::new();
    let buckets = buckets(values);
    let most = buckets.iter().map(|b| b.2).max().unwrap_or(0).max(1);
    for (from, to, n) in buckets {
        let _ = writeln!(out, "  {from:>5.0}-{to:<5.0} ms {:>4} {}", n, "#".repeat((n * 40).div_ceil(most)));
    }
    out
}

/// (from, to, count) buckets covering `values`: 100 ms wide, or wider to keep at most
/// 15 of them.
fn buckets(values: &[f64]) -> Vec<(f64, f64, usize)> {
    if values.is_empty() {
        return Vec::new();
    }
    let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
    let mut width = 100.0;
    while (hi / width).floor() - (lo / width).floor() + 1.0 > 15.0 {
        width *= 2.0;
    }
    let first = (lo / width).floor() as i64;
    let last = (hi / width).floor() as i64;
    (first..=last)
        .map(|b| {
            let (from, to) = (b as f64 * width, (b + 1) as f64 * width);
            (from, to, values.iter().filter(|v| **v >= from && **v < to).count())
        })
        .collect()
}

/// `--compare OLD NEW`: every row's percentiles before and after, and the change.
pub fn compare(old: &[TurnRecord], new: &[TurnRecord], old_name: &str, new_name: &str) -> String {
    let (a, b) = (figures(&old.iter().collect::<Vec<_>>()), figures(&new.iter().collect::<Vec<_>>()));
    let mut out = String::new();
    let _ = writeln!(out, "before: {old_name} ({} answered turns)\nafter:  {new_name} ({} answered turns)\n", a.answered, b.answered);
    let _ = writeln!(out, "{:<52} {:>17} {:>17} {:>17}", "ms (before → after)", "p50", "p90", "p99");
    for ((name, before), (_, after)) in a.rows.iter().zip(&b.rows) {
        let cells: Vec<String> = PERCENTILES
            .iter()
            .map(|p| match (percentile(before, *p), percentile(after, *p)) {
                (Some(x), Some(y)) => format!("{x:.0}→{y:.0} {:+.0}", y - x),
                _ => "-".into(),
            })
            .collect();
        let _ = writeln!(out, "{:<52} {:>17} {:>17} {:>17}", name, cells[0], cells[1], cells[2]);
    }
    if let (Some(x), Some(y)) = (percentile(&a.rows[0].1, 50.0), percentile(&b.rows[0].1, 50.0)) {
        let _ = writeln!(out, "\nround trip p50: {x:.0} → {y:.0} ms ({:+.0} ms, {:.2}x {})", y - x, if y <= x { x / y } else { y / x }, if y <= x { "faster" } else { "slower" });
    }
    out
}

/// Colours of the stages in the plot (critical-path shares, in `STAGES` order).
const COLOURS: [&str; 6] = ["#b8c4d6", "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f"];
const SERIES: [&str; 2] = ["#4e79a7", "#e15759"];

/// Draws the turns as SVG or PNG (by `path`'s extension): per turn, a bar of the
/// round trip stacked by the stages' shares; below, a histogram of the round trip
/// (one colour per series). PNG is the SVG rasterised by librsvg's `rsvg-convert`.
pub fn plot(series: &[(String, Vec<TurnRecord>)], path: &Path) -> Result<()> {
    let svg = svg(series);
    match path.extension().and_then(|e| e.to_str()) {
        Some("svg") => std::fs::write(path, svg).with_context(|| format!("writing {}", path.display())),
        Some("png") => rasterise(&svg, path),
        other => bail!(
            "--plot {}: {} is not a format voxd draws; name a .svg or .png file",
            path.display(),
            other.map_or("a file without an extension".to_string(), |e| format!(".{e}"))
        ),
    }
}

fn rasterise(svg: &str, png: &Path) -> Result<()> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("rsvg-convert")
        .args(["--format", "png", "--background-color", "white", "--output"])
        .arg(png)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("--plot {}: drawing PNG needs rsvg-convert ({e}; `sudo apt install librsvg2-bin`), or name a .svg file", png.display()))?;
    child.stdin.take().expect("piped").write_all(svg.as_bytes()).context("handing the plot to rsvg-convert")?;
    let out = child.wait_with_output().context("waiting for rsvg-convert")?;
    if !out.status.success() {
        bail!("--plot {}: rsvg-convert failed: {}", png.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn svg(series: &[(String, Vec<TurnRecord>)]) -> String {
    let heard: Vec<(usize, &TurnRecord)> = series.iter().enumerate().flat_map(|(i, (_, t))| answered(t).into_iter().map(move |t| (i, t))).collect();
    let (w, left, right) = (900.0, 70.0, 20.0);
    let plot_w = w - left - right;
    let (top1, h1) = (40.0, 260.0);
    let (top2, h2) = (top1 + h1 + 90.0, 200.0);
    let height = top2 + h2 + 70.0;
    let max_rt = heard.iter().filter_map(|(_, t)| t.round_trip_ms).fold(0.0f64, f64::max).max(1.0);
    let y_max = nice_ceiling(max_rt);
    let mut s = String::new();
    let _ = writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" viewBox="0 0 {w} {height}" font-family="sans-serif" font-size="12">"#);
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{left}" y="22" font-size="15">Round trip per turn (speech end → first audio), by stage on the critical path</text>"#);
    // Panel 1: stacked bars, one per answered turn.
    let bar_w = plot_w / heard.len().max(1) as f64;
    for tick in 0..=4 {
        let v = y_max * tick as f64 / 4.0;
        let y = top1 + h1 - h1 * v / y_max;
        let _ = writeln!(s, r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.0} ms</text>"##, left + plot_w, left - 6.0, y + 4.0);
    }
    for (i, (serie, t)) in heard.iter().enumerate() {
        let x = left + i as f64 * bar_w;
        let mut y = top1 + h1;
        for (k, (_, share)) in stage_times(&t.marks, t.asr.ms).iter().enumerate() {
            let hgt = h1 * share / y_max;
            y -= hgt;
            let _ = writeln!(s, r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{hgt:.1}" fill="{}"><title>turn {} ({}): {} {share:.0} ms</title></rect>"#, x + 0.5, (bar_w - 1.0).max(0.5), COLOURS[k], t.turn, esc(&series[*serie].0), STAGES[k].0);
        }
    }
    let _ = writeln!(s, r##"<line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="#333"/>"##, left + plot_w, top1 + h1, top1 + h1);
    // Where one series ends and the next begins.
    let mut start = 0;
    for (i, (name, turns)) in series.iter().enumerate() {
        let n = answered(turns).len();
        let x = left + start as f64 * bar_w;
        let _ = writeln!(s, r#"<text x="{:.1}" y="{}" fill="{}">{} ({n} turns)</text>"#, x + 2.0, top1 + h1 + 16.0, SERIES[i % 2], esc(name));
        if i > 0 {
            let _ = writeln!(s, r##"<line x1="{x:.1}" x2="{x:.1}" y1="{top1}" y2="{}" stroke="#333" stroke-dasharray="4 3"/>"##, top1 + h1);
        }
        start += n;
    }
    for (k, (name, _)) in STAGES.iter().enumerate() {
        let (x, y) = (left + (k % 3) as f64 * 270.0, top1 + h1 + 36.0 + (k / 3) as f64 * 18.0);
        let _ = writeln!(s, r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#, y - 10.0, COLOURS[k], x + 16.0, y, esc(name));
    }
    // Panel 2: the round trip's histogram, series side by side in each bucket.
    let _ = writeln!(s, r#"<text x="{left}" y="{}" font-size="15">Round trip distribution</text>"#, top2 - 14.0);
    let all: Vec<f64> = heard.iter().filter_map(|(_, t)| t.round_trip_ms).collect();
    let buckets = buckets(&all);
    let counts: Vec<Vec<usize>> = series
        .iter()
        .map(|(_, turns)| {
            let v: Vec<f64> = answered(turns).iter().filter_map(|t| t.round_trip_ms).collect();
            buckets.iter().map(|(from, to, _)| v.iter().filter(|x| **x >= *from && **x < *to).count()).collect()
        })
        .collect();
    let most = counts.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
    let bucket_w = plot_w / buckets.len().max(1) as f64;
    for (b, (from, _, _)) in buckets.iter().enumerate() {
        let x = left + b as f64 * bucket_w;
        let each = (bucket_w - 4.0) / series.len().max(1) as f64;
        for (i, c) in counts.iter().enumerate() {
            let hgt = h2 * c[b] as f64 / most;
            let _ = writeln!(s, r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{hgt:.1}" fill="{}"><title>{}: {} turns from {from:.0} ms</title></rect>"#, x + 2.0 + i as f64 * each, top2 + h2 - hgt, each.max(0.5), SERIES[i % 2], esc(&series[i].0), c[b]);
        }
        let _ = writeln!(s, r#"<text x="{x:.1}" y="{}">{from:.0}</text>"#, top2 + h2 + 16.0);
    }
    let _ = writeln!(s, r##"<line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="#333"/>"##, left + plot_w, top2 + h2, top2 + h2);
    let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="end">ms</text><text x="{}" y="{}" text-anchor="end">{most:.0} turns</text>"#, left + plot_w, top2 + h2 + 32.0, left - 6.0, top2 + 4.0);
    s.push_str("</svg>\n");
    s
}

/// 1, 2 or 5 times a power of ten, at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|x| *x >= v).unwrap_or(10.0 * p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_once() {
        let v = [120.0, 180.0, 250.0, 999.0, 1000.0];
        let b = buckets(&v);
        assert_eq!(b.first().unwrap().0, 100.0);
        assert_eq!(b.iter().map(|x| x.2).sum::<usize>(), v.len());
        let wide: Vec<f64> = (0..100).map(|i| i as f64 * 60.0).collect();
        assert!(buckets(&wide).len() <= 15);
        assert_eq!(buckets(&wide).iter().map(|x| x.2).sum::<usize>(), 100);
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(430.0), 500.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
        assert_eq!(nice_ceiling(1100.0), 2000.0);
    }
}
