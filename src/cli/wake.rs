//! `voxd bench-wake`: how well the wake word works, measured on audio made here.
//!
//! Positives: the wake phrase said by Piper (at three speeds) and by espeak-ng (three
//! voices, three speeds), followed at once or after a pause by a command, clean and
//! in room noise. Negatives: an hour (or `--hours`) of speech without it — every
//! request of the tool evaluation's homes and everyday sentences in six voices, the
//! real recordings on the machine, looped with other speeds, a second talker over
//! them and noise. The detector runs once over each; every threshold is then judged
//! from its scores: false rejects, false accepts per hour, how soon after the phrase
//! it wakes, and what the stage costs.

use std::process::Command as Process;

use serde::Serialize;

use super::*;
use crate::engine::wake::{Detector, WakeModels, CHUNK};
use crate::pipeline::wake::{phrase_words, Trigger};

const RATE: u32 = audio::ASR_RATE_HZ;
const COMMANDS: [&str; 5] = ["turn off the kitchen light.", "what time is it?", "set a timer for ten minutes.", "what's the weather like tomorrow?", "play some music in the living room."];
const PIPER_RATES: [f32; 3] = [0.8, 1.0, 1.25];
const ESPEAK_VOICES: [&str; 3] = ["en-us", "en-gb", "en-us+f3"];
const ESPEAK_WPM: [u32; 3] = [140, 175, 210];
/// The pause after the wake word in "after a pause" positives.
const PAUSE_S: f64 = 0.8;
/// Room noise in the noisy positives: this far below the speech.
const NOISE_SNR_DB: f32 = 10.0;
/// A wake counts for a positive when it comes at most this long after the phrase ends.
const LATE_S: f64 = 1.5;
const THRESHOLDS: [f32; 8] = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];
/// Goals (issue 16).
const GOAL_FRR: f64 = 0.05;
const GOAL_FA_PER_H: f64 = 0.5;
const GOAL_CPU: f64 = 0.02;
const GOAL_LISTENING_MS: f64 = 150.0;

/// Things people say near a voice assistant that are not for it (with the eval's
/// requests, the negatives' words).
const EVERYDAY: [&str; 30] = [
    "Did you remember to buy milk on the way home?",
    "The match starts at eight, so we should eat before then.",
    "I think the blue one looks better on you.",
    "Can you pass me the salt, please?",
    "We are going to my parents' place this weekend.",
    "The traffic on the bridge was terrible this morning.",
    "Have you seen my keys anywhere?",
    "Tonight on the news: storms move across the northern coast.",
    "And now, the weather for the weekend, with plenty of sunshine.",
    "Scientists say the new telescope can see the oldest galaxies.",
    "Stay tuned, after the break we will talk to the mayor.",
    "Don't forget to water the plants before you leave.",
    "My phone battery is almost empty again.",
    "Who wants pasta for dinner?",
    "The kids have a school trip to the museum on Friday.",
    "I'll call you back in ten minutes, I'm driving.",
    "That film was much longer than I expected.",
    "Could you turn the music down a little? I'm on a call.",
    "The garden needs mowing before it rains.",
    "She said the meeting was moved to Thursday afternoon.",
    "Let's take the dog for a walk after lunch.",
    "I can't believe how cold it is outside today.",
    "The recipe needs two eggs and a cup of flour.",
    "Harvey, are you coming to the party on Saturday?",
    "Travis scored twice in the second half.",
    "Hey, what are you doing later tonight?",
    "Jason and Marcus are arriving on the late train.",
    "Service was slow, but the food was worth the wait.",
    "The charger is on the shelf in the hallway.",
    "Are you sure you locked the back door?",
];

/// Who says it.
#[derive(Debug, Clone, Copy)]
enum Voice {
    Piper { rate: f32 },
    Espeak { voice: &'static str, wpm: u32 },
}

impl Voice {
    fn label(&self) -> String {
        match self {
            Voice::Piper { rate } => format!("piper {rate}x"),
            Voice::Espeak { voice, wpm } => format!("espeak-ng {voice} {wpm} wpm"),
        }
    }

    fn family(&self) -> &'static str {
        match self {
            Voice::Piper { .. } => "piper",
            Voice::Espeak { .. } => "espeak-ng",
        }
    }
}

/// Piper (one engine per speed) and espeak-ng, 16 kHz out.
struct Speakers {
    piper: Vec<(f32, Tts)>,
    /// Where espeak-ng writes (removed when done).
    scratch: PathBuf,
}

impl Drop for Speakers {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.scratch);
    }
}

impl Speakers {
    fn load(env: &Env) -> Result<Speakers> {
        let voice = env.resolve_verified(Role::Tts, None)?;
        let mut piper = Vec::new();
        for rate in PIPER_RATES {
            let options = TtsOptions { rate, variability: 1.0, threads: env.config.tts.threads, espeak_data_dir: env.config.tts.espeak_data_dir.clone() };
            piper.push((rate, Tts::load(&voice.path, &voice.id, &options)?));
        }
        let probe = Process::new("espeak-ng").arg("--version").output();
        if !probe.is_ok_and(|o| o.status.success()) {
            bail!("espeak-ng is not installed (Debian package espeak-ng; ./scripts/setup installs it): bench-wake speaks with it");
        }
        Ok(Speakers { piper, scratch: std::env::temp_dir().join(format!("voxd-bench-wake-{}.wav", std::process::id())) })
    }

    fn say(&mut self, voice: Voice, text: &str) -> Result<Vec<f32>> {
        match voice {
            Voice::Piper { rate } => {
                let tts = &mut self.piper.iter_mut().find(|(r, _)| *r == rate).expect("a loaded speed").1;
                let speech = tts.synthesize(text)?;
                Ok(audio::resample(&speech.samples, speech.rate_hz, RATE)?)
            }
            Voice::Espeak { voice, wpm } => {
                let wav = &self.scratch;
                let out = Process::new("espeak-ng").args(["-v", voice, "-s", &wpm.to_string(), "-w"]).arg(wav).arg(text).output().context("running espeak-ng")?;
                if !out.status.success() {
                    bail!("espeak-ng -v {voice} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
                }
                Ok(audio::read_wav(wav, RATE)?.samples)
            }
        }
    }
}

/// A small deterministic generator (the same corpus in every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|s| s * s).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

/// Adds room noise (low-passed white noise: a fan, traffic) `snr_db` below `x`'s speech.
fn add_noise(x: &mut [f32], snr_db: f32, rng: &mut Rng) {
    let target = rms(x) / 10f32.powf(snr_db / 20.0);
    let mut lp = 0.0f32;
    let noise: Vec<f32> = (0..x.len())
        .map(|_| {
            lp = 0.95 * lp + 0.05 * (rng.unit() * 2.0 - 1.0);
            lp
        })
        .collect();
    let gain = target / rms(&noise).max(1e-9);
    for (s, n) in x.iter_mut().zip(noise) {
        *s += gain * n;
    }
}

fn silence(s: f64) -> Vec<f32> {
    vec![0.0; (s * RATE as f64) as usize]
}

/// One positive clip: where its wake phrase is in the positives' stream.
#[derive(Debug, Clone, Serialize)]
struct Positive {
    voice: String,
    family: &'static str,
    pause: bool,
    noisy: bool,
    wake_start: u64,
    wake_end: u64,
}

/// The detector's score for the wake word at every step of `audio` (step end, score),
/// and the time it took.
fn scores(models: &WakeModels, audio: &[f32], label: &str) -> Result<(Vec<(u64, f32)>, std::time::Duration)> {
    let mut detector = Detector::load(models)?;
    let bar = models::progress::Progress::items(label, (audio.len() / CHUNK) as u64);
    let mut out = Vec::with_capacity(audio.len() / CHUNK);
    let mut busy = std::time::Duration::ZERO;
    for piece in audio.chunks(CHUNK * 50) {
        let started = std::time::Instant::now();
        let steps = detector.push(piece)?;
        busy += started.elapsed();
        bar.advance(steps.len() as u64);
        out.extend(steps.into_iter().map(|s| (s.end_sample, s.scores[0])));
    }
    bar.finish();
    Ok((out, busy))
}

/// `voxd wake-score`: each file heard as the live stage hears a microphone that has
/// been listening — after silence long enough to fill the detector's windows (76 mel
/// frames, then 16 features: 2.08 s), and followed by 1 s so that a phrase at the very
/// end still gets its steps — and each wake word's scores over it.
pub(super) fn wake_score(env: &Env, files: &[PathBuf], every_step: bool) -> Result<()> {
    let models = env.wake_models()?;
    // 1 s and 16 steps: the steps fall where openWakeWord's `predict_clip` puts them
    // (after its 1 s of padding), so the two can be set side by side.
    let lead = RATE as usize + 16 * CHUNK;
    for file in files {
        let clip = audio::read_wav(file, RATE)?;
        let mut heard = vec![0.0; lead];
        heard.extend(&clip.samples);
        heard.extend(silence(1.0));
        let steps = Detector::load(&models)?.push(&heard)?;
        // Seconds from the start of the file; the steps of the silence before it are left out.
        let at_s = |end_sample: u64| (end_sample as f64 - lead as f64) / RATE as f64;
        for (w, (word, _)) in models.words.iter().enumerate() {
            let series: Vec<(u64, f32)> = steps.iter().filter(|s| s.end_sample > lead as u64).map(|s| (s.end_sample, s.scores[w])).collect();
            if every_step {
                for (at, score) in &series {
                    println!("{}\t{word}\t{:.2}\t{score:.4}", file.display(), at_s(*at));
                }
                continue;
            }
            let (best_at, best) = series.iter().copied().fold((0, 0.0), |best, step| if step.1 > best.1 { step } else { best });
            let trigger = Trigger::for_word(&env.config.wake, word);
            let rule = format!("threshold {}, {} step{}", trigger.threshold, trigger.steps, if trigger.steps == 1 { "" } else { "s" });
            let woke: Vec<String> = wakes(&series, trigger).into_iter().map(|at| format!("{:.2} s", at_s(at))).collect();
            let verdict = if woke.is_empty() { format!("does not wake ({rule})") } else { format!("wakes at {} ({rule})", woke.join(", ")) };
            println!("{}  {word}: best {best:.3} at {:.2} s; {verdict}", file.display(), at_s(best_at));
        }
    }
    Ok(())
}

/// Where `trigger` wakes over `steps`.
fn wakes(steps: &[(u64, f32)], mut trigger: Trigger) -> Vec<u64> {
    steps.iter().filter(|(at, score)| trigger.step(*score, *at)).map(|(at, _)| *at).collect()
}

#[derive(Debug, Clone, Serialize)]
struct AtThreshold {
    threshold: f32,
    /// False-reject rate: clean, noisy, and by voice family (clean).
    frr_clean: f64,
    frr_noisy: f64,
    frr_piper: f64,
    frr_espeak: f64,
    false_accepts: usize,
    false_accepts_per_hour: f64,
    /// Wakes in the positives' audio away from their wake phrases (in the commands).
    stray_in_positives: usize,
    /// ms from the end of the wake phrase to the step that woke (p50, p95).
    detection_ms: (f64, f64),
    /// Clean positives missed, by voice: (voice, missed, of).
    missed_by_voice: Vec<(String, usize, usize)>,
}

fn judge(threshold: f32, config: &crate::config::WakeConfig, word: &str, positives: &[Positive], pos_steps: &[(u64, f32)], neg_steps: &[(u64, f32)], neg_hours: f64) -> AtThreshold {
    let trigger = || {
        let mut t = Trigger::for_word(config, word);
        t.threshold = threshold;
        t
    };
    let woke = wakes(pos_steps, trigger());
    let mut missed = |p: &Positive| !woke.iter().any(|at| *at >= p.wake_start && *at <= p.wake_end + (LATE_S * RATE as f64) as u64);
    let rate = |sel: &dyn Fn(&Positive) -> bool, missed: &mut dyn FnMut(&Positive) -> bool| {
        let chosen: Vec<&Positive> = positives.iter().filter(|p| sel(p)).collect();
        chosen.iter().filter(|p| missed(p)).count() as f64 / chosen.len().max(1) as f64
    };
    let mut missed_by_voice: Vec<(String, usize, usize)> = Vec::new();
    for p in positives.iter().filter(|p| !p.noisy) {
        let miss = usize::from(missed(p));
        match missed_by_voice.iter_mut().find(|(v, _, _)| *v == p.voice) {
            Some(entry) => {
                entry.1 += miss;
                entry.2 += 1;
            }
            None => missed_by_voice.push((p.voice.clone(), miss, 1)),
        }
    }
    missed_by_voice.retain(|(_, missed, _)| *missed > 0);
    let frr_clean = rate(&|p| !p.noisy, &mut missed);
    let frr_noisy = rate(&|p| p.noisy, &mut missed);
    let frr_piper = rate(&|p| !p.noisy && p.family == "piper", &mut missed);
    let frr_espeak = rate(&|p| !p.noisy && p.family == "espeak-ng", &mut missed);
    let mut lags: Vec<f64> = positives
        .iter()
        .filter_map(|p| woke.iter().find(|at| **at >= p.wake_start && **at <= p.wake_end + (LATE_S * RATE as f64) as u64).map(|at| (*at as f64 - p.wake_end as f64) * 1000.0 / RATE as f64))
        .collect();
    lags.sort_by(f64::total_cmp);
    let stray_in_positives = woke.iter().filter(|at| !positives.iter().any(|p| **at >= p.wake_start && **at <= p.wake_end + (LATE_S * RATE as f64) as u64)).count();
    let false_accepts = wakes(neg_steps, trigger()).len();
    AtThreshold {
        threshold,
        frr_clean,
        frr_noisy,
        frr_piper,
        frr_espeak,
        false_accepts,
        false_accepts_per_hour: false_accepts as f64 / neg_hours.max(1e-9),
        stray_in_positives,
        missed_by_voice,
        detection_ms: (crate::bench::percentile(&lags, 50.0).unwrap_or(f64::NAN), crate::bench::percentile(&lags, 95.0).unwrap_or(f64::NAN)),
    }
}

#[derive(Debug, Serialize)]
struct WakeReport {
    word: String,
    trigger_steps: u32,
    refractory_ms: u32,
    positives: usize,
    negative_hours: f64,
    negative_utterances: usize,
    thresholds: Vec<AtThreshold>,
    configured_threshold: f32,
    /// The detector's work per 80 ms step (ms) and as a share of one core.
    step_ms: f64,
    detector_cpu_share: f64,
    /// The idle daemon's CPU (share of one core) listening in each mode, in this run.
    idle_always: Option<f64>,
    idle_wake_word: Option<f64>,
}

/// `quick` (the tests'): two voices, two commands, twenty texts.
pub(super) fn bench_wake(env: &Env, hours: f64, idle_s: f64, quick: bool, json: Option<&Path>) -> Result<()> {
    let models = env.wake_models()?;
    let word = models.words.first().map(|(id, _)| id.clone()).context("no wake word")?;
    if models.words.len() > 1 {
        eprintln!("bench-wake measures the first wake word, {word}");
    }
    let models = WakeModels { words: models.words[..1].to_vec(), ..models };
    let phrase = phrase_words(&word).iter().map(|w| w[..1].to_uppercase() + &w[1..]).collect::<Vec<_>>().join(" ");
    let config = &env.config.wake;
    let mut speakers = Speakers::load(env)?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    // Positives, one stream: each clip, then silence enough for the detector to forget it.
    let voices: Vec<Voice> = if quick {
        vec![Voice::Piper { rate: 1.0 }, Voice::Espeak { voice: "en-us", wpm: 175 }]
    } else {
        PIPER_RATES.iter().map(|&rate| Voice::Piper { rate }).chain(ESPEAK_VOICES.iter().flat_map(|&voice| ESPEAK_WPM.iter().map(move |&wpm| Voice::Espeak { voice, wpm }))).collect()
    };
    let commands = if quick { &COMMANDS[..2] } else { &COMMANDS[..] };
    let bar = models::progress::Progress::items("speaking positives", voices.len() as u64);
    let (mut stream, mut positives) = (silence(1.0), Vec::new());
    for voice in &voices {
        // The phrase ends where its voice does: detection is timed from there, and the
        // command follows at once.
        let (mut at_once, mut alone) = (speakers.say(*voice, &format!("{phrase},"))?, speakers.say(*voice, &format!("{phrase}."))?);
        audio::trim_silent_end(&mut at_once, RATE, 0);
        audio::trim_silent_end(&mut alone, RATE, 0);
        for command in commands {
            let said = speakers.say(*voice, &(command[..1].to_uppercase() + &command[1..]))?;
            for (pause, wake) in [(false, &at_once), (true, &alone)] {
                for noisy in [false, true] {
                    let mut clip = silence(0.5);
                    clip.extend(wake.iter());
                    let wake_end = clip.len();
                    if pause {
                        clip.extend(silence(PAUSE_S));
                    }
                    clip.extend(&said);
                    clip.extend(silence(0.5));
                    if noisy {
                        add_noise(&mut clip, NOISE_SNR_DB, &mut rng);
                    }
                    let at = stream.len() as u64;
                    positives.push(Positive { voice: voice.label(), family: voice.family(), pause, noisy, wake_start: at + RATE as u64 / 2, wake_end: at + wake_end as u64 });
                    stream.extend(clip);
                    stream.extend(silence(2.5));
                }
            }
        }
        bar.advance(1);
    }
    bar.finish();
    let (pos_steps, _) = scores(&models, &stream, "scoring positives")?;

    // Negatives: the pool of utterances, then `hours` of it looped and varied.
    let last = phrase_words(&word).last().cloned().unwrap_or_default();
    let mut texts: Vec<String> = crate::tools::eval::homes()?.into_iter().flat_map(|(_, set)| set.cases.into_iter().map(|c| c.say)).collect();
    texts.extend(EVERYDAY.iter().map(|s| s.to_string()));
    texts.sort();
    texts.dedup();
    texts.retain(|t| !t.to_lowercase().contains(&last));
    let pool_voices = if quick {
        texts.truncate(20);
        vec![Voice::Piper { rate: 0.8 }, Voice::Espeak { voice: "en-us", wpm: 175 }]
    } else {
        vec![Voice::Piper { rate: 0.8 }, Voice::Piper { rate: 1.0 }, Voice::Piper { rate: 1.25 }, Voice::Espeak { voice: "en-us", wpm: 175 }, Voice::Espeak { voice: "en-gb", wpm: 160 }, Voice::Espeak { voice: "en-us+f3", wpm: 190 }]
    };
    let bar = models::progress::Progress::items("speaking negatives", (texts.len() * pool_voices.len()) as u64);
    let mut pool: Vec<Vec<f32>> = Vec::new();
    for &voice in &pool_voices {
        for text in &texts {
            pool.push(speakers.say(voice, text)?);
            bar.advance(1);
        }
    }
    bar.finish();
    // Real voices where the machine has them (pocketsphinx's test recordings, JFK).
    let recorded: Vec<PathBuf> = ["/usr/share/pocketsphinx/test/data/librivox", "/usr/share/pocketsphinx/test/data/cards"]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.path()))
        .chain(std::iter::once(crate::paths::cache_dir().join("testdata/jfk.wav")))
        .filter(|p| p.extension().is_some_and(|e| e == "wav") && p.exists())
        .collect();
    for path in &recorded {
        pool.push(audio::read_wav(path, RATE)?.samples);
    }
    let want = (hours * 3600.0 * RATE as f64) as usize;
    let mut negatives: Vec<f32> = Vec::with_capacity(want + RATE as usize * 30);
    let mut utterances = 0;
    while negatives.len() < want {
        let mut said = pool[rng.below(pool.len())].clone();
        // Another speed (and pitch), another loudness; now and then a second talker
        // over it, now and then room noise.
        let speed = [0.9, 1.0, 1.1][rng.below(3)];
        if speed != 1.0 {
            said = audio::resample(&said, (RATE as f64 * speed) as u32, RATE)?;
        }
        let gain = 0.5 + rng.unit();
        said.iter_mut().for_each(|s| *s *= gain);
        if rng.below(4) == 0 {
            let other = &pool[rng.below(pool.len())];
            for (s, o) in said.iter_mut().zip(other) {
                *s += 0.4 * o;
            }
        }
        if rng.below(3) == 0 {
            add_noise(&mut said, 10.0 + 10.0 * rng.unit(), &mut rng);
        }
        negatives.extend(said);
        negatives.extend(silence(0.1 + 0.5 * rng.unit() as f64));
        utterances += 1;
    }
    let neg_hours = negatives.len() as f64 / RATE as f64 / 3600.0;
    let (neg_steps, busy) = scores(&models, &negatives, "scoring negatives")?;
    let step_ms = busy.as_secs_f64() * 1000.0 / neg_steps.len().max(1) as f64;

    let thresholds: Vec<AtThreshold> = THRESHOLDS.iter().chain((!THRESHOLDS.contains(&config.threshold)).then_some(&config.threshold)).map(|&t| judge(t, config, &word, &positives, &pos_steps, &neg_steps, neg_hours)).collect();

    // The daemon idle on the live devices, listening in each mode, in this run.
    let idle = |mode: &str| -> Option<f64> {
        if idle_s <= 0.0 {
            return None;
        }
        let config = Config { wake: crate::config::WakeConfig { mode: mode.into(), ..env.config.wake.clone() }, ..env.config.clone() };
        match run_live(&env.with_config(config), None, Some(std::time::Duration::from_secs_f64(idle_s))) {
            Ok(l) => Some(l.cpu_share),
            Err(e) => {
                eprintln!("idle CPU ({mode}) not measured: {e:#}");
                None
            }
        }
    };
    let (idle_always, idle_wake_word) = (idle("always"), idle("wake_word"));

    let report = WakeReport {
        word: word.clone(),
        trigger_steps: config.word_trigger_steps.get(&word).copied().unwrap_or(config.trigger_steps),
        refractory_ms: config.refractory_ms,
        positives: positives.len(),
        negative_hours: neg_hours,
        negative_utterances: utterances,
        thresholds,
        configured_threshold: config.word_threshold.get(&word).copied().unwrap_or(config.threshold),
        step_ms,
        detector_cpu_share: step_ms / (CHUNK as f64 * 1000.0 / RATE as f64),
        idle_always,
        idle_wake_word,
    };
    print!("{}", report.text(&texts, pool_voices.len(), recorded.len(), &voices, commands.len()));
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

impl WakeReport {
    fn text(&self, texts: &[String], pool_voices: usize, recordings: usize, voices: &[Voice], commands: usize) -> String {
        use std::fmt::Write as _;
        let pct = |x: f64| format!("{:.1} %", x * 100.0);
        let mut out = String::new();
        let _ = writeln!(out, "voxd bench-wake: {}, trigger {} step(s) of 80 ms, refractory {} ms", self.word, self.trigger_steps, self.refractory_ms);
        let voices: Vec<String> = voices.iter().map(Voice::label).collect();
        let _ = writeln!(
            out,
            "positives: {} clips — {}; {commands} commands, each right after the wake phrase and after a {PAUSE_S} s pause; clean and in room noise {NOISE_SNR_DB} dB below the speech",
            self.positives,
            voices.join(", ")
        );
        let _ = writeln!(out, "negatives: {:.2} h of speech without the wake word: {} utterances from {} texts in {pool_voices} voices and {recordings} recordings, looped at 3 speeds, some with a second talker or noise\n", self.negative_hours, self.negative_utterances, texts.len());
        let _ = writeln!(out, "threshold  false rejects: clean  noisy  (piper / espeak-ng, clean)   false accepts   per hour   detection after the phrase p50 / p95");
        for t in &self.thresholds {
            let mark = if t.threshold == self.configured_threshold { " ◀ configured" } else { "" };
            let _ = writeln!(
                out,
                "{:>9.2}  {:>20}  {:>6}  ({:>6} / {:>6})       {:>13}   {:>8.2}   {:>6.0} / {:.0} ms{mark}",
                t.threshold,
                pct(t.frr_clean),
                pct(t.frr_noisy),
                pct(t.frr_piper),
                pct(t.frr_espeak),
                t.false_accepts,
                t.false_accepts_per_hour,
                t.detection_ms.0,
                t.detection_ms.1
            );
        }
        let chosen = self.thresholds.iter().find(|t| t.threshold == self.configured_threshold).expect("the configured threshold is judged");
        let ok = |pass: bool| if pass { "meets" } else { "MISSES" };
        let _ = writeln!(out, "\nat the configured threshold {:.2}:", chosen.threshold);
        let _ = writeln!(out, "  false rejects (clean)   {:>7}   goal <= {:.0} %: {}", pct(chosen.frr_clean), GOAL_FRR * 100.0, ok(chosen.frr_clean <= GOAL_FRR));
        if !chosen.missed_by_voice.is_empty() {
            let missed: Vec<String> = chosen.missed_by_voice.iter().map(|(v, n, of)| format!("{v} {n}/{of}")).collect();
            let _ = writeln!(out, "    missed (clean): {}", missed.join(", "));
        }
        let _ = writeln!(out, "  false accepts per hour  {:>7.2}   goal <= {GOAL_FA_PER_H}: {}", chosen.false_accepts_per_hour, ok(chosen.false_accepts_per_hour <= GOAL_FA_PER_H));
        if chosen.stray_in_positives > 0 {
            let _ = writeln!(out, "    and {} wakes in the positives away from their wake phrase (a second wake in the command)", chosen.stray_in_positives);
        }
        let listening = chosen.detection_ms.0.max(0.0) + self.step_ms;
        let _ = writeln!(
            out,
            "  wake to listening       {:>7.0} ms (p50: the step that wakes ends {:.0} ms after the phrase, + {:.1} ms of the detector's work; a turn is open from that step)   goal <= {GOAL_LISTENING_MS:.0} ms: {}",
            listening,
            chosen.detection_ms.0,
            self.step_ms,
            ok(listening <= GOAL_LISTENING_MS)
        );
        let _ = writeln!(out, "  the detector's work     {:>7.2} ms per 80 ms step = {} of one core", self.step_ms, pct(self.detector_cpu_share));
        match (self.idle_always, self.idle_wake_word) {
            (Some(a), Some(w)) => {
                let _ = writeln!(out, "  idle daemon             {} listening to everything, {} listening for the wake word: +{} of one core   goal <= +{:.0} %: {}", pct(a), pct(w), pct(w - a), GOAL_CPU * 100.0, ok(w - a <= GOAL_CPU));
            }
            _ => {
                let _ = writeln!(out, "  idle daemon             not measured (no live devices, or --idle-s 0)");
            }
        }
        out
    }
}
