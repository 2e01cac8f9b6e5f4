#!/usr/bin/env bash
# The GPU check of the fine-tuning loop, one prepared script for the device machine (under 10 minutes):
#   1. bench/gpu_checks.py: compiled FlexAttention vs SDPA + dense mask on CUDA, loss and gradients;
#   2. a short SBD LoRA fine-tune of SmolLM2-135M-Instruct on CUDA (bf16 autocast and FlexAttention,
#      the defaults there; packed rows of 1024 tokens), then its clean tokens/s from metrics.jsonl.
# The device machine has torch, transformers, peft and onnx but no network. The GGUF (93 MB) is
# over the 64 MiB a call may carry, so it travels in two parts made here beforehand:
#   split -b 48M .setblock/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf .setblock/gpu/part-
# call 1 carries .setblock/gpu/part-aa and runs `true`; call 2 (machine still warm) carries
# .setblock/gpu/part-ab and runs this script, which joins the parts and checks the sha256.
# Written for the task's device; it has not run yet (no machine was lent to the session that wrote it).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/export${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
$py - <<'PY'
import importlib, sys
missing = [m for m in ("torch", "transformers", "peft", "tqdm", "gguf", "safetensors") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_finetune: missing Python packages {missing}")
import torch
assert torch.cuda.is_available(), "gpu_finetune: no CUDA device"
print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PY
$py bench/gpu_checks.py
gguf=.setblock/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$gguf" ]; then
  mkdir -p .setblock/smollm2
  cat .setblock/gpu/part-* > "$gguf"
fi
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $gguf" | sha256sum -c --quiet -
work=$(mktemp -d)
$py -m setblock_export tasks --out "$work/data" --train-per-task 3000 --test-per-task 1 --val-per-task 1
$py -m setblock_export finetune --checkpoint "$gguf" --add-mask-token --data "$work/data/train.jsonl" \
  --out "$work/out" --steps "${STEPS:-40}" --batch-size 16 --seq-len 1024 --lora-rank 16 --lr 3e-4 --warmup 5 \
  --device cuda --checkpoint-every 1000
$py - "$work/out/metrics.jsonl" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])][3:]  # the first steps compile the kernels
tok, sec = sum(r["clean_tokens"] for r in recs), sum(r["seconds"] for r in recs)
print(f"SmolLM2-135M SBD LoRA r16, bf16 + FlexAttention on CUDA: {tok / sec:.0f} clean tokens/s "
      f"over {len(recs)} steps; loss {recs[0]['loss']:.3f} -> {recs[-1]['loss']:.3f}")
PY
