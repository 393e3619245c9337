#!/usr/bin/env bash
# The LoRA SFT benchmark: optimizer steps on Qwen2.5-7B-shaped random bf16 weights built on the
# GPU (or the tiny Qwen2 on the CPU with --tiny), LoRA r=32 on 7 projections, batch 4 x 512,
# without and with activation recomputation; tokens/s and peak memory of each. Prints one JSON
# object and writes it to $OUT/train_bench.json (bench/results/ when OUT is unset).
#
#   bench/train_bench.sh --device cpu --tiny              # anywhere (the check that it runs)
#   bench/train_bench.sh --device cuda --hf-baseline      # GPU machine: HF/PEFT first, same call, ratios
#
# Other arguments go to the benchmark binary (--steps N --batch B --seq T). Where cargo exists the
# binary is built (cargo build --release --example bench_train -p pspace-engine); on a machine
# without Rust it is .bench/bench_train, carried there.
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
hf=0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; args+=(--device "$2"); shift 2 ;;
    --hf-baseline) hf=1; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
case " ${args[*]-} " in *" --device "*) ;; *) args+=(--device "$device") ;; esac

if command -v cargo >/dev/null; then
  cargo build --release --example bench_train -p pspace-engine >&2
  bin=target/release/examples/bench_train
else
  bin=.bench/bench_train
fi

python=python3
venv_lib=$(ls -d .venv/lib/python3*/site-packages/torch/lib 2>/dev/null | head -1 || true)
if [ -n "$venv_lib" ]; then
  export LD_LIBRARY_PATH="$venv_lib:$venv_lib/../../nvidia/cu13/lib:${LD_LIBRARY_PATH:-}"
fi
if [ "$device" != cpu ]; then
  TORCH_VENV=${TORCH_VENV:-/opt/torch/.venv}
  lib=$(ls -d "$TORCH_VENV"/lib/python3*/site-packages/torch/lib 2>/dev/null | head -1 || true)
  if [ -n "$lib" ]; then
    export LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}" PSPACE_LIBTORCH_LIB="$lib"
    python="$TORCH_VENV/bin/python"
  fi
fi

dest=${OUT:-bench/results}
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ "$hf" = 1 ]; then
  baseline=.bench/hf_baseline.py
  [ -f "$baseline" ] || baseline=../shared/tools/hf_baseline.py
  echo "== HF baseline ($baseline)" >&2
  OUT="$work" PYTHONUNBUFFERED=1 "$python" "$baseline" >&2
fi

echo "== pspace training: $bin ${args[*]}" >&2
"$bin" "${args[@]}" | tail -n 1 > "$work/train.json"

"$python" - "$work" "$dest/train_bench.json" <<'PY'
import json, os, sys
work, dest = sys.argv[1], sys.argv[2]
train = json.load(open(os.path.join(work, "train.json")))
result = {"train": train}
hf_path = os.path.join(work, "hf_baseline.json")
if os.path.exists(hf_path):
    hf = json.load(open(hf_path))
    result["hf_baseline"] = hf
    result["ratio_vs_hf"] = {
        key: round(train[f"train_tok_s_{key}"] / hf[f"train_tok_s_{key}"], 2)
        for key in ("nogc", "gc")
        if train.get(f"train_tok_s_{key}") and hf.get(f"train_tok_s_{key}")
    }
json.dump(result, open(dest, "w"), indent=1)
print(json.dumps(result))
PY
