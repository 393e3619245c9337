#!/usr/bin/env bash
# Same workload, two builds, alternating in one call on one GPU: packed 7B LoRA training steps
# (bench_train --packed) and batched decoding (bench_engine), each build run `--rounds` times.
# Prints one line per run and writes engine_ab.json (runs and per-build medians) into $DEST.
#
# Usage: bash bench/engine_ab.sh BASE_DIR NEW_DIR [--rounds 2] [--train "16 264,32 350"]
#        [--decode 512] [--new-tokens 256]
#   BASE_DIR, NEW_DIR: folders holding bench_train and bench_engine (built from two commits).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/gpu_env.sh
export LD_LIBRARY_PATH="$PSPACE_LIBTORCH_LIB:$PSPACE_LIBTORCH_LIB/../../nvidia/cu13/lib:${LD_LIBRARY_PATH:-}"
base=$1; new=$2; shift 2
rounds=2; train="16 264,32 350"; decode=512; new_tokens=256
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --train) train=$2; shift 2 ;;
    --decode) decode=$2; shift 2 ;;
    --new-tokens) new_tokens=$2; shift 2 ;;
    *) echo "engine_ab.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
runs="$DEST/engine_ab_runs.jsonl"; : > "$runs"
IFS=, read -ra shapes <<<"$train"
for r in $(seq "$rounds"); do
  for dir in "$base" "$new"; do
    for shape in "${shapes[@]}"; do
      read -r b t <<<"$shape"
      line=$("$dir/bench_train" --device cuda --packed --no-recompute --batch "$b" --seq "$t" --steps 10 2>/dev/null | tail -1)
      $PY -c 'import json,sys; d=json.loads(sys.argv[1]); n=d["detail_nogc"]; print(json.dumps({"build":sys.argv[2],"round":int(sys.argv[3]),"what":"train %sx%s"%(n["batch"],n["seq"]),"step_s":n["step_s"],"tok_s":n["tok_s"],"loss_last":n["losses"][-1]}))' "$line" "$dir" "$r" | tee -a "$runs"
    done
    if [ "$decode" != 0 ]; then
      line=$("$dir/bench_engine" --device cuda --gen-batches "$decode" --new-tokens "$new_tokens" 2>/dev/null | tail -1)
      $PY -c 'import json,sys; d=json.loads(sys.argv[1]); print(json.dumps({"build":sys.argv[2],"round":int(sys.argv[3]),"what":"decode batch %s, 128 + %s tokens"%(sys.argv[4],d["gen_new_tokens"]),"tok_s":d["gen_tok_s"][sys.argv[4]],"extract_tok_s":d["extract_tok_s"]}))' "$line" "$dir" "$r" "$decode" | tee -a "$runs"
    fi
  done
done
$PY - "$runs" "$DEST/engine_ab.json" "$base" "$new" <<'PY'
import json, statistics, sys, subprocess
runs = [json.loads(l) for l in open(sys.argv[1])]
out = {"gpu": subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip().splitlines()[0],
       "base": sys.argv[3], "new": sys.argv[4], "runs": runs, "medians": {}}
for what in sorted({r["what"] for r in runs}):
    m = {}
    for build in (sys.argv[3], sys.argv[4]):
        rs = [r for r in runs if r["what"] == what and r["build"] == build]
        m[build] = {k: statistics.median(r[k] for r in rs) for k in ("tok_s", "step_s") if k in rs[0]}
    m["new_over_base_tok_s"] = round(m[sys.argv[4]]["tok_s"] / m[sys.argv[3]]["tok_s"], 3)
    out["medians"][what] = m
    print(what, json.dumps(m))
json.dump(out, open(sys.argv[2], "w"), indent=1)
PY
