#!/usr/bin/env bash
# Build the page runtime to wasm and generate its JS bindings into www/pkg (settings:
# wasm-pack.toml). Offline: needs the wasm32 target and wasm-bindgen-cli (scripts/setup.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
setting() { sed -n "s/^$1 *= *\"\{0,1\}\([^\"#]*\)\"\{0,1\}.*/\1/p" wasm-pack.toml | head -n1 | tr -d ' '; }
crate=$(setting crate); target=$(setting target); out_dir=$(setting out_dir)
profile=$(setting profile); wasm_opt=$(setting wasm_opt); opt_level=$(setting wasm_opt_level)

want=$(sed -n '/^name = "wasm-bindgen"$/{n;s/version = "\(.*\)"/\1/p}' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  echo "wasm-bindgen $want is needed (found '${have:-none}'): run bash scripts/setup.sh" >&2
  exit 1
fi

target_dir="${CARGO_TARGET_DIR:-$root/target}"
if [ "$profile" = release ]; then flag=--release; dir=release; else flag=; dir=debug; fi
cargo build -p "$crate" --lib --target wasm32-unknown-unknown $flag
rm -rf "$out_dir"
wasm-bindgen --target "$target" --out-dir "$out_dir" --no-typescript \
  "$target_dir/wasm32-unknown-unknown/$dir/$crate.wasm"
if [ "$wasm_opt" = true ]; then
  wasm-opt "$opt_level" --enable-reference-types --enable-bulk-memory \
    -o "$out_dir/${crate}_bg.wasm" "$out_dir/${crate}_bg.wasm"
fi
echo "page built: $(du -h "$out_dir/${crate}_bg.wasm" | cut -f1) $out_dir/${crate}_bg.wasm"

# The threaded build, for cross-origin isolated pages asked for &threads=N (www/main.js picks
# it; www/worker.js runs its kernel threads): wasm atomics and shared memory need std rebuilt
# with them (-Z build-std on the nightly toolchain with rust-src, both from scripts/setup.sh).
# Its own target dir: other flags, another compiler.
threads_dir="$(dirname "$out_dir")/pkg-threads"
if rustc +nightly --version >/dev/null 2>&1 && [ -d "$(rustc +nightly --print sysroot)/lib/rustlib/src/rust/library" ]; then
  # Shared memory imported from the page (workers instantiate on it), with the TLS exports
  # wasm-bindgen's thread support sets up each thread with; at most 2 GiB.
  link="--shared-memory --max-memory=2147483648 --import-memory --export=__wasm_init_tls"
  link="$link --export=__tls_size --export=__tls_align --export=__tls_base"
  RUSTFLAGS="-C target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128 $(printf -- '-C link-arg=%s ' $link)" \
    cargo +nightly build -p "$crate" --lib --target wasm32-unknown-unknown $flag \
    -Z build-std=std,panic_abort --target-dir "$target_dir/threads"
  rm -rf "$threads_dir"
  wasm-bindgen --target "$target" --out-dir "$threads_dir" --no-typescript \
    "$target_dir/threads/wasm32-unknown-unknown/$dir/$crate.wasm"
  echo "threaded page built: $(du -h "$threads_dir/${crate}_bg.wasm" | cut -f1) $threads_dir/${crate}_bg.wasm"
else
  rm -rf "$threads_dir"
  echo "no nightly toolchain with rust-src: no threaded build (tabs run one thread); scripts/setup.sh installs them" >&2
fi

# The npm package @tabpool/runtime: the same crate with its library API (`--features api`: models
# built in the page, the tokenizer with them), wrapped by page_runtime/npm/index.js, into
# $out_dir/npm (www/examples import it from there; `npm pack` packs that folder).
cargo build -p "$crate" --lib --target wasm32-unknown-unknown $flag --features api
npm_dir="$out_dir/npm"
wasm-bindgen --target "$target" --out-dir "$npm_dir" --out-name tabpool_runtime \
  "$target_dir/wasm32-unknown-unknown/$dir/$crate.wasm"
cp page_runtime/npm/index.js page_runtime/npm/index.d.ts page_runtime/npm/README.md "$npm_dir/"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
sed "s/@VERSION@/$version/" page_runtime/npm/package.json > "$npm_dir/package.json"
echo "npm package built: $(du -h "$npm_dir/tabpool_runtime_bg.wasm" | cut -f1) $npm_dir (@tabpool/runtime $version)"
