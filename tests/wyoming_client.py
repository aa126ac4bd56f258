"""Drives a Wyoming server with the protocol's reference client (PyPI `wyoming`), as
Home Assistant does. Used by tests/wyoming.rs; prints one JSON object per request.

  describe URI
  transcribe URI WAV [LANGUAGE]         (the WAV's own rate, width and channels)
  transcribe-many URI WAV N             (N clients at once)
  synthesize URI TEXT OUT.wav [VOICE]   (one `synthesize`)
  stream URI OUT.wav CHUNK...           (synthesize-start, the chunks, synthesize, synthesize-stop)
  detect URI WAV [NAME...]              (detect, then the WAV in 80 ms chunks)
  handle URI CONVERSATION TEXT          (a transcript to answer, as Home Assistant's
                                         Wyoming conversation agent sends it)
  handle-many URI N TEXT                (N conversations at once)
"""

import asyncio
import json
import sys
import time
import wave

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.handle import Handled, HandledChunk, HandledStart, HandledStop, NotHandled
from wyoming.info import Describe, Info
from wyoming.wake import Detect, Detection, NotDetected
from wyoming.tts import Synthesize, SynthesizeVoice, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped


async def refused(c, event):
    """An error, and whether the server then hung up (Home Assistant skips errors
    and waits for the answer or the end of the connection)."""
    e = Error.from_event(event)
    try:
        rest = await asyncio.wait_for(c.read_event(), timeout=10)
        closed = rest is None
    except asyncio.TimeoutError:
        closed = False
    return {"error": e.text, "code": e.code, "closed": closed}


def client(uri):
    host, port = uri.removeprefix("tcp://").rsplit(":", 1)
    return AsyncTcpClient(host, int(port))


async def describe(uri):
    async with client(uri) as c:
        await c.write_event(Describe().event())
        event = await c.read_event()
        # Parsed by the reference's own dataclasses: every required field is there.
        info = Info.from_event(event)
        return info.event().data


async def transcribe(uri, path, language=None):
    started = time.monotonic()
    async with client(uri) as c:
        with wave.open(path, "rb") as w:
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            await c.write_event(Transcribe(language=language).event())
            await c.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
            while frames := w.readframes(1024):
                await c.write_event(AudioChunk(rate=rate, width=width, channels=channels, audio=frames).event())
        sent = time.monotonic()
        await c.write_event(AudioStop().event())
        while True:
            event = await c.read_event()
            if event is None:
                return {"closed": True}
            if Transcript.is_type(event.type):
                done = time.monotonic()
                return {"text": Transcript.from_event(event).text, "ms_after_stop": (done - sent) * 1000, "ms": (done - started) * 1000}
            if Error.is_type(event.type):
                return await refused(c, event)


async def transcribe_many(uri, path, n):
    return await asyncio.gather(*(transcribe(uri, path) for _ in range(n)))


async def receive_audio(c, out, until, started):
    """Collects audio until the event type `until`; writes it to `out`."""
    starts, stops, frames, first_audio_ms, rate = 0, 0, b"", None, 22050
    while True:
        event = await c.read_event()
        if event is None:
            return {"closed": True}
        if Error.is_type(event.type):
            return await refused(c, event)
        if AudioStart.is_type(event.type):
            starts += 1
            rate = AudioStart.from_event(event).rate
        elif AudioChunk.is_type(event.type):
            chunk = AudioChunk.from_event(event)
            if first_audio_ms is None:
                first_audio_ms = (time.monotonic() - started) * 1000
            assert chunk.width == 2 and chunk.channels == 1, chunk
            frames += chunk.audio
        elif AudioStop.is_type(event.type):
            stops += 1
        if event.type == until:
            break
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return {"audio_starts": starts, "audio_stops": stops, "audio_s": len(frames) / 2 / rate, "first_audio_ms": first_audio_ms, "ms": (time.monotonic() - started) * 1000}


async def synthesize(uri, text, out, voice=None):
    async with client(uri) as c:
        started = time.monotonic()
        await c.write_event(Synthesize(text=text, voice=SynthesizeVoice(name=voice) if voice else None).event())
        return await receive_audio(c, out, "audio-stop", started)


async def stream(uri, out, chunks):
    async with client(uri) as c:
        started = time.monotonic()
        await c.write_event(SynthesizeStart().event())
        for chunk in chunks:
            await c.write_event(SynthesizeChunk(text=chunk).event())
        # Home Assistant sends the whole text too, for servers that do not stream.
        await c.write_event(Synthesize(text="".join(chunks)).event())
        await c.write_event(SynthesizeStop().event())
        return await receive_audio(c, out, SynthesizeStopped().event().type, started)


async def detect(uri, path, names):
    async with client(uri) as c:
        with wave.open(path, "rb") as w:
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            await c.write_event(Detect(names=names or None).event())
            await c.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
            while frames := w.readframes(rate * 80 // 1000):
                await c.write_event(AudioChunk(rate=rate, width=width, channels=channels, audio=frames).event())
        await c.write_event(AudioStop().event())
        # Detections come while the audio streams; after audio-stop, not-detected if
        # there was none (and nothing more if there was).
        detections = []
        while True:
            try:
                event = await asyncio.wait_for(c.read_event(), timeout=5 if not detections else 1)
            except asyncio.TimeoutError:
                return {"detections": detections}
            if event is None:
                return {"detections": detections, "closed": True}
            if Detection.is_type(event.type):
                d = Detection.from_event(event)
                detections.append({"name": d.name, "timestamp": d.timestamp})
            elif NotDetected.is_type(event.type):
                return {"detections": detections, "not_detected": True}
            elif Error.is_type(event.type):
                return await refused(c, event)


async def handle(uri, conversation, text):
    """The answer, and how it was streamed: the handled-start's context, each
    handled-chunk's text, and when the first came."""
    async with client(uri) as c:
        started = time.monotonic()
        await c.write_event(Transcript(text=text, context={"conversation_id": conversation}, language="en").event())
        stream = {"start": None, "chunks": [], "first_chunk_ms": None, "stopped": False}
        while True:
            event = await c.read_event()
            if event is None:
                return {"closed": True, **stream}
            if HandledStart.is_type(event.type):
                stream["start"] = HandledStart.from_event(event).context or {}
            elif HandledChunk.is_type(event.type):
                if stream["first_chunk_ms"] is None:
                    stream["first_chunk_ms"] = (time.monotonic() - started) * 1000
                stream["chunks"].append(HandledChunk.from_event(event).text)
            elif HandledStop.is_type(event.type):
                stream["stopped"] = True
            elif Handled.is_type(event.type) or NotHandled.is_type(event.type):
                answer = (Handled if Handled.is_type(event.type) else NotHandled).from_event(event)
                return {"type": event.type, "text": answer.text, "context": answer.context, "ms": (time.monotonic() - started) * 1000, **stream}
            elif Error.is_type(event.type):
                return {**await refused(c, event), **stream}


async def handle_many(uri, n, text):
    return await asyncio.gather(*(handle(uri, f"many-{i}", text) for i in range(n)))


def main():
    command, uri, *rest = sys.argv[1:]
    if command == "describe":
        result = asyncio.run(describe(uri))
    elif command == "transcribe":
        result = asyncio.run(transcribe(uri, *rest))
    elif command == "transcribe-many":
        result = asyncio.run(transcribe_many(uri, rest[0], int(rest[1])))
    elif command == "synthesize":
        result = asyncio.run(synthesize(uri, *rest))
    elif command == "detect":
        result = asyncio.run(detect(uri, rest[0], rest[1:]))
    elif command == "handle":
        result = asyncio.run(handle(uri, rest[0], rest[1]))
    elif command == "handle-many":
        result = asyncio.run(handle_many(uri, int(rest[0]), rest[1]))
    elif command == "stream":
        result = asyncio.run(stream(uri, rest[0], rest[1:]))
    else:
        sys.exit(f"unknown command {command}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
