#!/usr/bin/env bash
# Set up what the demo needs (scripts/setup.sh --demo: no Firefox or geckodriver), build the
# tabpool binary, then run the main job on its built-in default: sentence embeddings with
# all-MiniLM-L6-v2 in a real headless tab (WebNN or WebGPU, whichever calibrated faster; the
# choice is remembered, see `tabpool embed --recalibrate`), with their cosine similarities.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh --demo
if [ $# -eq 0 ]; then
  set -- "A cat sits outside" "A feline rests outdoors" "The stock market fell sharply today" "WebGPU exposes modern GPU capabilities to the web platform."
fi
bin="${CARGO_TARGET_DIR:-$root/target}/debug/tabpool"
if [ -x "$bin" ]; then
  echo "[demo] cargo build -p tabpool (up to date: a few seconds)" >&2
else
  echo "[demo] cargo build -p tabpool (the first time: about 10 minutes on 2 cores; cargo shows its progress)" >&2
fi
cargo build -p tabpool
echo "[demo] tabpool embed: a headless tab starts, loads MiniLM and embeds ${#} texts" >&2
exec "$bin" embed "$@"
