#!/usr/bin/env python3
"""The reference voice stack that `voxd bench` compares itself with.

This is the pipeline many Home Assistant users run: webrtcvad for endpointing,
faster-whisper for ASR, llama-cpp-python for the LLM, piper-tts for the voice. It
runs sequentially, as such stacks do: at the end of a turn (the same hangover as
voxd) the whole utterance is transcribed, the whole reply generated, then spoken;
the first audio is the first chunk piper hands back. It reads the same WAV and the
same models as voxd (Whisper in its original CTranslate2 form) and prints one JSON
line per turn with its timings. Installed by scripts/setup-reference.
"""
import argparse
import json
import sys
import time
import wave

import numpy as np
import webrtcvad
from faster_whisper import WhisperModel
from llama_cpp import Llama
from piper import PiperVoice

RATE = 16000
FRAME = 320  # 20 ms, as voxd's default


def read_wav(path):
    with wave.open(path, "rb") as w:
        if w.getframerate() != RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
            sys.exit(f"{path}: expected 16 kHz mono 16-bit (voxd bench writes it so)")
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


def utterances(pcm, hangover_ms, min_speech_ms, preroll_ms=300):
    """Endpointing as voxd does it: yields (samples, speech_end_sample)."""
    vad = webrtcvad.Vad(2)
    hang, min_speech, preroll = hangover_ms * 16, min_speech_ms * 16, preroll_ms * 16
    start = None
    voiced = silence = 0
    last_voiced_end = 0
    for i in range(0, len(pcm) - FRAME + 1, FRAME):
        is_voiced = vad.is_speech(pcm[i : i + FRAME].tobytes(), RATE)
        if start is None:
            if not is_voiced:
                continue
            start, voiced, silence = max(0, i - preroll), 0, 0
        if is_voiced:
            voiced += FRAME
            silence = 0
            last_voiced_end = i + FRAME
        else:
            silence += FRAME
        if silence >= hang:
            if voiced >= min_speech:
                yield pcm[start : last_voiced_end + 1600], last_voiced_end
            start = None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--whisper", required=True, help="CTranslate2 Whisper directory")
    ap.add_argument("--llm", required=True, help="GGUF file")
    ap.add_argument("--voice", required=True, help="Piper .onnx (with .onnx.json beside it)")
    ap.add_argument("--hangover-ms", type=int, default=300)
    ap.add_argument("--min-speech-ms", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--system-prompt", default="You are a helpful voice assistant. Answer in one or two short sentences.")
    a = ap.parse_args()

    whisper = WhisperModel(a.whisper, device="cpu", cpu_threads=a.threads)
    llm = Llama(model_path=a.llm, n_ctx=2048, n_threads=a.threads, verbose=False)
    voice = PiperVoice.load(a.voice)
    # Warm-up, as voxd warms its engines.
    list(whisper.transcribe(np.zeros(RATE, dtype=np.float32), beam_size=1, language="en")[0])
    llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
    next(iter(voice.synthesize("Ready.")))

    for turn, (samples, speech_end) in enumerate(utterances(read_wav(a.input), a.hangover_ms, a.min_speech_ms), start=1):
        t0 = time.perf_counter()  # the end of turn was detected: hangover after speech end
        audio = samples.astype(np.float32) / 32768.0
        segments, _ = whisper.transcribe(audio, beam_size=1, language="en", condition_on_previous_text=False)
        text = " ".join(s.text.strip() for s in segments).strip()
        t_asr = time.perf_counter()
        reply = ""
        if text:
            out = llm.create_chat_completion(
                messages=[{"role": "system", "content": a.system_prompt}, {"role": "user", "content": text}],
                max_tokens=a.max_tokens,
                temperature=0.0,
            )
            reply = out["choices"][0]["message"]["content"].strip()
        t_llm = time.perf_counter()
        first_audio = None
        if reply:
            for _chunk in voice.synthesize(reply):
                first_audio = time.perf_counter()
                break
        t_tts = first_audio or time.perf_counter()
        ms = lambda t: (t - t0) * 1000.0
        print(json.dumps({
            "turn": turn,
            "speech_end_s": speech_end / RATE,
            "transcript": text,
            "reply": reply,
            "asr_ms": ms(t_asr),
            "llm_ms": ms(t_llm) - ms(t_asr),
            "tts_ms": ms(t_tts) - ms(t_llm),
            "round_trip_ms": a.hangover_ms + ms(t_tts),
        }), flush=True)


if __name__ == "__main__":
    main()
