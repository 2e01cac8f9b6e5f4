#!/usr/bin/env bash
# Cross-compiles libsetblock_ffi.so for arm64-v8a and x86_64 with cargo-ndk, copies the ONNX
# Runtime Android library next to it, and generates the Kotlin bindings.
#
# Needs (not available on the project's CI machines, so this script is untested there):
#   - the Android NDK (ANDROID_NDK_HOME) and `cargo install cargo-ndk`;
#   - rustup target add aarch64-linux-android x86_64-linux-android;
#   - ORT_ANDROID_DIR: the unpacked onnxruntime-android AAR (Maven: com.microsoft.onnxruntime:
#     onnxruntime-android, >= 1.22), i.e. a folder holding jni/arm64-v8a/libonnxruntime.so and
#     jni/x86_64/libonnxruntime.so. The runtime loads it by name at run time (load-dynamic):
#     LoadConfig(ortLibrary = "libonnxruntime.so") or leave it unset (found next to the app's libs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
: "${ORT_ANDROID_DIR:?set ORT_ANDROID_DIR to the unpacked onnxruntime-android AAR (it holds jni/<abi>/libonnxruntime.so)}"
command -v cargo-ndk > /dev/null || { echo "cargo-ndk not found: cargo install cargo-ndk (and set ANDROID_NDK_HOME)" >&2; exit 2; }
jni="$here/src/main/jniLibs"
mkdir -p "$jni"
features=${SETBLOCK_FEATURES:-nnapi}
(cd "$root" && cargo ndk -t arm64-v8a -t x86_64 -o "$jni" build -p setblock-ffi --release --features "$features")
for abi in arm64-v8a x86_64; do
  src="$ORT_ANDROID_DIR/jni/$abi/libonnxruntime.so"
  [ -f "$src" ] || { echo "missing $src (ORT_ANDROID_DIR must be an unpacked onnxruntime-android AAR)" >&2; exit 2; }
  cp "$src" "$jni/$abi/"
done
(cd "$root" && cargo build -p setblock-ffi --features bindgen --bin uniffi-bindgen --quiet)
"$root/target/debug/uniffi-bindgen" generate --library "$jni/arm64-v8a/libsetblock_ffi.so" \
  --language kotlin --out-dir "$here/build/generated/uniffi" --no-format
