#!/usr/bin/env bash
# Each stage of the whole experiment at 7B size on one GPU (issue 13, item 3), within about 8
# minutes of wall time: the dry run `experiments/issue205-dryrun.toml` (random Qwen2.5-7B-shaped
# bf16 weights, generated training sets of the real sizes and length distributions), timed stage
# by stage, and the whole run projected from the stages. Writes $OUT/scale_h200.json (or
# bench/results/ when OUT is unset) and $OUT/scale_run.log.
#
#   bash bench/scale.sh [--em-steps 30] [--benign-steps 12] [--coupling-steps 40] [--hf-steps 20]
#                       [--no-hf] [--budget-s 420]
#
# What is measured and what extrapolated (the JSON says which, stage by stage):
#   measured at full size: one extraction (extract/base: 12 personas x 240 questions, Method A
#     and Method B with 256-token greedy responses), on-policy generation (3 personas x 20
#     questions x 15, drawn lengths of mean 50), building the coupling set, marker eval (12 x 28
#     x 10 = 3,360 completions, drawn lengths of mean 50), model build;
#   measured on the first N optimizer steps, extrapolated to the full count (375 EM, 375 benign,
#     20 epochs of the coupling set): EM training, benign training, coupling training (the
#     median step time of steps 3..N times the steps, plus the task's measured fixed cost);
#   assumed: the other six checkpoints' extractions cost what the base's does (an adapter merge
#     more, which the marker eval's timing includes twice over); the analysis is timed with
#     .bench/bench_geometry when carried (the whole geometry family at full size on this
#     machine's CPUs), else left out of the projection and said so.
# GPU memory and utilisation: nvidia-smi every 0.5 s; per stage, its mean utilisation and peak
# memory over the task's start..finish (from the store's manifests).
# HF/PEFT beside pspace on the same rows (unless --no-hf): the first 16 x HF_STEPS rows of the
# EM set, one epoch each: `pspace train --model random:qwen2.5-7b` and bench/hf_train_rows.py
# (HF transformers + PEFT, every micro-batch padded to its longest row as the seed's trainer did).
#
# On the GPU machine, from the repository root, with the binaries built here (make setup):
#   run tool: command "bash bench/scale.sh", carry ["target/release/pspace",
#   "target/release/pspace-core"] (and ".bench" holding bench_geometry for the analysis).
# libtorch and python come from /opt/torch/.venv there (GPU.md); PSPACE_LIBTORCH_LIB overrides.
set -uo pipefail
cd "$(dirname "$0")/.."

em_steps=30 benign_steps=12 coupling_steps=40 hf_steps=20 hf=1 budget=420
while [ $# -gt 0 ]; do
  case "$1" in
    --em-steps) em_steps=$2; shift 2 ;;
    --benign-steps) benign_steps=$2; shift 2 ;;
    --coupling-steps) coupling_steps=$2; shift 2 ;;
    --hf-steps) hf_steps=$2; shift 2 ;;
    --no-hf) hf=0; shift ;;
    --budget-s) budget=$2; shift 2 ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "bench/scale.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

. bench/gpu_env.sh
work=$(mktemp -d)
log="$DEST/scale_run.log"
: > "$log"
say() { echo "$*" | tee -a "$log" >&2; }
started=$(date +%s)
left() { local l=$(( budget - ($(date +%s) - started) )); [ "$l" -lt 1 ] && l=1; echo "$l"; }

# GPU sampler: unix ms, utilisation %, memory used MiB.
( while true; do
    echo "$(date +%s%3N),$(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -i 0 2>/dev/null | tr -d ' ')"
    sleep 0.5
  done ) > "$work/smi.csv" 2>/dev/null &
sampler=$!
trap 'kill $sampler 2>/dev/null' EXIT

say "== data: pspace dryrun-data (6,000 + 6,000 rows, seed 205)"
t0=$(date +%s.%N)
"$BIN" dryrun-data --out experiments/data/dryrun --seed 205 > "$work/data.json" 2>> "$log" || { say "dryrun-data failed"; exit 1; }
t1=$(date +%s.%N)
echo "$t0 $t1" > "$work/data.time"
cat "$work/data.json" | tee -a "$log" >&2

# The dry-run spec with the training steps cut (the cut changes only those tasks' ids: a fresh
# store) and absolute data paths.
"$PY" - "$work/spec.toml" "$em_steps" "$benign_steps" "$coupling_steps" <<'PY'
import re, sys, os
out, em, benign, coupling = sys.argv[1], *sys.argv[2:5]
text = open("experiments/issue205-dryrun.toml").read()
root = os.path.abspath("experiments")
text = re.sub(r'"data/', f'"{root}/data/', text)
def cut(text, table, steps):
    head = f"[{table}]\n"
    i = text.index(head) + len(head)
    return text[:i] + f"max_steps = {steps}\n" + text[i:]
text = cut(text, "training.em", em)
text = cut(text, "training.benign", benign)
text = cut(text, "coupling", coupling)
open(out, "w").write(text)
PY

say "== pspace run (extract/base, marker_eval/E0_assistant and its inputs, train_benign), budget $(left) s"
timeout "$(left)" "$BIN" run "$work/spec.toml" --device cuda --store "$work/store" \
  --only extract/base --only marker_eval/E0_assistant --only train_benign/benign_sft \
  >> "$log" 2> "$work/run.err"
echo "rc=$?" >> "$log"
grep -v '^\s*$' "$work/run.err" | tail -n 40 >> "$log"

if [ "$hf" = 1 ] && [ "$(left)" -gt 60 ]; then
  rows=$(( 16 * hf_steps ))
  head -n "$rows" experiments/data/dryrun/em.jsonl > "$work/em_head.jsonl"
  say "== pspace train on the first $rows EM rows ($hf_steps steps), budget $(left) s"
  timeout "$(left)" "$BIN" train --model random:qwen2.5-7b --recipe em --device cuda \
    --data "$work/em_head.jsonl" --out "$work/pspace_train" >> "$log" 2>&1
  if [ "$(left)" -gt 40 ]; then
    say "== HF/PEFT on the same rows, budget $(left) s"
    timeout "$(left)" "$PY" bench/hf_train_rows.py --data "$work/em_head.jsonl" \
      --tokenizer engine/tests/fixtures/tiny-qwen2 --out "$work/hf_train.json" >> "$log" 2>&1
  fi
fi

if [ -x .bench/bench_geometry ] && [ "$(left)" -gt 30 ]; then
  say "== analysis: bench_geometry (full-size geometry family, 10,000 permutations, bootstrap 2000), budget $(left) s"
  timeout "$(left)" .bench/bench_geometry --bootstrap 2000 > "$work/analysis.json" 2>> "$log"
fi

kill $sampler 2>/dev/null
"$PY" bench/scale_summary.py --work "$work" --spec "$work/spec.toml" --out "$DEST/scale_h200.json" \
  --gpu "$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader -i 0 2>/dev/null)" \
  --cpus "$(nproc)" --wall "$(( $(date +%s) - started ))" 2>> "$log"
cat "$DEST/scale_h200.json"
