"""voxd's Wyoming services against wyoming-faster-whisper and wyoming-piper, side by
side in one run, through the protocol's reference client as Home Assistant uses it.
Run by scripts/bench-wyoming (which starts the three servers).

Speech to text: each corpus clip (NN.wav, NN.txt) sent as fast as the socket takes it,
timed from audio-stop to the transcript (what the user waits for after speaking).
Text to speech: multi-sentence replies sent as one `synthesize`, timed to the first
audio chunk and to audio-stop. The servers take turns, the order swapped every round.
"""

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
import wave
from pathlib import Path

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.tts import Synthesize

REPLIES = [
    "The kitchen light is on. The living room lamp is off, and the front door is locked.",
    "It is twenty one degrees in the bedroom. The heating will switch off at ten tonight.",
    "Tomorrow will be cloudy with light rain in the afternoon. Take an umbrella if you go out.",
    "I set a timer for ten minutes. I will tell you when it is done.",
    "Paris is the capital of France. It is known for the Eiffel Tower and its museums.",
]


def client(uri):
    host, port = uri.removeprefix("tcp://").rsplit(":", 1)
    return AsyncTcpClient(host, int(port))


async def transcribe(uri, path):
    async with client(uri) as c:
        with wave.open(str(path), "rb") as w:
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            await c.write_event(Transcribe(language="en").event())
            await c.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
            while frames := w.readframes(1024):
                await c.write_event(AudioChunk(rate=rate, width=width, channels=channels, audio=frames).event())
        stop = time.monotonic()
        await c.write_event(AudioStop().event())
        while True:
            event = await c.read_event()
            if event is None or Error.is_type(event.type):
                raise RuntimeError(f"{uri}: {event}")
            if Transcript.is_type(event.type):
                return (time.monotonic() - stop) * 1000, Transcript.from_event(event).text


async def synthesize(uri, text):
    async with client(uri) as c:
        start = time.monotonic()
        await c.write_event(Synthesize(text=text).event())
        first, samples, rate = None, 0, 1
        while True:
            event = await c.read_event()
            if event is None or Error.is_type(event.type):
                raise RuntimeError(f"{uri}: {event}")
            if AudioChunk.is_type(event.type):
                chunk = AudioChunk.from_event(event)
                first = first or (time.monotonic() - start) * 1000
                samples += len(chunk.audio) // (chunk.width * chunk.channels)
                rate = chunk.rate
            if AudioStop.is_type(event.type):
                return first, (time.monotonic() - start) * 1000, samples / rate


def words(text):
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def wer(reference, hypothesis):
    r, h = words(reference), words(hypothesis)
    d = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(h) + 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
    return d[len(h)] / max(len(r), 1)


def p(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--voxd", required=True)
    ap.add_argument("--whisper", required=True, help="wyoming-faster-whisper's tcp:// address")
    ap.add_argument("--piper", required=True, help="wyoming-piper's tcp:// address")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    clips = sorted(Path(args.corpus).glob("*.wav"))
    if not clips:
        sys.exit(f"no .wav in {args.corpus}")
    asr = {"voxd": [], "wyoming-faster-whisper": []}
    asr_wer = {"voxd": [], "wyoming-faster-whisper": []}
    tts_first = {"voxd": [], "wyoming-piper": []}
    tts_total = {"voxd": [], "wyoming-piper": []}
    stt_servers = [("voxd", args.voxd), ("wyoming-faster-whisper", args.whisper)]
    tts_servers = [("voxd", args.voxd), ("wyoming-piper", args.piper)]
    # One warm-up request each (models load lazily in the Python servers).
    for _, uri in stt_servers:
        await transcribe(uri, clips[0])
    for _, uri in tts_servers:
        await synthesize(uri, REPLIES[0])
    for rnd in range(args.rounds):
        order = 1 if rnd % 2 else -1
        for clip in clips:
            reference = clip.with_suffix(".txt").read_text().strip()
            for name, uri in stt_servers[::order]:
                ms, text = await transcribe(uri, clip)
                asr[name].append(ms)
                asr_wer[name].append(wer(reference, text))
        for text in REPLIES:
            for name, uri in tts_servers[::order]:
                first, total, _ = await synthesize(uri, text)
                tts_first[name].append(first)
                tts_total[name].append(total)
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)

    def row(what, ours, theirs, name):
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"| {what} | {a:.0f} ms (p95 {p(ours, 0.95):.0f}) | {name} {b:.0f} ms (p95 {p(theirs, 0.95):.0f}) | {a / b:.2f} ({b / a:.2f}x faster) |")
        return {"what": what, "voxd_p50": a, "voxd_p95": p(ours, 0.95), "reference": name, "reference_p50": b, "reference_p95": p(theirs, 0.95), "ratio": a / b}

    print(f"\n{len(clips)} clips and {len(REPLIES)} replies, {args.rounds} rounds, the servers taking turns\n")
    print("| measure (p50) | voxd | reference | voxd / reference |")
    print("|---|---|---|---|")
    rows = [
        row("transcript after audio-stop", asr["voxd"], asr["wyoming-faster-whisper"], "wyoming-faster-whisper"),
        row("first audio after synthesize", tts_first["voxd"], tts_first["wyoming-piper"], "wyoming-piper"),
        row("all audio after synthesize", tts_total["voxd"], tts_total["wyoming-piper"], "wyoming-piper"),
    ]
    print(f"\nword error rate: voxd {statistics.mean(asr_wer['voxd']):.3f}, wyoming-faster-whisper {statistics.mean(asr_wer['wyoming-faster-whisper']):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "wer": {k: statistics.mean(v) for k, v in asr_wer.items()}, "rounds": args.rounds, "clips": len(clips)}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
