#!/usr/bin/env bash
# Build the page runtime to wasm and generate its JS bindings into www/pkg (settings:
# wasm-pack.toml). Offline: needs the wasm32 target and wasm-bindgen-cli (scripts/setup.sh).
#   bash scripts/build-page.sh          the page (one-thread and threaded builds) and the npm package
#   bash scripts/build-page.sh --demo   the page alone (what scripts/demo.sh's tabs load)
set -euo pipefail
case "${1:-}" in
  "") npm=1 ;;
  --demo) npm=0 ;;
  *) echo "usage: bash scripts/build-page.sh [--demo]" >&2; exit 2 ;;
esac
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
if [ "$profile" = release ]; then flag=--release; dir_profile=release; else flag=; dir_profile=debug; fi
cargo build -p "$crate" --lib --target wasm32-unknown-unknown $flag
rm -rf "$out_dir"
wasm-bindgen --target "$target" --out-dir "$out_dir" --no-typescript \
  "$target_dir/wasm32-unknown-unknown/$dir_profile/$crate.wasm"
if [ "$wasm_opt" = true ]; then
  wasm-opt "$opt_level" --enable-reference-types --enable-bulk-memory \
    -o "$out_dir/${crate}_bg.wasm" "$out_dir/${crate}_bg.wasm"
fi
echo "page built: $(du -h "$out_dir/${crate}_bg.wasm" | cut -f1) $out_dir/${crate}_bg.wasm"

# The threaded build, for cross-origin isolated pages asked for &threads=N (www/main.js picks
# it; www/worker.js runs its kernel threads): wasm atomics and shared memory need std rebuilt
# with them (-Z build-std on the nightly toolchain with rust-src, both from scripts/setup.sh).
# Its own target dir: other flags, another compiler.
# A second threaded build with relaxed SIMD (f32x4.relaxed_madd: the CPU executor's f32
# multiply-adds fused), which www/main.js loads where WebAssembly.validate accepts a probe module
# holding that instruction, else the plain one. Not for --demo (no nightly there anyway).
variants="pkg-threads:threads:"
if [ $npm = 1 ]; then
  variants="$variants pkg-threads-relaxed:threads-relaxed:,+relaxed-simd"
else
  # Not left stale beside a newer plain build: main.js would prefer it.
  rm -rf "$(dirname "$out_dir")/pkg-threads-relaxed"
fi
if rustc +nightly --version >/dev/null 2>&1 && [ -d "$(rustc +nightly --print sysroot)/lib/rustlib/src/rust/library" ]; then
  # Shared memory imported from the page (workers instantiate on it), with the TLS exports
  # wasm-bindgen's thread support sets up each thread with; at most 2 GiB.
  link="--shared-memory --max-memory=2147483648 --import-memory --export=__wasm_init_tls"
  link="$link --export=__tls_size --export=__tls_align --export=__tls_base"
  for v in $variants; do
    IFS=: read -r pkg dir extra <<<"$v"
    RUSTFLAGS="-C target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128$extra $(printf -- '-C link-arg=%s ' $link)" \
      cargo +nightly build -p "$crate" --lib --target wasm32-unknown-unknown $flag \
      -Z build-std=std,panic_abort --target-dir "$target_dir/$dir"
    rm -rf "$(dirname "$out_dir")/$pkg"
    wasm-bindgen --target "$target" --out-dir "$(dirname "$out_dir")/$pkg" --no-typescript \
      "$target_dir/$dir/wasm32-unknown-unknown/$dir_profile/$crate.wasm"
    echo "threaded page built: $(du -h "$(dirname "$out_dir")/$pkg/${crate}_bg.wasm" | cut -f1) $(dirname "$out_dir")/$pkg"
  done
else
  rm -rf "$(dirname "$out_dir")/pkg-threads" "$(dirname "$out_dir")/pkg-threads-relaxed"
  echo "no nightly toolchain with rust-src: no threaded build (tabs run one thread); scripts/setup.sh installs them" >&2
fi

[ $npm = 1 ] || exit 0
# The npm package @tabpool/runtime: the same crate with its library API (`--features api`: models
# built in the page, the tokenizer with them), wrapped by page_runtime/npm/index.js, into
# $out_dir/npm (www/examples import it from there; `npm pack` packs that folder).
cargo build -p "$crate" --lib --target wasm32-unknown-unknown $flag --features api
npm_dir="$out_dir/npm"
wasm-bindgen --target "$target" --out-dir "$npm_dir" --out-name tabpool_runtime \
  "$target_dir/wasm32-unknown-unknown/$dir_profile/$crate.wasm"
cp page_runtime/npm/index.js page_runtime/npm/index.d.ts page_runtime/npm/README.md "$npm_dir/"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
sed "s/@VERSION@/$version/" page_runtime/npm/package.json > "$npm_dir/package.json"
echo "npm package built: $(du -h "$npm_dir/tabpool_runtime_bg.wasm" | cut -f1) $npm_dir (@tabpool/runtime $version)"
