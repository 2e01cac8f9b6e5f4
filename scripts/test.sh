#!/usr/bin/env bash
# Every test of the project: set-up (idempotent), Rust lint + tests, Python lint + tests.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh --python --kotlin

echo "== cargo fmt / clippy"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== feature-gated execution providers compile"
cargo check --quiet --features cuda,tensorrt,coreml,nnapi,xnnpack

echo "== the FFI crate cross-compiles (Android arm64, iOS arm64)"
# A check, not a link: llguidance (structured output) also declares a cdylib, which cargo links
# even as a dependency, and only the NDK's or Xcode's linker can link it for these targets
# (android/build-rust.sh and ios/build-xcframework.sh have them; this machine has neither).
rustup target add aarch64-linux-android aarch64-apple-ios > /dev/null
for t in aarch64-linux-android aarch64-apple-ios; do
  cargo check --quiet -p setblock-ffi --lib --target "$t"
done

echo "== cargo test"
cargo test --workspace --all-targets --quiet 2>&1 | grep -vE "^\s*$|^running 0 tests|^test result: ok. 0 passed"
cargo test --workspace --doc --quiet 2>&1 | tail -n 2

echo "== soak, short form (examples/soak.rs: mixed modes, multi-turn, resets, a cancel storm; RSS flat)"
cargo run --quiet --example soak -- --model models/demo --generations 300 --samples 10 --max-growth-mib 32 | tail -n 1

echo "== C ABI example (gcc -Werror against bindings/include/setblock.h)"
bindings/examples/c/run.sh tests/fixtures/tiny-llama "sort 3 1 2" > /dev/null
# the same through the C ABI on a folder whose graph writes the KV cache in place (--fused-attention)
bindings/examples/c/run.sh tests/fixtures/tiny-llama-fused "sort 3 1 2" > /dev/null

echo "== Python binding (uniffi)"
bindings/python/build.sh
(cd bindings/python && PYTHONPATH=gen ../../.venv/bin/python -m pytest -q -p no:logging test_binding.py)

echo "== setblock serve against real clients (the openai package, curl)"
command -v curl > /dev/null || { echo "test.sh: curl is needed (apt-get install curl)" >&2; exit 1; }
cargo build --quiet --bin setblock
(cd tests/serve && ../../.venv/bin/python -m pytest -q -p no:cacheprovider test_serve.py)

echo "== Kotlin bindings + SetblockEngine on the JVM"
android/run-jvm-checks.sh tests/fixtures/tiny-llama | tail -n 1

echo "== aarch64 Linux: cross-built, run under qemu-aarch64 (the Rust suite, the demo's tokens on a Pi 4 and a Pi 5 core, the C example)"
scripts/aarch64.sh test
scripts/aarch64.sh demo | tail -n 1
SETBLOCK_QEMU_CPU=cortex-a76 scripts/aarch64.sh demo | tail -n 1
scripts/aarch64.sh c > /dev/null

echo "== ruff"
.venv/bin/ruff check export bench bindings/python tests/serve
.venv/bin/ruff format --check export bench bindings/python tests/serve

echo "== pytest (export/)"
cd export
../.venv/bin/python -m pytest -q
