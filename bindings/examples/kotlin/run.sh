#!/usr/bin/env bash
# Compile Stream.kt with the generated bindings + SetblockEngine and run it on the JVM against the
# host library (needs scripts/setup.sh --kotlin).  Usage: run.sh [MODEL_DIR] [PROMPT]
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
exec "$root/bindings/kotlin-jvm.sh" target/kotlin-example.jar StreamKt \
  android/src/main/kotlin bindings/examples/kotlin/Stream.kt -- "${1:-models/demo}" "${2:-sort 42 17 88 17 30 61}"
