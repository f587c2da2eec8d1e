"""Triton's official Open Inference Protocol client (`tritonclient[http]`) against a running
`tabpool serve` (tests/oip_api.rs starts it with MiniLM and EfficientNet-Lite0 and an API key):
server live/ready/metadata, both models' metadata (names are the /v1/models ids), model
readiness, and a batch of two preprocessed images through the image model twice — JSON tensors
both ways, then binary tensors both ways. The test computes the FP32 input with tabpool's own
preprocessing (`PIXELS`, little-endian f32 [2, 3, 224, 224]); the logits and features come back
in OUT for the test to check against the float64 reference. Prints one JSON line per check and
ALL OK at the end; exits non-zero on the first failure.

Usage: python triton_client.py HOST:PORT API_KEY PIXELS OUT
"""

import json
import sys
import urllib.request

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

URL, KEY, PIXELS, OUT = sys.argv[1:5]
HEADERS = {"Authorization": f"Bearer {KEY}"}
IMAGE_MODEL = "efficientnet-lite0"


def say(check, **kw):
    print(json.dumps({"check": check, **kw}), flush=True)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


client = httpclient.InferenceServerClient(url=URL, network_timeout=300.0, connection_timeout=60.0)

# The server.
expect(client.is_server_live(headers=HEADERS), "server not live")
expect(client.is_server_ready(headers=HEADERS), "server not ready")
meta = client.get_server_metadata(headers=HEADERS)
expect(meta["name"] == "tabpool" and "binary_tensor_data" in meta["extensions"], f"server metadata {meta}")
say("server", live=True, ready=True, metadata=meta)

# Without the key the client raises its own exception with the server's status and reason.
try:
    client.get_server_metadata()
    raise AssertionError("no key, yet answered")
except InferenceServerException as e:
    expect(e.status() == "401", f"no key: status {e.status()} ({e.message()})")
    say("no_key", status=e.status(), message=e.message())

# Model names are the /v1/models ids.
req = urllib.request.Request(f"http://{URL}/v1/models", headers=HEADERS)
ids = [m["id"] for m in json.load(urllib.request.urlopen(req, timeout=60))["data"]]
expect(IMAGE_MODEL in ids and "all-MiniLM-L6-v2" in ids, f"/v1/models ids {ids}")
metadata = {}
for name in ids:
    m = client.get_model_metadata(name, headers=HEADERS)
    expect(m["name"] == name, f"metadata of {name} names {m['name']}")
    expect(client.is_model_ready(name, headers=HEADERS), f"{name} not ready")
    metadata[name] = m
    say("model", name=name, inputs=m["inputs"], outputs=m["outputs"], versions=m.get("versions"))
img = metadata[IMAGE_MODEL]
expect([(i["name"], i["datatype"], i["shape"]) for i in img["inputs"]] == [("pixels", "FP32", [-1, 3, 224, 224])],
       f"inputs {img['inputs']}")
expect([(o["name"], o["datatype"], o["shape"]) for o in img["outputs"]]
       == [("logits", "FP32", [-1, 1000]), ("features", "FP32", [-1, 1280])], f"outputs {img['outputs']}")
try:
    client.get_model_metadata("no-such-model", headers=HEADERS)
    raise AssertionError("metadata of an unknown model")
except InferenceServerException as e:
    expect(e.status() == "404", f"unknown model: status {e.status()} ({e.message()})")
    say("unknown_model", status=e.status(), message=e.message())

# Inference: the batch of two, JSON both ways, then binary both ways.
pixels = np.fromfile(PIXELS, dtype="<f4").reshape(2, 3, 224, 224)
results = {}
for mode, binary in (("json", False), ("binary", True)):
    inp = httpclient.InferInput("pixels", list(pixels.shape), "FP32")
    inp.set_data_from_numpy(pixels, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("logits", "features")]
    r = client.infer(IMAGE_MODEL, [inp], outputs=outputs, headers=HEADERS, request_id=f"batch-{mode}")
    logits, features = r.as_numpy("logits"), r.as_numpy("features")
    expect(logits.dtype == np.float32 and logits.shape == (2, 1000), f"{mode}: logits {logits.dtype} {logits.shape}")
    expect(features.dtype == np.float32 and features.shape == (2, 1280), f"{mode}: features {features.shape}")
    resp = r.get_response()
    expect(resp.get("id") == f"batch-{mode}" and resp["model_name"] == IMAGE_MODEL, f"{mode}: response {resp}")
    for o in resp["outputs"]:
        expect(("binary_data_size" in o.get("parameters", {})) == binary and ("data" in o) != binary,
               f"{mode}: output {o['name']} came as {'binary' if 'binary_data_size' in o.get('parameters', {}) else 'JSON'}")
    results[mode] = {"logits": logits.tolist(), "features": features.tolist(), "parameters": resp.get("parameters")}
    say("infer", mode=mode, top1=[int(i) for i in logits.argmax(axis=1)], parameters=resp.get("parameters"))
diff = float(np.abs(np.array(results["json"]["logits"]) - np.array(results["binary"]["logits"])).max())
say("json_vs_binary", max_abs_logit_diff=diff)

# The client's exception carries the server's reason.
bad = httpclient.InferInput("pixels", [1, 3, 224, 225], "FP32")
bad.set_data_from_numpy(np.zeros((1, 3, 224, 225), dtype=np.float32), binary_data=True)
try:
    client.infer(IMAGE_MODEL, [bad], headers=HEADERS)
    raise AssertionError("a wrong shape was run")
except InferenceServerException as e:
    expect(e.status() == "400" and "shape" in e.message(), f"wrong shape: {e.status()} {e.message()}")
    say("wrong_shape", status=e.status(), message=e.message())

json.dump({"ids": ids, "metadata": metadata, "results": results}, open(OUT, "w"))
print("ALL OK", flush=True)
