"""The official `openai` Python client against a running `tabpool serve` (tests/openai_api.rs
starts it): embeddings in both formats against the float64 MiniLM reference, a streamed greedy
chat completion against the SmolLM2 greedy reference, include_usage, stop strings, completions,
models, and each error class the client raises. Prints one JSON line per check; exits non-zero
on the first failure.

Usage: python openai_client.py BASE_URL API_KEY DATA_DIR
"""

import json
import math
import sys

import openai

BASE, KEY, DATA = sys.argv[1], sys.argv[2], sys.argv[3]
EMBED = "all-MiniLM-L6-v2"
CHAT = "SmolLM2-135M-Instruct"
MIN_COSINE, MAX_ABS = 0.9999, 1e-3  # the same tolerance as tests/support (MIN_COSINE, MAX_ABS)

client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=180)


def say(check, **kw):
    print(json.dumps({"check": check, **kw}), flush=True)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


minilm = json.load(open(f"{DATA}/minilm_embeddings.json"))["sentences"]
smol = json.load(open(f"{DATA}/smollm2_greedy.json"))["cases"]

# Models.
ids = [m.id for m in client.models.list().data]
expect(EMBED in ids and CHAT in ids, f"models: {ids}")
say("models.list", ids=ids)

# Embeddings: the client's default (base64, decoded by the client) and float, against the
# float64 reference; a list of token ids gives the same vectors as the texts.
texts = [s["text"] for s in minilm[:4]]
for fmt in (None, "float"):
    kw = {} if fmt is None else {"encoding_format": fmt}
    r = client.embeddings.create(model=EMBED, input=texts, **kw)
    expect(len(r.data) == len(texts), f"{len(r.data)} vectors for {len(texts)} texts")
    worst = (1.0, 0.0)
    for d, s in zip(r.data, minilm):
        v = list(d.embedding)
        cos, diff = cosine(v, s["embedding"]), max(abs(x - y) for x, y in zip(v, s["embedding"]))
        expect(cos >= MIN_COSINE and diff <= MAX_ABS, f"{s['text']!r}: cosine {cos}, max abs {diff}")
        worst = (min(worst[0], cos), max(worst[1], diff))
    expect(r.usage.prompt_tokens == sum(len(s["input_ids"]) for s in minilm[:4]), f"usage {r.usage}")
    say("embeddings", format=fmt or "base64 (client default)", n=len(r.data), min_cosine=worst[0], max_abs=worst[1],
        prompt_tokens=r.usage.prompt_tokens)
one = client.embeddings.create(model=EMBED, input=texts[0], encoding_format="float").data[0].embedding
by_ids = client.embeddings.create(model=EMBED, input=[minilm[0]["input_ids"][1:-1]], encoding_format="float")
diff = max(abs(x - y) for x, y in zip(one, by_ids.data[0].embedding))
expect(diff <= 1e-5, f"token ids vs text: max abs {diff}")
say("embeddings.token_ids", max_abs_vs_text=diff)

# A streamed chat completion at temperature 0: the reference's greedy text, chunk by chunk;
# include_usage adds one last chunk with empty choices and the usage.
for case in smol:
    stream = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": case["user"]}], temperature=0, max_tokens=24,
        stream=True, stream_options={"include_usage": True})
    pieces, finish, usage, chunks = [], None, None, 0
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            expect(chunk.choices == [], "the usage chunk has no choices")
            usage = chunk.usage
            continue
        c = chunk.choices[0]
        pieces.append(c.delta.content or "")
        finish = c.finish_reason or finish
    text = "".join(pieces)
    expect(text == case["text"], f"{case['user']!r}: {text!r} != {case['text']!r}")
    generated = len([t for t in case["greedy_ids"] if t != 2])
    expect(finish == ("stop" if 2 in case["greedy_ids"] else "length"), f"finish {finish}")
    expect(usage is not None and usage.prompt_tokens == len(case["prompt_ids"])
           and usage.completion_tokens == generated, f"usage {usage}")
    say("chat.stream", user=case["user"], text=text, finish_reason=finish, chunks=chunks,
        usage=usage.model_dump())
# Without include_usage no usage chunk is sent.
stream = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": smol[0]["user"]}],
                                        temperature=0, max_tokens=24, stream=True)
expect(all(c.usage is None and c.choices for c in stream), "a usage chunk was sent unasked")
say("chat.stream.no_usage")

# Whole (not streamed), and stop strings: the text ends right before the stop string, which is
# never sent, streamed or not.
case = smol[1]
r = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": case["user"]}],
                                   temperature=0, max_tokens=24)
expect(r.choices[0].message.content == case["text"], f"whole: {r.choices[0].message.content!r}")
stop = " a playful"
head = case["text"][:case["text"].index(stop)]
r = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": case["user"]}],
                                   temperature=0, max_tokens=24, stop=[stop, "never appears"])
expect((r.choices[0].message.content, r.choices[0].finish_reason) == (head, "stop"), f"stop: {r.choices[0]}")
stream = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": case["user"]}],
                                        temperature=0, max_tokens=24, stop=stop, stream=True)
pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
expect("".join(pieces) == head and not any("playful" in p for p in pieces), f"streamed stop: {pieces}")
say("chat.stop", stop=stop, text=head, streamed_pieces=len(pieces))

# Seeded sampling repeats; a length finish.
a = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Tell me a story."}],
                                   temperature=0.8, seed=7, max_tokens=12)
b = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Tell me a story."}],
                                   temperature=0.8, seed=7, max_tokens=12)
expect(a.choices[0].message.content == b.choices[0].message.content, "the same seed gave different text")
expect(a.choices[0].finish_reason == "length" and a.usage.completion_tokens == 12, f"{a.choices[0]} {a.usage}")
say("chat.seed", text=a.choices[0].message.content)

# Completions: raw text continued (no chat template).
r = client.completions.create(model=CHAT, prompt=smol[0]["prompt"], temperature=0, max_tokens=24)
expect(r.choices[0].text == smol[0]["text"], f"completions: {r.choices[0].text!r}")
expect(r.usage.prompt_tokens == len(smol[0]["prompt_ids"]), f"completions usage {r.usage}")
say("completions", text=r.choices[0].text, finish_reason=r.choices[0].finish_reason)


# Errors, each as the client's own class, in the envelope it reads.
def raises(cls, call, code=None, param=None):
    try:
        call()
    except cls as e:
        body = e.body if isinstance(e.body, dict) else {}
        expect(code is None or body.get("code") == code, f"{cls.__name__}: code {body.get('code')} != {code}")
        expect(param is None or body.get("param") == param, f"{cls.__name__}: param {body.get('param')} != {param}")
        say("error", cls=cls.__name__, status=e.status_code, code=body.get("code"), message=body.get("message"))
        return
    raise AssertionError(f"no {cls.__name__}")


msgs = [{"role": "user", "content": "hi"}]
bad_key = openai.OpenAI(base_url=BASE, api_key="wrong-key-0123456789", max_retries=0)
raises(openai.AuthenticationError, lambda: bad_key.models.list())
raises(openai.NotFoundError, lambda: client.chat.completions.create(model="gpt-9", messages=msgs), "model_not_found")
raises(openai.NotFoundError, lambda: client.embeddings.create(model="text-embedding-9", input="x"), "model_not_found")
raises(openai.BadRequestError, lambda: client.chat.completions.create(model=CHAT, messages=msgs, n=2), param="n")
raises(openai.BadRequestError, lambda: client.chat.completions.create(model=CHAT, messages=msgs, logprobs=True),
       param="logprobs")
raises(openai.BadRequestError, lambda: client.embeddings.create(model=EMBED, input="x", dimensions=64),
       param="dimensions")
raises(openai.BadRequestError,
       lambda: client.chat.completions.create(model=CHAT, messages=msgs, max_tokens=100000), "context_length_exceeded")
raises(openai.BadRequestError, lambda: client.chat.completions.create(model=CHAT, messages=msgs, temperature=5),
       param="temperature")

# 429: the pool holds ONE session and lets ONE stream wait; a third is refused as busy.
first = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Count to a thousand."}],
                                       temperature=0, max_tokens=300, stream=True)
it = iter(first)
next(it)
second = client.chat.completions.create(model=CHAT, messages=msgs, temperature=0, max_tokens=4, stream=True)
raises(openai.RateLimitError, lambda: client.chat.completions.create(model=CHAT, messages=msgs, max_tokens=4),
       "rate_limit_exceeded")
# Closing the first stream cancels it; the waiting one then runs to its end.
first.close()
rest = list(second)
expect(rest and rest[-1].choices[0].finish_reason in ("stop", "length"), f"the waiting stream: {rest[-1:]}")
say("busy.recovered", chunks=len(rest))
print("ALL OK", flush=True)
