#!/usr/bin/env bash
# Builds the FFI library and generates the Python module into bindings/python/gen/
# (setblock_ffi.py + libsetblock_ffi.so); `PYTHONPATH=bindings/python/gen python -c "import setblock_ffi"`.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
profile=${PROFILE:-debug}
flag=$([ "$profile" = release ] && echo --release || true)
cargo build -p setblock-ffi $flag --quiet
cargo build -p setblock-ffi --features bindgen --bin uniffi-bindgen --quiet
out=bindings/python/gen
rm -rf "$out" && mkdir -p "$out"
target/debug/uniffi-bindgen generate --library "target/$profile/libsetblock_ffi.so" --language python --out-dir "$out" >/dev/null
cp "target/$profile/libsetblock_ffi.so" "$out/"
