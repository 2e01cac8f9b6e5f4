#!/usr/bin/env bash
# The fuzz targets of fuzz/ (cargo fuzz: libFuzzer + AddressSanitizer, nightly Rust), each for
# SECONDS, starting from and adding to the committed corpora fuzz/corpus/TARGET. A crash leaves
# its input in fuzz/artifacts/TARGET/ and fails the script; every crash found so far is a
# regression test of the crate it was in. Prints one line of figures per target and writes them
# to fuzz/results.json.
#   scripts/fuzz.sh                 # every target, 600 s each (the figures in docs/reliability.md)
#   scripts/fuzz.sh 20 sampling     # a smoke run
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
secs=${1:-600}
shift || true
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz > /dev/null || cargo install cargo-fuzz --locked
scripts/setup.sh > /dev/null
export ORT_DYLIB_PATH=$root/.setblock/onnxruntime/libonnxruntime.so
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
cargo +nightly fuzz build -O
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
results=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  # ONNX Runtime keeps process-wide allocations until exit: leak checks only where it is not loaded
  leaks=1
  case "$t" in model_folder | c_abi) leaks=0 ;; esac
  set +e
  cargo +nightly fuzz run -O "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -timeout=20 \
    -rss_limit_mb=4096 -max_len=4096 -detect_leaks=$leaks -print_final_stats=1 > "$logs/$t" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$t" | grep -o '[0-9]*$' || echo 0)
  cov=$(grep -o 'cov: [0-9]*' "$logs/$t" | tail -n 1 | grep -o '[0-9]*' || echo 0)
  corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
  crashes=$(find "fuzz/artifacts/$t" -type f 2> /dev/null | wc -l)
  echo "fuzz $t: ${secs}s, $execs executions, coverage $cov, corpus $corpus, crash files $crashes, exit $rc"
  results+=("{\"target\": \"$t\", \"seconds\": $secs, \"executions\": $execs, \"coverage\": $cov, \"corpus\": $corpus, \"crash_files\": $crashes, \"exit\": $rc}")
  if [ "$rc" -ne 0 ]; then
    grep -E "panicked|ERROR: |SUMMARY" "$logs/$t" | head -n 5 >&2
  fi
done
(IFS=,; echo "[${results[*]}]") | python3 -m json.tool > fuzz/results.json
! grep -q '"exit": [1-9]' fuzz/results.json
