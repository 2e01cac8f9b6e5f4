#!/usr/bin/env bash
# The long reliability runs (not in CI; their short forms are in scripts/test.sh):
#  1. examples/soak.rs: GENERATIONS (default 10,000) mixed NTP/SBD/auto, greedy and sampled,
#     multi-turn with resets and a cancel storm, over one shared model from 2 threads; RSS sampled
#     throughout, written to docs/soak.json. Fails on any error or RSS growth after warm-up.
#  2. the C example under valgrind (memcheck, full leak check): no definitely lost block in the
#     library; ONNX Runtime's own process-lifetime allocations are reported as reachable.
#   scripts/soak.sh [GENERATIONS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
n=${1:-10000}
scripts/setup.sh > /dev/null
command -v valgrind > /dev/null || { echo "soak: valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
cargo build --quiet --release --example soak
json=${SOAK_JSON:-docs/soak.json}
target/release/examples/soak --generations "$n" --json "$json"

cargo build --quiet -p setblock-ffi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cc -std=c11 -g -Wall -Wextra -Werror -pthread -I bindings/include bindings/examples/c/stream.c \
  -L target/debug -lsetblock_ffi -Wl,-rpath,"$root/target/debug" -o "$out/stream"
valgrind --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=9 \
  --suppressions=scripts/valgrind-ort.supp \
  --log-file="$out/valgrind.log" "$out/stream" tests/fixtures/tiny-llama "sort 3 1 2" > /dev/null
grep -E "definitely lost|indirectly lost|ERROR SUMMARY" "$out/valgrind.log" | sed 's/^==[0-9]*== */valgrind: /'
