#!/usr/bin/env bash
# Set up, then run the main job on its built-in default: sentence embeddings with
# all-MiniLM-L6-v2 on WebGPU in a real headless Chromium tab, with their cosine similarities.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh
if [ $# -eq 0 ]; then
  set -- "A cat sits outside" "A feline rests outdoors" "The stock market fell sharply today" "WebGPU exposes modern GPU capabilities to the web platform."
fi
cargo run -q -p tabpool -- embed "$@"
