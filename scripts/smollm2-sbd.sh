#!/usr/bin/env bash
# Builds models/smollm2-135m-sbd/fp32/ and int8/ (git-ignored) from the pinned SmolLM2-135M-Instruct base
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
# a run whose last stage is still training (models/make_smollm2.sh): its newest finished stage
for s in 2 1; do
  [ -f "$adapter/adapter_model.safetensors" ] && break
  if [ -f "$adapter-stage$s/adapter_model.safetensors" ]; then
    adapter=$adapter-stage$s
    echo "smollm2-sbd: $name's last stage is not trained yet; building $dest from $adapter" >&2
  fi
done
if [ ! -f "$adapter/adapter_model.safetensors" ]; then
  echo "smollm2-sbd: no adapter at $adapter yet; models/make_smollm2.sh trains it (see its header)" >&2
  exit 2
fi
gguf=$(scripts/fetch-smollm2.sh)
stamp=$(sha256sum "$adapter/adapter_model.safetensors" | cut -d' ' -f1)
k=()
[ "$name" = sbd ] && k=(--default-block-size 8)
# the NTP twin's adapter never saw <|mask|>: its folder gets the token (untrained, unused by NTP
# decoding) only because a model folder names one
[ "$name" = ntp ] && k=(--add-mask-token)
# QUANT (default "none int8"): fp32, int8 (8-bit MatMulNBits by blocks of 32, accuracy level 4, head
# and tied embedding included; verify: KL 0.003 nats, 100% decisive top-1, stage 3) and, opt-in, int4
# (MatMulNBits block 32, level 4): int4 NTP keeps 57.5% of 40 held-out problems against fp32's 85.0%
# (onnxruntime-genai's own int4 build of the same weights: 55.0%; stage-3 adapter, 2026-12-07) and
# fails verify's KL bound (0.352 nats against 0.1): a folder to measure speed with, not to ship.
for q in ${QUANT:-none int8}; do
  case $q in none) out=$dest/fp32 ;; int8|int4) out=$dest/$q ;; *) echo "smollm2-sbd: QUANT takes none, int8, int4 (got $q)" >&2; exit 2 ;; esac
  if [ -f "$out/.adapter-sha256" ] && [ "$(cat "$out/.adapter-sha256")" = "$stamp" ]; then
    continue
  fi
  rm -rf "$out"
  SETBLOCK_LORA_BASE=$gguf $py -m setblock_export export --checkpoint "$adapter" --out "$out" --quantize $q \
    --block-sizes 2 16 "${k[@]}"
  echo "$stamp" > "$out/.built-from-adapter"  # what it was exported from, verified or not (bench reads it)
  SETBLOCK_LORA_BASE=$gguf $py -m setblock_export verify --folder "$out" --checkpoint "$adapter"
  echo "$stamp" > "$out/.adapter-sha256"
done
# the folder built last (int8 with the default QUANT) is the one to try
echo "$dest: ${QUANT:-none int8} ready (none: fp32/): target/release/setblock generate --model $out --prompt '...'"
