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
