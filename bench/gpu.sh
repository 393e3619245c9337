#!/usr/bin/env bash
# Runs the HF/PEFT baseline and pspace's GPU benchmarks in one go on one GPU, and merges their JSON
# into one file with the ratios. Expects .bench/ to hold hf_baseline.py and the bench_* example
# binaries (see bench/README.md), and the GPU machine's torch at $TORCH_VENV.
set -uo pipefail
cd "$(dirname "$0")/.."
TORCH_VENV=${TORCH_VENV:-/opt/torch/.venv}
LIB=$(ls -d "$TORCH_VENV"/lib/python3*/site-packages/torch/lib | head -1)
export LD_LIBRARY_PATH="$LIB:${LD_LIBRARY_PATH:-}" PSPACE_LIBTORCH_LIB="$LIB"
DEST=${OUT:-bench/results}
mkdir -p "$DEST"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$DEST/gpu_name.txt"

run_step() { # name, command...
  local name=$1; shift
  echo "== $name"
  local t0=$(date +%s)
  "$@" > "$DEST/$name.json.tmp" 2> "$DEST/$name.log" && tail -n 1 "$DEST/$name.json.tmp" > "$DEST/$name.json"
  echo "   rc=$? in $(( $(date +%s) - t0 ))s: $(cat "$DEST/$name.json" 2>/dev/null)"
  rm -f "$DEST/$name.json.tmp"
  tail -n 3 "$DEST/$name.log"
}
[ "${SKIP_HF:-0}" = 1 ] || run_step hf_baseline env PYTHONUNBUFFERED=1 "$TORCH_VENV/bin/python" .bench/hf_baseline.py
for b in .bench/bench_*; do
  [ -x "$b" ] || continue
  run_step "$(basename "$b")" "$b" --device cuda ${BENCH_ARGS:-}
done
"$TORCH_VENV/bin/python" - "$DEST" <<'PY'
import glob, json, os, sys
dest = sys.argv[1]
merged = {"gpu": open(os.path.join(dest, "gpu_name.txt")).read().strip()}
for f in sorted(glob.glob(os.path.join(dest, "*.json"))):
    name = os.path.basename(f)[:-5]
    if name == "gpu_bench":
        continue
    try:
        merged[name] = json.load(open(f))
    except Exception as e:
        merged[name] = {"error": str(e)}
json.dump(merged, open(os.path.join(dest, "gpu_bench.json"), "w"), indent=1)
print(json.dumps(merged, indent=1))
PY
