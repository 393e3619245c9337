#!/usr/bin/env bash
# Training throughput at 7B size on the dry run's length distributions (issue 13, item 4): the
# same rows trained three ways in one call on one GPU, on random Qwen2.5-7B-shaped bf16 weights:
#   pspace, padding-free steps (the default: each step's 16 rows packed back to back);
#   pspace --padded (each micro-batch of 4 padded to its longest row, as HF's Trainer does);
#   HF transformers + PEFT (bench/hf_train_rows.py: padded, as the seed's trainer ran).
# For the EM set (mean 264 tokens a row) and the benign set (mean 814, up to 2,048 after
# truncation): the first 16 x N rows of each, N optimizer steps. Writes $OUT/train_rows.json (or
# bench/results/train_rows_h200.json when OUT is unset): tokens/s after the first two steps
# (real tokens, not padding), the padding share, and the ratios on the same rows.
#
#   bash bench/train_rows.sh [--em-steps 24] [--benign-steps 10] [--no-hf] [--hf-benign]
#
# HF/PEFT runs on the EM rows only unless --hf-benign (its 7B model build costs about a minute).
#
# On the GPU machine (run tool, carry target/release/pspace and target/release/pspace-core);
# libtorch and python come from /opt/torch/.venv there (GPU.md); PSPACE_LIBTORCH_LIB overrides.
set -uo pipefail
cd "$(dirname "$0")/.."

em_steps=24 benign_steps=10 hf=1 hf_sets=" em " 
while [ $# -gt 0 ]; do
  case "$1" in
    --em-steps) em_steps=$2; shift 2 ;;
    --benign-steps) benign_steps=$2; shift 2 ;;
    --no-hf) hf=0; shift ;;
    --hf-benign) hf_sets=" em benign "; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "bench/train_rows.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

. bench/gpu_env.sh
work=$(mktemp -d)
log="$DEST/train_rows.log"
: > "$log"
say() { echo "$*" | tee -a "$log" >&2; }

"$BIN" dryrun-data --out experiments/data/dryrun --seed 205 >> "$log" 2>&1 || { say "dryrun-data failed"; exit 1; }
head -n $(( 16 * em_steps )) experiments/data/dryrun/em.jsonl > "$work/em.jsonl"
head -n $(( 16 * benign_steps )) experiments/data/dryrun/benign.jsonl > "$work/benign.jsonl"

for set in em benign; do
  for mode in padding_free padded; do
    flag=""
    [ "$mode" = padded ] && flag="--padded"
    say "== pspace train $set ($mode)"
    "$BIN" train --model random:qwen2.5-7b --recipe "$set" --device cuda $flag --allow-shortfall \
      --data "$work/$set.jsonl" --out "$work/pspace_${set}_$mode" >> "$log" 2>&1 || say "failed: rc $?"
  done
  if [ "$hf" = 1 ] && [[ "$hf_sets" == *" $set "* ]]; then
    say "== HF/PEFT $set"
    "$PY" bench/hf_train_rows.py --data "$work/$set.jsonl" --tokenizer engine/tests/fixtures/tiny-qwen2 \
      --max-len 2048 --out "$work/hf_$set.json" >> "$log" 2>&1 || say "failed: rc $?"
  fi
done

"$PY" - "$work" "$DEST" "$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader -i 0 2>/dev/null)" <<'PY'
import json, os, sys
work, dest, gpu = sys.argv[1:4]
def load(p):
    try:
        return json.load(open(p))
    except (OSError, ValueError):
        return None
out = {"what": "LoRA SFT throughput on the dry run's rows (random Qwen2.5-7B-shaped bf16 weights), "
               "real tokens per second after the first two optimizer steps, same rows for each",
       "command": "bash bench/train_rows.sh (device tool, kind nvidia-h200)", "gpu": gpu, "sets": {}}
for s in ["em", "benign"]:
    entry = {}
    for mode in ["padding_free", "padded"]:
        log = load(os.path.join(work, f"pspace_{s}_{mode}", "train_log.json"))
        if not log:
            continue
        steps = log["steps"]
        timed = steps[2:] if len(steps) > 4 else steps
        sec = sum(x["seconds"] for x in timed)
        entry[f"pspace_{mode}"] = {
            "steps": len(steps),
            "tokens_per_s_after_2": round(sum(x["tokens"] for x in timed) / sec) if sec else None,
            "step_s_mean_after_2": round(sec / len(timed), 4) if timed else None,
            "first_losses": [round(x["loss"], 4) for x in steps[:3]],
        }
    hf = load(os.path.join(work, f"hf_{s}.json"))
    if hf:
        entry["hf_peft_padded"] = hf
    tps = {k: v.get("tokens_per_s_after_2") for k, v in entry.items()}
    if tps.get("pspace_padding_free") and tps.get("pspace_padded"):
        entry["ratio_padding_free_vs_padded"] = round(tps["pspace_padding_free"] / tps["pspace_padded"], 2)
    if tps.get("pspace_padding_free") and tps.get("hf_peft_padded"):
        entry["ratio_padding_free_vs_hf"] = round(tps["pspace_padding_free"] / tps["hf_peft_padded"], 2)
    if tps.get("pspace_padded") and tps.get("hf_peft_padded"):
        entry["ratio_padded_vs_hf"] = round(tps["pspace_padded"] / tps["hf_peft_padded"], 2)
    out["sets"][s] = entry
path = os.path.join(dest, "train_rows_h200.json" if dest.endswith("bench/results") else "train_rows.json")
json.dump(out, open(path, "w"), indent=1)
print(json.dumps(out, indent=1))
PY
