#!/usr/bin/env bash
# The main job: answer a question with the bundled demo model (models/demo), streaming, in SBD mode.
# Extra arguments go to `setblock generate` (e.g. --mode ntp, --prompt "sort 42 17 88", --json).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
cargo build --release --quiet --bin setblock
prompt="Ned has 5 boxes of eggs. Each box holds 7 eggs. Ned finds 14 more eggs. Ned gives 9 eggs to Ann. How many eggs does Ned have now?"
has_prompt=0
for a in "$@"; do [ "$a" = "--prompt" ] && has_prompt=1; done
if [ "$has_prompt" = 1 ]; then
  exec target/release/setblock generate "$@"
fi
exec target/release/setblock generate --prompt "$prompt" "$@"
