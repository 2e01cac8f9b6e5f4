#!/usr/bin/env bash
# Re-creates the bundled demo model (models/demo, SBD-trained) and its NTP-trained twin
# (models/demo-ntp) from nothing: task data -> BPE tokenizer + random Llama -> SBD and NTP
# training (same data, steps, seeds; run side by side, one thread each) -> export -> verify.
# Measured on the 2-core development machine: see models/demo/README.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh --python
py=.venv/bin/python
work=${WORK:-runs}
steps=${STEPS:-2500}
mkdir -p "$work"
[ -f "$work/data/train.jsonl" ] || $py -m setblock_export tasks --out "$work/data" --train-per-task 20000
[ -d "$work/init" ] || $py -m setblock_export init --data "$work/data/train.jsonl" --out "$work/init" \
  --hidden 256 --layers 4 --heads 8 --kv-heads 4 --intermediate 688 --max-positions 512 --seed 0
# stage 1: 2,500 steps at lr 1e-3 from the random init; stage 2: 1,000 steps at lr 3e-4 from stage 1
# (new seed, so new batches). Both objectives get exactly the same schedule.
stage1=(--data "$work/data/train.jsonl" --steps "$steps" --batch-size 32 --lr 1e-3 --warmup 100
  --checkpoint-every 250 --threads 1 --seed 0)
stage2=(--data "$work/data/train.jsonl" --steps "${STEPS2:-1000}" --batch-size 32 --lr 3e-4 --warmup 50
  --checkpoint-every 250 --threads 1 --seed 1)
# stage 3: 1,500 steps at lr 2e-4 from stage 2 (seed 2): closes the gap between SBD and NTP decoding
stage3=(--data "$work/data/train.jsonl" --steps "${STEPS3:-1500}" --batch-size 32 --lr 2e-4 --warmup 50
  --checkpoint-every 250 --threads 1 --seed 2)
run() { # objective start out args...
  local objective=$1 start=$2 out=$3
  shift 3
  if [ -f "$out/model.safetensors" ]; then return; fi
  local resume=()
  [ -d "$out/checkpoint" ] && resume=(--resume)
  $py -m setblock_export finetune --objective "$objective" --checkpoint "$start" --out "$out" "$@" "${resume[@]}"
}
both() { # objective
  run "$1" "$work/init" "$work/$1" "${stage1[@]}"
  run "$1" "$work/$1" "$work/$1-stage2" "${stage2[@]}"
  run "$1" "$work/$1-stage2" "$work/$1-stage3" "${stage3[@]}"
}
both sbd > "$work/sbd.log" 2>&1 &
sbd_pid=$!
both ntp 2>&1 | tee "$work/ntp.log"
wait $sbd_pid || { tail -n 5 "$work/sbd.log"; exit 1; }
for name in sbd ntp; do
  dest=models/demo$([ $name = ntp ] && echo -ntp || true)
  rm -rf "$dest"
  k=$([ $name = sbd ] && echo "--default-block-size 8" || true)
  # shellcheck disable=SC2086
  $py -m setblock_export export --checkpoint "$work/$name-stage3" --out "$dest" --block-sizes 2 16 --gammas 0.01 0.05 $k
  $py -m setblock_export verify --folder "$dest" --checkpoint "$work/$name-stage3"
done
