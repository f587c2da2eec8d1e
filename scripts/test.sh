#!/usr/bin/env bash
# Set up, then run every check: formatting, clippy (host and wasm32), unit + property tests,
# end-to-end tests with real headless Chromium, and the runtime's kernel tests inside Chromium and
# Firefox (wasm-pack).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh

log=$(mktemp)
trap 'rm -f "$log"' EXIT
step() { echo "== $*" >&2; "$@" 2>&1 | tee -a "$log"; }

step cargo fmt --all -- --check
step cargo clippy --workspace --all-targets -- -D warnings
step cargo clippy -p page_runtime -p shared_proto -p model_graphs --features page_runtime/api --target wasm32-unknown-unknown --all-targets -- -D warnings
# The libFuzzer targets are their own workspace that nothing else builds: check them so they cannot rot.
step cargo check --manifest-path shared_proto/fuzz/Cargo.toml --all-targets
# One test at a time: the end-to-end binary's tests share the machine's two cores with the
# browsers they start, and a test that loads both cores slows a timing-sensitive neighbour.
RUST_TEST_THREADS=1 step cargo test --workspace --no-fail-fast
# The runtime's in-browser tests through wasm-pack, in headless Chromium (WebGPU on SwiftShader)
# and headless Firefox (WebGPU over lavapipe), with the in-page library API (`--features api`);
# capabilities in page_runtime/webdriver.json.
# `--mode no-install` with the drivers named: wasm-pack downloads nothing.
step wasm-pack test --headless --chrome --chromedriver /usr/bin/chromedriver --mode no-install page_runtime --features api
step wasm-pack test --headless --firefox --geckodriver "$(command -v geckodriver)" --mode no-install page_runtime --features api
# The SIMD128 kernel tests again built with relaxed SIMD (what www/pkg-threads-relaxed runs: fused
# multiply-adds within the same tolerances), in a target dir of their own so the plain build's
# artifacts stay.
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}/relaxed-tests" RUSTFLAGS="-C target-feature=+simd128,+relaxed-simd" \
  step cargo test -p page_runtime --target wasm32-unknown-unknown --test quantized_simd128
# The model graphs a page builds equal the host's (same hash, same token ids).
step wasm-pack test --headless --chrome --chromedriver /usr/bin/chromedriver --mode no-install model_graphs

# One closing line over every cargo test run above.
passed=$(sed -n 's/^test result: .*ok\. \([0-9]*\) passed.*/\1/p; s/^test result: .*FAILED\. \([0-9]*\) passed.*/\1/p' "$log" | awk "{s+=\$1} END {print s+0}")
failed=$(sed -n 's/^test result: .* \([0-9]*\) failed.*/\1/p' "$log" | awk "{s+=\$1} END {print s+0}")
echo "tests: ${passed:-0} passed, ${failed:-0} failed"
[ "${failed:-0}" = 0 ] && [ "${passed:-0}" -gt 0 ]
