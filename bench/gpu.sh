#!/usr/bin/env bash
# The engine and training benchmarks with the HF transformers + PEFT baseline (`hf_baseline.py`)
# run first in the same call on the same GPU, merged into one JSON file with the ratios.
# Qwen2.5-7B-shaped random bf16 weights are built on the device; on a CPU, --tiny runs the tiny
# Qwen2 (the check that the benchmarks run; no baseline there).
#
#   bash bench/gpu.sh                                  # GPU machine: HF, engine, training, ratios
#   bash bench/gpu.sh --only train                     # HF, then the training benchmark alone
#   bash bench/gpu.sh --device cpu --tiny --no-hf      # anywhere
#   bash bench/gpu.sh -- --steps 4                     # after --: arguments for the binaries
#
# Binaries: target/release/examples/bench_{engine,train} where cargo exists (built here), else
# .bench/bench_{engine,train} carried to a machine without Rust; the baseline is
# .bench/hf_baseline.py or ../shared/tools/hf_baseline.py. libtorch: this checkout's .venv, or on
# the GPU machine the torch of $TORCH_VENV (default /opt/torch/.venv), whose python also runs the
# baseline. Writes $OUT/gpu_bench.json (bench/results/ when OUT is unset) and prints it.
set -uo pipefail
cd "$(dirname "$0")/.."

device=cuda tiny=() hf=1 only="engine train" passthrough=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --tiny) tiny=(--tiny); shift ;;
    --no-hf) hf=0; shift ;;
    --only) only=$2; shift 2 ;;
    --) shift; passthrough=("$@"); break ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "bench/gpu.sh: unknown argument '$1' (expected --device, --tiny, --no-hf, --only engine|train, or -- ARGS)" >&2; exit 2 ;;
  esac
done
[ "$device" = cpu ] && hf=0

python=python3
venv_lib=$(ls -d .venv/lib/python3*/site-packages/torch/lib 2>/dev/null | head -1 || true)
[ -n "$venv_lib" ] && export LD_LIBRARY_PATH="$venv_lib:$venv_lib/../../nvidia/cu13/lib:${LD_LIBRARY_PATH:-}"
if [ "$device" != cpu ]; then
  TORCH_VENV=${TORCH_VENV:-/opt/torch/.venv}
  lib=$(ls -d "$TORCH_VENV"/lib/python3*/site-packages/torch/lib 2>/dev/null | head -1 || true)
  if [ -n "$lib" ]; then
    export LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}" PSPACE_LIBTORCH_LIB="$lib"
    python="$TORCH_VENV/bin/python"
  fi
fi

bins=()
for name in $only; do
  if command -v cargo >/dev/null; then
    cargo build --release --example "bench_$name" -p pspace-engine >&2 || exit 1
    bins+=("target/release/examples/bench_$name")
  else
    bins+=(".bench/bench_$name")
  fi
done

DEST=${OUT:-bench/results}
mkdir -p "$DEST"
if [ "$device" = cpu ]; then
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores" > "$DEST/gpu_name.txt"
else
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$DEST/gpu_name.txt"
fi
cat "$DEST/gpu_name.txt"
rm -f "$DEST"/hf_baseline.json "$DEST"/bench_*.json

run_step() { # name, command...
  local name=$1; shift
  echo "== $name"
  local t0=$(date +%s)
  "$@" > "$DEST/$name.json.tmp" 2> "$DEST/$name.log" && tail -n 1 "$DEST/$name.json.tmp" > "$DEST/$name.json"
  echo "   rc=$? in $(( $(date +%s) - t0 ))s: $(cat "$DEST/$name.json" 2>/dev/null)"
  rm -f "$DEST/$name.json.tmp"
  tail -n 3 "$DEST/$name.log"
}
if [ "$hf" = 1 ]; then
  baseline=.bench/hf_baseline.py
  [ -f "$baseline" ] || baseline=../shared/tools/hf_baseline.py
  run_step hf_baseline env PYTHONUNBUFFERED=1 "$python" "$baseline"
fi
for b in "${bins[@]}"; do
  run_step "$(basename "$b")" "$b" --device "$device" "${tiny[@]}" "${passthrough[@]}"
done

"$python" - "$DEST" <<'PY'
import glob, json, os, sys
dest = sys.argv[1]
merged = {"machine": open(os.path.join(dest, "gpu_name.txt")).read().strip()}
for f in sorted(glob.glob(os.path.join(dest, "*.json"))):
    name = os.path.basename(f)[:-5]
    if name != "gpu_bench":
        try:
            merged[name] = json.load(open(f))
        except Exception as e:
            merged[name] = {"error": str(e)}
hf, engine, train = (merged.get(k) for k in ("hf_baseline", "bench_engine", "bench_train"))
ratios = {}
if hf and engine and "extract_tok_s" in engine:
    ratios["extract"] = round(engine["extract_tok_s"] / hf["extract_tok_s"], 2)
    for batch, tok_s in engine.get("gen_tok_s", {}).items():
        ratios[f"generate_b{batch}_vs_hf_b{hf['gen_batch']}"] = round(tok_s / hf["gen_tok_s"], 2)
if hf and train:
    for mode in ("nogc", "gc"):
        ours = train.get(f"train_tok_s_{mode}")
        if ours:
            ratios[f"train_{mode}"] = round(ours / hf[f"train_tok_s_{mode}"], 2)
if ratios:
    merged["ratio_vs_hf"] = ratios
json.dump(merged, open(os.path.join(dest, "gpu_bench.json"), "w"), indent=1)
print(json.dumps(merged, indent=1))
PY
