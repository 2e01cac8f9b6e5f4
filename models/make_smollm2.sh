#!/usr/bin/env bash
# Trains the SmolLM2-135M-Instruct SBD model and its NTP twin (LoRA r16, same data, steps and seeds),
# side by side with one thread each, across sessions: each call trains for BUDGET_MIN minutes
# (finetune --time-limit: both stop with a checkpoint after the step that passes it), and copies each run's resumable state (adapter +
# optimizer + data cursor) and metrics to models/smollm2-135m-sbd/train/, which is committed. The
# next call restores them and resumes bit for bit. When both runs reach STEPS, their adapters land
# in models/smollm2-135m-sbd/adapters/{sbd-stage1,ntp}/ (committed).
# Stage 2 (SBD only; SBD needs more tokens than NTP, method doc section 2): when stage 1 is done,
# STAGE2_STEPS (420) more steps from the stage-1 adapter (finetune --init-adapter: a fresh AdamW,
# lr 5e-4 with 10 warmup steps and a cosine, the documents stage 1 did not reach), alone with 2
# threads; its adapter lands in adapters/sbd (committed; scripts/smollm2-sbd.sh exports it), its
# resumable state in train/sbd2 while it runs.
#   BUDGET_MIN=100 models/make_smollm2.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh --python
py=.venv/bin/python
work=${WORK:-runs/smollm2}
keep=models/smollm2-135m-sbd/train
budget=${BUDGET_MIN:-100}
steps=${STEPS:-240}
gguf=$(scripts/fetch-smollm2.sh)
mkdir -p "$work" "$keep"
if [ ! -f "$work/mix/train.jsonl" ]; then  # the base model's own answers are generated once, then committed
  answers=()
  [ -f "$keep/general.jsonl" ] && answers=(--general-answers "$keep/general.jsonl")
  $py -m setblock_export mix --checkpoint "$gguf" --out "$work/mix" "${answers[@]}"
fi
[ -f "$keep/general.jsonl" ] || cp "$work/mix/general.jsonl" "$keep/general.jsonl"
if [ ! -f "$keep/mix.json" ]; then
  cp "$work/mix/mix.json" "$keep/mix.json"
elif ! cmp -s "$work/mix/mix.json" "$keep/mix.json"; then
  echo "make_smollm2: the rebuilt mix differs from $keep/mix.json (the one training started on)" >&2
  exit 2
fi
common=(--checkpoint "$gguf" --add-mask-token --lora-rank 16 --data "$work/mix/train.jsonl" --steps "$steps"
  --batch-size 4 --seq-len 512 --lr 1e-3 --warmup 10 --weight-decay 0 --checkpoint-every 10 --seed 0
  --threads 1)
adapter_dir() { [ "$1" = sbd ] && echo models/smollm2-135m-sbd/adapters/sbd-stage1 || echo "models/smollm2-135m-sbd/adapters/$1"; }
run() { # objective
  local name=$1 out="$work/$1"
  if [ -f "$out/adapter_model.safetensors" ]; then return; fi
  if [ -f "$(adapter_dir "$name")/adapter_model.safetensors" ]; then  # finished and committed
    echo "$name: trained ($(adapter_dir "$name")); delete that folder to train it again"
    return
  fi
  if [ ! -f "$out/checkpoint/state.pt" ] && [ -f "$keep/$name/state.pt" ]; then  # restore a committed state
    mkdir -p "$out/checkpoint"
    cp "$keep/$name/state.pt" "$out/checkpoint/state.pt"
    cp "$keep/$name/metrics.jsonl" "$out/metrics.jsonl"
  fi
  local resume=()
  [ -f "$out/checkpoint/state.pt" ] && resume=(--resume)
  $py -m setblock_export finetune --objective "$name" --out "$out" --time-limit "$budget" \
    "${common[@]}" "${resume[@]}"
}
run sbd > "$work/sbd.log" 2>&1 &
sbd_pid=$!
run ntp > "$work/ntp.log" 2>&1
wait $sbd_pid || { tail -n 5 "$work/sbd.log"; exit 1; }
for name in sbd ntp; do
  out="$work/$name"
  mkdir -p "$keep/$name"
  [ -f "$out/checkpoint/state.pt" ] && cp "$out/checkpoint/state.pt" "$keep/$name/state.pt"
  [ -f "$out/metrics.jsonl" ] && cp "$out/metrics.jsonl" "$keep/$name/metrics.jsonl"
  if [ -f "$out/adapter_model.safetensors" ]; then
    dest=$(adapter_dir "$name")
    mkdir -p "$dest"
    find "$out" -maxdepth 1 -type f ! -name metrics.jsonl -exec cp {} "$dest"/ \;  # adapter, tokenizer, record
  fi
  echo "$name: $(tail -n 1 "$keep/$name/metrics.jsonl" 2>/dev/null)"
done
stage1=$(adapter_dir sbd)
final=models/smollm2-135m-sbd/adapters/sbd
out=$work/sbd2
if [ -f "$final/adapter_model.safetensors" ]; then
  echo "sbd stage 2: trained ($final); delete that folder to train it again"
elif [ -f "$stage1/adapter_model.safetensors" ]; then
  if [ ! -f "$out/checkpoint/state.pt" ] && [ -f "$keep/sbd2/state.pt" ]; then
    mkdir -p "$out/checkpoint"
    cp "$keep/sbd2/state.pt" "$out/checkpoint/state.pt"
    cp "$keep/sbd2/metrics.jsonl" "$out/metrics.jsonl"
  fi
  resume=()
  [ -f "$out/checkpoint/state.pt" ] && resume=(--resume)
  stage2=(--checkpoint "$gguf" --add-mask-token --lora-rank 16 --data "$work/mix/train.jsonl"
    --steps "${STAGE2_STEPS:-420}" --batch-size 4 --seq-len 512 --lr 5e-4 --warmup 10 --weight-decay 0
    --checkpoint-every 10 --seed 0 --threads 2 --init-adapter "$stage1")
  $py -m setblock_export finetune --objective sbd --out "$out" --time-limit "$budget" "${stage2[@]}" \
    "${resume[@]}" > "$work/sbd2.log" 2>&1 || { tail -n 5 "$work/sbd2.log"; exit 1; }
  mkdir -p "$keep/sbd2"
  cp "$out/metrics.jsonl" "$keep/sbd2/metrics.jsonl"
  if [ -f "$out/adapter_model.safetensors" ]; then
    mkdir -p "$final"
    find "$out" -maxdepth 1 -type f ! -name metrics.jsonl -exec cp {} "$final"/ \;
    rm -f "$keep/sbd2/state.pt"  # finished: the adapter is what is kept
  else
    cp "$out/checkpoint/state.pt" "$keep/sbd2/state.pt"
  fi
  echo "sbd stage 2: $(tail -n 1 "$keep/sbd2/metrics.jsonl")"
fi
