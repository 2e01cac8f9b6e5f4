#!/usr/bin/env bash
# Every test of the project: set-up (idempotent), Rust lint + tests, Python lint + tests.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh --python

echo "== cargo fmt / clippy"
cargo fmt --all --check
cargo clippy --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo test --all-targets --quiet 2>&1 | grep -vE "^\s*$|^running 0 tests|^test result: ok. 0 passed"
cargo test --doc --quiet 2>&1 | tail -n 2

echo "== ruff"
.venv/bin/ruff check export
.venv/bin/ruff format --check export

echo "== pytest (export/)"
cd export
../.venv/bin/python -m pytest -q
