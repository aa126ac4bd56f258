"""A wyoming-satellite's microphone for the tests (its --mic-command): 16 kHz 16-bit
mono on stdout, paced in real time as a sound card would give it. Silence until the
file GO exists, then the words in WAV (16 kHz mono) once, then silence for ever.

  satellite_mic.py WAV GO
"""
import os
import sys
import time
import wave

CHUNK = 1024  # samples: what the satellite reads at a time
RATE = 16000

wav, go = sys.argv[1], sys.argv[2]
with wave.open(wav, "rb") as w:
    assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (RATE, 2, 1), wav
    words = w.readframes(w.getnframes())

out = sys.stdout.buffer
silence = bytes(2 * CHUNK)
at, said, sent = None, False, 0
started = time.monotonic()
try:
    while True:
        if at is None and not said and os.path.exists(go):
            at = 0
        if at is not None:
            chunk = words[at:at + 2 * CHUNK].ljust(2 * CHUNK, b"\0")
            at += 2 * CHUNK
            if at >= len(words):
                at, said = None, True
        else:
            chunk = silence
        out.write(chunk)
        out.flush()
        sent += CHUNK
        time.sleep(max(0.0, started + sent / RATE - time.monotonic()))
except (BrokenPipeError, KeyboardInterrupt):
    pass
