#!/usr/bin/env bash
# Compiles the generated Kotlin bindings + SetblockEngine + EngineCheck with kotlinc (npm
# kotlin-compiler 2.4.20, project-local) and runs them on the JVM against Debian's JNA and the host
# build of libsetblock_ffi. Needs: apt-get install libjna-java libjna-jni (scripts/setup.sh --kotlin).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
kotlinc=.setblock/kotlin/node_modules/kotlin-compiler/bin/kotlinc
lib=.setblock/kotlin/node_modules/kotlin-compiler/lib
cargo build -p setblock-ffi --quiet
cargo build -p setblock-ffi --features bindgen --bin uniffi-bindgen --quiet
gen=target/kotlin-gen
rm -rf "$gen" && mkdir -p "$gen"
target/debug/uniffi-bindgen generate --library target/debug/libsetblock_ffi.so --language kotlin --out-dir "$gen" --no-format >/dev/null
cp=/usr/share/java/jna.jar:$lib/kotlinx-coroutines-core-jvm.jar
jar=target/kotlin-checks.jar
"$kotlinc" -nowarn -cp "$cp" -d "$jar" "$gen" android/src/main/kotlin android/src/test/kotlin 2>&1 | grep -v "^warning" || true
java -Djna.nosys=false -Djava.library.path=/usr/lib/x86_64-linux-gnu/jni -Djna.boot.library.name=jnidispatch.system \
  -Djna.library.path="$root/target/debug" -cp "$jar:$cp:$lib/kotlin-stdlib.jar" \
  dev.setblock.android.EngineCheckKt "${1:-tests/fixtures/tiny-llama}"
