//! Benchmarks anyone can run: `voxd bench` (the pipeline's latency on a spoken
//! corpus) and `voxd bench-asr` (Whisper's encoder window: time and accuracy).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Lowercase words, punctuation dropped, digits and "Mr" spelled out: how
/// transcripts are compared.
pub fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .replace(['-', '—'], " ")
        .split_whitespace()
        .map(|w| w.chars().filter(|c| c.is_alphanumeric() || *c == '\'').collect::<String>())
        .filter(|w| !w.is_empty())
        .map(|w| {
            match w.as_str() {
                "1" => "one", "2" => "two", "3" => "three", "4" => "four", "5" => "five",
                "6" => "six", "7" => "seven", "8" => "eight", "9" => "nine", "10" => "ten",
                "mr" => "mister",
                other => other,
            }
            .to_string()
        })
        .collect()
}

/// Word error rate (word-level edit distance over the reference length).
pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    let (r, h) = (words(reference), words(hypothesis));
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(rw != hw)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[h.len()] as f64 / r.len().max(1) as f64
}

/// Speech with known words: the pocketsphinx test clips and jfk.wav (installed by
/// set-up).
pub fn known_speech() -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let ps = Path::new("/usr/share/pocketsphinx/test/data");
    for (dir, list) in [("librivox", "transcription"), ("cards", "cards.transcription")] {
        let refs = std::fs::read_to_string(ps.join(dir).join(list)).with_context(|| format!("reading {}/{dir}/{list} (Debian pocketsphinx-testdata)", ps.display()))?;
        for line in refs.lines() {
            let Some((text, id)) = line.rsplit_once(" (") else { continue };
            let text = text.replace("<s>", "").replace("</s>", "").trim().to_string();
            out.push((ps.join(dir).join(format!("{}.wav", id.trim_end_matches(')'))), text));
        }
    }
    let jfk = crate::paths::cache_dir().join("testdata/jfk.wav");
    if jfk.exists() {
        out.push((jfk, "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.".into()));
    }
    Ok(out)
}

/// Percentile (nearest rank) of unsorted values.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&v, 50.0), Some(3.0));
        assert_eq!(percentile(&v, 95.0), Some(5.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn wer_counts_word_edits() {
        assert_eq!(wer("turn on the lights", "Turn on the lights."), 0.0);
        assert_eq!(wer("turn on the lights", "turn off the lights"), 0.25);
        assert_eq!(wer("ten of clubs", "10 of clubs"), 0.0);
    }
}
