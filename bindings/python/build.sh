#!/usr/bin/env bash
# Builds the FFI library and generates the Python package into bindings/python/gen/setblock_ffi/
# (__init__.py from uniffi + libsetblock_ffi.so). Use it in place
# (`PYTHONPATH=bindings/python/gen python -c "import setblock_ffi"`) or install it:
# `pip install bindings/python` (after this script), or build a wheel: `pip wheel bindings/python`.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
profile=${PROFILE:-debug}
flag=$([ "$profile" = release ] && echo --release || true)
cargo build -p setblock-ffi $flag --quiet
cargo build -p setblock-ffi --features bindgen --bin uniffi-bindgen --quiet
out=bindings/python/gen
rm -rf "$out" && mkdir -p "$out/setblock_ffi"
target/debug/uniffi-bindgen generate --library "target/$profile/libsetblock_ffi.so" --language python --out-dir "$out" >/dev/null
mv "$out/setblock_ffi.py" "$out/setblock_ffi/__init__.py"
python3 bindings/python/patch_binding.py "$out/setblock_ffi/__init__.py"  # enum errors that name the enum; cancel generations at exit
cp "target/$profile/libsetblock_ffi.so" "$out/setblock_ffi/"
