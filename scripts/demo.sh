#!/usr/bin/env bash
# Set up, then run the main job on its built-in default: a real matmul on WebGPU in a real
# headless Chromium tab, checked against the host CPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh
cargo run -q -p tabpool -- matmul --m 256 --k 256 --n 256 "$@"
