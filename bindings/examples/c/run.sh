#!/usr/bin/env bash
# Compile stream.c with -Wall -Wextra -Werror against include/setblock.h, link the cdylib, run it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$root"
cargo build -p setblock-ffi --quiet
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cc -std=c11 -Wall -Wextra -Werror -pthread -I bindings/include bindings/examples/c/stream.c \
  -L target/debug -lsetblock_ffi -Wl,-rpath,"$root/target/debug" -o "$out/stream"
"$out/stream" "${1:-models/demo}" "${2:-sort 42 17 88 17 30 61}"
