//! The engines one at a time: transcribe, say, chat, answer.

use super::*;

pub(super) fn transcribe(env: &Env, file: &Path, model: Option<&str>) -> Result<()> {
    let clip = audio::read_wav(file, audio::ASR_RATE_HZ)?;
    let mut asr = env.asr(model)?;
    let t = asr.transcribe(&clip.samples)?;
    println!("{}", t.text);
    eprintln!(
        "asr: {} loaded in {:.0} ms; {:.2} s of audio transcribed in {:.0} ms (RTF {:.3}, {} thread{})",
        asr.model_id,
        asr.load_ms,
        t.audio_s,
        t.elapsed_ms,
        t.rtf(),
        env.config.asr.threads,
        if env.config.asr.threads == 1 { "" } else { "s" }
    );
    Ok(())
}

pub(super) fn say(env: &Env, text: &str, output: &Path, voice: Option<&str>) -> Result<()> {
    if text.trim().is_empty() {
        bail!("nothing to say: TEXT is empty");
    }
    let mut tts = env.tts(voice)?;
    let mut samples = Vec::new();
    let spoken = tts.synthesize_streamed(text, &mut |slice, _| samples.extend_from_slice(slice))?;
    audio::write_wav(output, &samples, spoken.rate_hz)?;
    eprintln!(
        "tts: {} loaded in {:.0} ms; {:.2} s of audio at {} Hz synthesised in {:.0} ms (RTF {:.3}), the first of it after {:.0} ms{} → {}",
        tts.voice_id,
        tts.load_ms,
        spoken.audio_s(),
        spoken.rate_hz,
        spoken.elapsed_ms,
        spoken.rtf(),
        spoken.first_audio_ms,
        if tts.streams() { "" } else { " (this voice is made whole, not streamed)" },
        output.display()
    );
    Ok(())
}

pub(super) fn chat(env: &Env, prompt: &str, model: Option<&str>) -> Result<()> {
    let llm = env.llm(model)?;
    let mut stdout = std::io::stdout().lock();
    let g = llm.generate(&env.conversation(prompt), |piece| {
        // A closed stdout (e.g. `| head`) stops generation instead of failing later.
        stdout.write_all(piece.as_bytes()).and_then(|_| stdout.flush()).is_ok()
    })?;
    writeln!(stdout)?;
    report_generation(&llm, &g);
    Ok(())
}

pub(super) fn report_generation(llm: &Llm, g: &crate::engine::llm::Generation) {
    eprintln!(
        "llm: {} loaded in {:.0} ms; prompt {} tok in {:.0} ms ({:.1} tok/s); generated {} tok in {:.0} ms ({:.1} tok/s); first token after {:.0} ms",
        llm.model_id,
        llm.load_ms,
        g.prompt_tokens,
        g.prompt_ms,
        g.prompt_tok_s(),
        g.generated_tokens,
        g.generate_ms,
        g.generate_tok_s(),
        g.first_token_ms
    );
}

pub(super) fn answer(env: &Env, file: &Path, output: &Path) -> Result<()> {
    let clip = audio::read_wav(file, audio::ASR_RATE_HZ)?;
    let mut asr = env.asr(None)?;
    let llm = env.llm(None)?;
    let mut tts = env.tts(None)?;
    let heard = asr.transcribe(&clip.samples)?;
    if heard.text.is_empty() {
        bail!("heard no speech in {}", file.display());
    }
    eprintln!("heard: {}", heard.text);
    let g = llm.generate(&env.conversation(&heard.text), |_| true)?;
    let reply = g.text.trim();
    println!("{reply}");
    let speech = tts.synthesize(if reply.is_empty() { "Sorry, I have no answer to that." } else { reply })?;
    audio::write_wav(output, &speech.samples, speech.rate_hz)?;
    eprintln!("asr: {} {:.0} ms (RTF {:.3})", asr.model_id, heard.elapsed_ms, heard.rtf());
    report_generation(&llm, &g);
    eprintln!("tts: {} {:.0} ms for {:.2} s (RTF {:.3}) → {}", tts.voice_id, speech.elapsed_ms, speech.audio_s(), speech.rtf(), output.display());
    Ok(())
}
