#!/usr/bin/env bash
# Where a 7B LoRA training step's time goes (issue 13, item 4): the phase table of
# PSPACE_TRAIN_PROFILE (engine/src/train/profile.rs: forward, loss, backward, clipping, AdamW;
# for each, the host's time to issue its work and the time until the device finished it) on
#   - the dry run's EM rows (padding-free, the default) and its benign rows;
#   - bench_train's uniform batches of about the same tokens a step (16 x 264, as EM's mean
#     step), and its 4 x 512 (hf_baseline.py's workload), when .bench/bench_train is carried.
# Random Qwen2.5-7B-shaped bf16 weights built on the device. The profile waits for the device at
# each phase's end, so its steps are a little slower than unprofiled ones.
#
#   bash bench/train_profile.sh [--em-steps 12] [--benign-steps 6] [--sets "em benign"]
#                               [--shapes "16x264 4x512"] [--packed]
#
# --packed runs bench_train's rows back to back without padding (the padding-free path).
#
# Writes $OUT/train_profile.log (or bench/results/ when OUT is unset). Needs a CUDA GPU (the GPU
# machine); exits 1 when a training or benchmark fails, with its last lines.
set -uo pipefail
cd "$(dirname "$0")/.."

em_steps=12 benign_steps=6 sets="em benign" shapes="16x264 4x512" packed="" failed=0
while [ $# -gt 0 ]; do
  case "$1" in
    --em-steps) em_steps=$2; shift 2 ;;
    --benign-steps) benign_steps=$2; shift 2 ;;
    --sets) sets=$2; shift 2 ;;
    --shapes) shapes=$2; shift 2 ;;
    --packed) packed=--packed; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "bench/train_profile.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

. bench/gpu_env.sh
# bench_train links libtorch directly (pspace finds it through PSPACE_LIBTORCH_LIB).
export LD_LIBRARY_PATH=${PSPACE_LIBTORCH_LIB:-}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
work=$(mktemp -d)
log="$DEST/train_profile.log"
: > "$log"
say() { echo "$*" | tee -a "$log" >&2; }

if [ -n "$sets" ]; then
  "$BIN" dryrun-data --out experiments/data/dryrun --seed 205 > /dev/null 2>> "$log" || { say "dryrun-data failed"; exit 1; }
  head -n $(( 16 * em_steps )) experiments/data/dryrun/em.jsonl > "$work/em.jsonl"
  head -n $(( 16 * benign_steps )) experiments/data/dryrun/benign.jsonl > "$work/benign.jsonl"
fi

for set in $sets; do
  say "== pspace train $set (padding-free), PSPACE_TRAIN_PROFILE=${PSPACE_TRAIN_PROFILE:-1}${PYTORCH_CUDA_ALLOC_CONF:+, PYTORCH_CUDA_ALLOC_CONF=$PYTORCH_CUDA_ALLOC_CONF}"
  PSPACE_TRAIN_PROFILE=${PSPACE_TRAIN_PROFILE:-1} "$BIN" train --model random:qwen2.5-7b --recipe "$set" --device cuda \
    --allow-shortfall --data "$work/$set.jsonl" --out "$work/pspace_$set" > "$work/$set.out" 2>&1 \
    || { say "failed: rc $?"; tail -n 3 "$work/$set.out" | tee -a "$log" >&2; failed=1; }
  grep -A 20 "training profile" "$work/$set.out" | tee -a "$log" >&2
  grep -iE "tok/s|tokens/s" "$work/$set.out" | tail -3 | tee -a "$log" >&2
done

if [ -x .bench/bench_train ]; then
  for shape in $shapes; do
    set -- ${shape/x/ }
    say "== bench_train --batch $1 --seq $2 $packed (uniform, every token a label), PSPACE_TRAIN_PROFILE=${PSPACE_TRAIN_PROFILE:-1}"
    PSPACE_TRAIN_PROFILE=${PSPACE_TRAIN_PROFILE:-1} .bench/bench_train --device cuda --batch "$1" --seq "$2" --steps 8 $packed --no-recompute \
      > "$work/bench_$1x$2.json" 2>> "$log" || { say "failed: rc $?"; failed=1; }
    "$PY" - "$work/bench_$1x$2.json" <<'PY' | tee -a "$log" >&2
import json, sys
d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
for key in ("nogc",):
    detail = d.get(f"detail_{key}", {})
    print(f"{key}: {detail.get('tok_s')} tok/s, step {detail.get('step_s')} s, forward {detail.get('forward_s')} s")
    print(detail.get("profile") or "")
PY
  done
fi
rm -rf "$work"
exit "$failed"
