#!/usr/bin/env bash
# Compiles the generated Kotlin bindings + SetblockEngine + EngineCheck with kotlinc (npm
# kotlin-compiler 2.4.20, project-local) and runs the checks on the JVM against Debian's JNA and the
# host build of libsetblock_ffi. Needs scripts/setup.sh --kotlin.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exec "$root/bindings/kotlin-jvm.sh" target/kotlin-checks.jar dev.setblock.android.EngineCheckKt \
  android/src/main/kotlin android/src/test/kotlin -- "${1:-tests/fixtures/tiny-llama}"
