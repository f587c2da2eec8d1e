"""The official `openai` Python client's `audio.transcriptions.create` against a running `tabpool
serve` with Whisper tiny.en (tests/serve_audio.rs starts it): both reference clips in every
response format (ids in verbose_json equal to the reference's), `prompt`, a longer clip made here
(clip one, silence to 30 s, clip two: two windows, each with its clip's text), and the errors the
client raises for a language other than English, a non-audio file and an unknown model. Prints one
JSON line per check; exits non-zero on the first failure.

Usage: python openai_audio.py BASE_URL API_KEY DATA_DIR
"""

import io
import json
import struct
import sys
import wave

import openai

BASE, KEY, DATA = sys.argv[1], sys.argv[2], sys.argv[3]
MODEL = "whisper-tiny.en"

client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=300)
ref = json.load(open(f"{DATA}/whisper/whisper_tiny_en.json"))["cases"]


def say(check, **kw):
    print(json.dumps({"check": check, **kw}), flush=True)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def clip(name):
    return open(f"{DATA}/whisper/{name}", "rb").read()


def pcm(name):
    with wave.open(io.BytesIO(clip(name))) as w:
        expect(w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2, f"{name}: 16 kHz mono s16")
        return w.readframes(w.getnframes())


for case in ref:
    audio = clip(case["file"])
    # json, the client's default: the text.
    r = client.audio.transcriptions.create(model=MODEL, file=(case["file"], audio))
    expect(r.text == case["transcript"], f"json: {r.text!r} != {case['transcript']!r}")
    # "whisper-1" names the first speech model; language en and temperature 0 are accepted.
    r = client.audio.transcriptions.create(
        model="whisper-1", file=(case["file"], audio), language="en", temperature=0.0
    )
    expect(r.text == case["transcript"], f"whisper-1: {r.text!r}")
    # text: the text alone.
    t = client.audio.transcriptions.create(model=MODEL, file=(case["file"], audio), response_format="text")
    expect(t.strip() == case["transcript"], f"text: {t!r}")
    # verbose_json: one segment (one window) whose tokens are the reference's ids.
    v = client.audio.transcriptions.create(model=MODEL, file=(case["file"], audio), response_format="verbose_json")
    expect(v.text == case["transcript"] and v.language == "english", f"verbose_json: {v}")
    expect(abs(v.duration - case["duration_s"]) < 1e-3 if "duration_s" in case else v.duration > 0, f"duration {v.duration}")
    expect(len(v.segments) == 1 and v.segments[0].start == 0.0, f"segments: {v.segments}")
    expect(list(v.segments[0].tokens) == case["token_ids"], f"tokens {v.segments[0].tokens} != {case['token_ids']}")
    expect(v.segments[0].text == case["transcript_raw"], f"segment text {v.segments[0].text!r}")
    # srt and vtt: one cue with the text.
    srt = client.audio.transcriptions.create(model=MODEL, file=(case["file"], audio), response_format="srt")
    expect(srt.startswith("1\n00:00:00,000 --> 00:00:0") and case["transcript"] in srt, f"srt: {srt!r}")
    vtt = client.audio.transcriptions.create(model=MODEL, file=(case["file"], audio), response_format="vtt")
    expect(vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:0") and case["transcript"] in vtt, f"vtt: {vtt!r}")
    say("transcriptions", file=case["file"], text=r.text, end=v.segments[0].end)

# prompt: text before the audio conditions the decoder and still answers a transcript of the clip
# (the words may follow the prompt's style, so only that it is non-empty English text is checked).
r = client.audio.transcriptions.create(
    model=MODEL, file=("a.wav", clip(ref[0]["file"])), prompt="Robert's trip to Boston."
)
expect(len(r.text) > 10 and "Boston" in r.text, f"prompt: {r.text!r}")
say("prompt", text=r.text)

# A longer clip: clip one, silence to 30 s, clip two — two windows, each its clip's text.
a, b = pcm(ref[0]["file"]), pcm(ref[1]["file"])
joined = a + b"\0" * (30 * 16000 * 2 - len(a)) + b
buf = io.BytesIO()
with wave.open(buf, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(16000)
    w.writeframes(joined)
v = client.audio.transcriptions.create(model=MODEL, file=("long.wav", buf.getvalue()), response_format="verbose_json")
expect(len(v.segments) == 2, f"{len(v.segments)} segments: {v.segments}")
expect(v.segments[0].start == 0.0 and v.segments[1].start == 30.0, f"starts {[s.start for s in v.segments]}")
for s, case in zip(v.segments, ref):
    expect(s.text.strip() == case["transcript"], f"window {s.id}: {s.text!r} != {case['transcript']!r}")
expect(abs(v.duration - len(joined) / 32000) < 1e-6, f"duration {v.duration}")
srt = client.audio.transcriptions.create(model=MODEL, file=("long.wav", buf.getvalue()), response_format="srt")
expect(srt.count(" --> ") == 2 and "\n2\n00:00:30,000 --> " in srt, f"srt: {srt!r}")
say("long clip", duration=v.duration, windows=[s.text for s in v.segments])

# Errors the client raises.
try:
    client.audio.transcriptions.create(model=MODEL, file=("a.wav", clip(ref[0]["file"])), language="fr")
    raise AssertionError("language fr accepted")
except openai.BadRequestError as e:
    expect("English" in str(e) and e.body.get("param") == "language", f"language: {e}")
    say("language fr refused", status=e.status_code)
try:
    client.audio.transcriptions.create(model=MODEL, file=("notes.txt", b"these are not sounds " * 50))
    raise AssertionError("text accepted as audio")
except openai.BadRequestError as e:
    expect("not audio" in str(e), f"not audio: {e}")
    say("not audio refused", status=e.status_code)
try:
    client.audio.transcriptions.create(model="whisper-large-v9", file=("a.wav", clip(ref[0]["file"])))
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    say("unknown model refused", status=e.status_code)

# Bad input over raw HTTP (forms the client would not build): each a clear 4xx, and the server
# serves the next request as before.
import urllib.error
import urllib.request
import uuid


def wav_bytes(frames, rate=16000, width=2):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()


def post(files, data=None):
    """POST a multipart form (the standard library's own encoding of it) → (status, message or body)."""
    boundary = uuid.uuid4().hex
    parts = []
    for k, v in {"model": MODEL, **(data or {})}.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for k, (name, content) in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{BASE}/audio/transcriptions", data=body, method="POST")
    req.add_header("Authorization", f"Bearer {KEY}")
    req.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())["error"]["message"]


full = clip(ref[0]["file"])
bad = {
    "truncated": (400, ("t.wav", full[: len(full) // 3]), "truncated"),
    "zero samples": (400, ("z.wav", wav_bytes(b"")), "no samples"),
    "silence": (400, ("s.wav", wav_bytes(b"\0" * 32000 * 3)), "silent"),
    "over 25 MiB": (413, ("big.wav", wav_bytes(b"\1\0" * (13 << 20))), "25 MiB"),
    "over 30 minutes": (413, ("long.wav", wav_bytes(b"\x80" * (8000 * 1801), rate=8000, width=1)), "1800"),
}
for what, (status, f, words) in bad.items():
    code, msg = post({"file": f})
    expect(code == status and words in msg, f"{what}: {code} {msg!r}")
    say("refused", what=what, status=code, message=msg)
code, msg = post({}, {"response_format": "json"})
expect(code == 400 and "file" in msg, f"no file: {code} {msg!r}")
code, msg = post({"file": ("a.wav", full)}, {"response_format": "xml"})
expect(code == 400 and "response_format" in msg, f"xml: {code} {msg!r}")
code, msg = post({"file": ("a.wav", full)}, {"temperature": "0.7"})
expect(code == 400 and "greedily" in msg, f"temperature: {code} {msg!r}")
code, body = post({"file": ("a.wav", full)})
expect(code == 200 and body["text"] == ref[0]["transcript"], f"after the refusals: {code} {body}")
say("still serving", text=body["text"])

print("ALL OK")
