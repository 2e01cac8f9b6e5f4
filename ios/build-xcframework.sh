#!/usr/bin/env bash
# Builds SetblockFFI.xcframework (static libsetblock_ffi.a for iOS devices, the simulator and macOS)
# and generates the Swift bindings into Sources/Setblock. Needs macOS with Xcode, and
#   rustup target add aarch64-apple-ios aarch64-apple-ios-sim aarch64-apple-darwin
# ONNX Runtime: the runtime loads it dynamically; ship onnxruntime.framework (from the
# onnxruntime-c CocoaPod / Swift package, >= 1.22) in the app and pass its path as
# LoadConfig.ortLibrary, or set ORT_DYLIB_PATH. Untested here: no Xcode or Swift on these machines.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
command -v xcodebuild > /dev/null || { echo "xcodebuild not found: this script needs macOS with Xcode" >&2; exit 2; }
features=${SETBLOCK_FEATURES:-coreml}
for t in aarch64-apple-ios aarch64-apple-ios-sim aarch64-apple-darwin; do
  cargo build -p setblock-ffi --release --target "$t" --features "$features"
done
cargo build -p setblock-ffi --features bindgen --bin uniffi-bindgen --quiet
gen=$(mktemp -d)
target/debug/uniffi-bindgen generate --library target/aarch64-apple-darwin/release/libsetblock_ffi.dylib \
  --language swift --out-dir "$gen"
mkdir -p "$here/Sources/Setblock" "$gen/include"
cp "$gen/Setblock.swift" "$here/Sources/Setblock/"
cp "$gen/SetblockFFI.h" "$gen/include/"
cp "$gen/SetblockFFI.modulemap" "$gen/include/module.modulemap"
rm -rf "$here/SetblockFFI.xcframework"
xcodebuild -create-xcframework \
  -library target/aarch64-apple-ios/release/libsetblock_ffi.a -headers "$gen/include" \
  -library target/aarch64-apple-ios-sim/release/libsetblock_ffi.a -headers "$gen/include" \
  -library target/aarch64-apple-darwin/release/libsetblock_ffi.a -headers "$gen/include" \
  -output "$here/SetblockFFI.xcframework"
