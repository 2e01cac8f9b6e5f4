#!/usr/bin/env bash
# Shared by android/run-jvm-checks.sh and bindings/examples/kotlin/run.sh: builds the host FFI
# library, generates the Kotlin bindings, compiles them with the given Kotlin sources into JAR, then
# runs MAIN_CLASS on the JVM against Debian's JNA.  Usage: kotlin-jvm.sh JAR MAIN_CLASS SOURCES... -- ARGS...
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
jar=$1 main=$2
shift 2
sources=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do sources+=("$1"); shift; done
[ $# -gt 0 ] && shift
lib=.setblock/kotlin/node_modules/kotlin-compiler/lib
[ -x .setblock/kotlin/node_modules/kotlin-compiler/bin/kotlinc ] || { echo "kotlinc missing: run scripts/setup.sh --kotlin" >&2; exit 2; }
cargo build -p setblock-ffi --quiet
cargo build -p setblock-ffi --features bindgen --bin uniffi-bindgen --quiet
gen=target/kotlin-gen
rm -rf "$gen" && mkdir -p "$gen"
target/debug/uniffi-bindgen generate --library target/debug/libsetblock_ffi.so --language kotlin --out-dir "$gen" --no-format >/dev/null
cp=/usr/share/java/jna.jar:$lib/kotlinx-coroutines-core-jvm.jar
.setblock/kotlin/node_modules/kotlin-compiler/bin/kotlinc -nowarn -cp "$cp" -d "$jar" "$gen" "${sources[@]}" 2>&1 | grep -v "^warning" || true
exec java -Djna.nosys=false -Djava.library.path=/usr/lib/x86_64-linux-gnu/jni -Djna.boot.library.name=jnidispatch.system \
  -Djna.library.path="$root/target/debug" -cp "$jar:$cp:$lib/kotlin-stdlib.jar" "$main" "$@"
