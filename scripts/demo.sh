#!/usr/bin/env bash
# Set up what the demo needs (scripts/setup.sh --demo: no Firefox or geckodriver), build the
# tabpool binary, then run the main job on its built-in default: sentence embeddings with
# all-MiniLM-L6-v2 in a real headless tab (WebNN or WebGPU, whichever calibrated faster; the
# choice is remembered, see `tabpool embed --recalibrate`), with their cosine similarities.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
bin="${CARGO_TARGET_DIR:-$root/target}/debug/tabpool"
# The host build needs nothing setup installs until it links (libduckdb), so on a fresh machine
# it compiles while setup downloads (apt, npm, the model) and builds the page: the two overlap
# instead of following each other. Its output goes to a log; the build below finishes it.
bg=
if [ ! -x "$bin" ]; then
  log_file="$(mktemp -t tabpool-build.XXXXXX.log)"
  echo "[demo] cargo build -p tabpool in the background while setup runs (log: $log_file)" >&2
  cargo build -p tabpool >"$log_file" 2>&1 &
  bg=$!
  # Setup failing (or ^C) stops it too.
  trap 'kill "$bg" 2>/dev/null || true' EXIT
fi
bash scripts/setup.sh --demo
if [ -n "$bg" ]; then
  echo "[demo] setup done; waiting for the background build (its last line: $(tail -n1 "$log_file" | cut -c1-80))" >&2
  wait "$bg" || echo "[demo] the background build stopped (see $log_file); building again now that setup is done" >&2
  trap - EXIT
fi
if [ $# -eq 0 ]; then
  set -- "A cat sits outside" "A feline rests outdoors" "The stock market fell sharply today" "WebGPU exposes modern GPU capabilities to the web platform."
fi
if [ -x "$bin" ]; then
  echo "[demo] cargo build -p tabpool (up to date: a few seconds)" >&2
else
  echo "[demo] cargo build -p tabpool (the first time: about 10 minutes on 2 cores; cargo shows its progress)" >&2
fi
cargo build -p tabpool
echo "[demo] tabpool embed: a headless tab starts, loads MiniLM and embeds ${#} texts" >&2
exec "$bin" embed "$@"
