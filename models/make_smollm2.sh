#!/usr/bin/env bash
# Trains the SmolLM2-135M-Instruct SBD model and its NTP twin (LoRA r16, same data, steps and seeds),
# side by side with one thread each, across sessions: each call trains for BUDGET_MIN minutes
# (finetune --time-limit: both stop with a checkpoint after the step that passes it), and copies each run's resumable state (adapter +
# optimizer + data cursor) and metrics to models/smollm2-135m-sbd/train/, which is committed. The
# next call restores them and resumes bit for bit. When both runs reach STEPS, their adapters land
# in models/smollm2-135m-sbd/adapters/{sbd,ntp}-stage1/ (committed).
# Stages 2 and 3, each run in turn (SBD needs more tokens than NTP, method doc section 2, and the
# twin gets the same steps so that the comparison stays the paper's): when a run's stage before is
# done, STAGE_STEPS (420) more steps from its adapter (finetune --init-adapter: a fresh AdamW, lr 5e-4
# with 10 warmup steps and a cosine, the documents the earlier stages did not reach), alone with 2
# threads; stage 2's adapter lands in adapters/RUN-stage2, stage 3's in adapters/RUN (committed;
# scripts/smollm2-sbd.sh exports it, or the newest finished stage until then), their resumable
# states in train/RUNn while they run (sbd2, sbd3, ntp2, ntp3).
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
# every run: the same base, LoRA, data, batches and seed
recipe=(--checkpoint "$gguf" --add-mask-token --lora-rank 16 --data "$work/mix/train.jsonl" --batch-size 4
  --seq-len 512 --warmup 10 --weight-decay 0 --checkpoint-every 10 --seed 0)
common=("${recipe[@]}" --steps "$steps" --lr 1e-3 --threads 1)
# train RUN DEST FINETUNE-ARGS...: one run, resumed from its committed state (train/RUN) and kept
# there while it is unfinished; a finished run's adapter lands in DEST (committed) and its state is
# dropped
train() {
  local name=$1 dest=$2 out="$work/$1"
  shift 2
  if [ -f "$dest/adapter_model.safetensors" ]; then
    echo "$name: trained ($dest); delete that folder to train it again"
    return
  fi
  if [ ! -f "$out/checkpoint/state.pt" ] && [ -f "$keep/$name/state.pt" ]; then  # restore a committed state
    mkdir -p "$out/checkpoint"
    cp "$keep/$name/state.pt" "$out/checkpoint/state.pt"
    cp "$keep/$name/metrics.jsonl" "$out/metrics.jsonl"
  fi
  local resume=()
  [ -f "$out/checkpoint/state.pt" ] && resume=(--resume)
  $py -m setblock_export finetune --out "$out" --time-limit "$budget" "$@" "${resume[@]}" > "$work/$name.log" 2>&1 \
    || { tail -n 5 "$work/$name.log"; return 1; }
  mkdir -p "$keep/$name"
  cp "$out/metrics.jsonl" "$keep/$name/metrics.jsonl"
  if [ -f "$out/adapter_model.safetensors" ]; then
    mkdir -p "$dest"
    find "$out" -maxdepth 1 -type f ! -name metrics.jsonl -exec cp {} "$dest"/ \;  # adapter, tokenizer, record
    rm -f "$keep/$name/state.pt"
  else
    cp "$out/checkpoint/state.pt" "$keep/$name/state.pt"
  fi
  echo "$name: $(tail -n 1 "$keep/$name/metrics.jsonl")"
}
adapters=models/smollm2-135m-sbd/adapters
train sbd "$adapters/sbd-stage1" --objective sbd "${common[@]}" &
sbd_pid=$!
train ntp "$adapters/ntp-stage1" --objective ntp "${common[@]}"
wait $sbd_pid
# later stages, alone with 2 threads, each from the adapter of the one before; the last one's adapter
# is adapters/RUN (the shipped adapters/sbd, the twin's adapters/ntp), the others' adapters/RUN-stageN
for run in sbd ntp; do
  prev=$run-stage1
  for stage in 2 3; do
    [ -f "$adapters/$prev/adapter_model.safetensors" ] || break
    dest=$run-stage$stage
    [ "$stage" = 3 ] && dest=$run
    train "$run$stage" "$adapters/$dest" --objective "$run" "${recipe[@]}" --steps "${STAGE_STEPS:-420}" --lr 5e-4 \
      --threads 2 --init-adapter "$adapters/$prev"
    prev=$dest
  done
done
