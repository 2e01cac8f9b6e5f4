#!/usr/bin/env bash
# Compile Stream.kt with the generated bindings + SetblockEngine (kotlinc from scripts/setup.sh
# --kotlin) and run it on the JVM against the host library.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$root"
lib=.setblock/kotlin/node_modules/kotlin-compiler/lib
cargo build -p setblock-ffi --quiet
cargo build -p setblock-ffi --features bindgen --bin uniffi-bindgen --quiet
gen=target/kotlin-gen
rm -rf "$gen" && mkdir -p "$gen"
target/debug/uniffi-bindgen generate --library target/debug/libsetblock_ffi.so --language kotlin --out-dir "$gen" --no-format >/dev/null
cp=/usr/share/java/jna.jar:$lib/kotlinx-coroutines-core-jvm.jar
jar=target/kotlin-example.jar
.setblock/kotlin/node_modules/kotlin-compiler/bin/kotlinc -nowarn -cp "$cp" -d "$jar" "$gen" android/src/main/kotlin \
  bindings/examples/kotlin/Stream.kt 2>&1 | grep -v "^warning" || true
java -Djna.nosys=false -Djava.library.path=/usr/lib/x86_64-linux-gnu/jni -Djna.boot.library.name=jnidispatch.system \
  -Djna.library.path="$root/target/debug" -cp "$jar:$cp:$lib/kotlin-stdlib.jar" StreamKt "${1:-models/demo}" "${2:-sort 42 17 88 17 30 61}"
