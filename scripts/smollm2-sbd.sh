#!/usr/bin/env bash
# Builds models/smollm2-135m-sbd/{fp32,int8}/ (git-ignored) from the pinned SmolLM2-135M-Instruct base
# (scripts/fetch-smollm2.sh) and the committed SBD LoRA adapter (models/smollm2-135m-sbd/adapters/sbd,
# trained by models/make_smollm2.sh): merged, exported, verified. Idempotent: a folder built from
# the same adapter is kept. ADAPTER=ntp builds the NTP twin into models/smollm2-135m-ntp/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh --python
py=.venv/bin/python
name=${ADAPTER:-sbd}
adapter=models/smollm2-135m-sbd/adapters/$name
dest=models/smollm2-135m-$name
if [ ! -f "$adapter/adapter_model.safetensors" ]; then
  echo "smollm2-sbd: no adapter at $adapter yet; models/make_smollm2.sh trains it (see its header)" >&2
  exit 2
fi
gguf=$(scripts/fetch-smollm2.sh)
stamp=$(sha256sum "$adapter/adapter_model.safetensors" | cut -d' ' -f1)
k=()
[ "$name" = sbd ] && k=(--default-block-size 8)
for q in none int8; do
  out=$dest/$([ $q = none ] && echo fp32 || echo int8)
  if [ -f "$out/.adapter-sha256" ] && [ "$(cat "$out/.adapter-sha256")" = "$stamp" ]; then
    continue
  fi
  rm -rf "$out"
  SETBLOCK_LORA_BASE=$gguf $py -m setblock_export export --checkpoint "$adapter" --out "$out" --quantize $q \
    --block-sizes 2 16 "${k[@]}"
  SETBLOCK_LORA_BASE=$gguf $py -m setblock_export verify --folder "$out" --checkpoint "$adapter"
  echo "$stamp" > "$out/.adapter-sha256"
done
echo "$dest/fp32 and $dest/int8 are ready: target/release/setblock generate --model $dest/int8 --prompt '...'"
