#!/usr/bin/env bash
# The engine benchmark: forward throughput with hidden-state capture (batch 32 x 256) and batched
# sampling (64 and 256 prompts x 128 tokens, 256 new tokens) on Qwen2.5-7B-shaped random bf16
# weights built on the GPU, or a tiny model on the CPU (--tiny). Prints one JSON object and
# writes it to $OUT/engine_bench.json (bench/results/ when OUT is unset).
#
#   bench/engine_bench.sh --device cpu --tiny              # anywhere (the check that it runs)
#   bench/engine_bench.sh --device cuda --hf-baseline      # GPU machine: HF first, same call, ratios
#
# Other arguments go to the benchmark binary (e.g. --gen-batches 64,256,512 --new-tokens 256).
# Where cargo exists the binary is built (cargo build --release --example bench_engine -p
# pspace-engine); on a machine without Rust it is .bench/bench_engine, carried there.
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
  cargo build --release --example bench_engine -p pspace-engine >&2
  bin=target/release/examples/bench_engine
else
  bin=.bench/bench_engine
fi

python=python3
# libtorch: this checkout's .venv (CPU) or the GPU machine's torch venv.
venv_lib=$(ls -d .venv/lib/python3*/site-packages/torch/lib 2>/dev/null | head -1 || true)
if [ -n "$venv_lib" ]; then
  export LD_LIBRARY_PATH="$venv_lib:$venv_lib/../../nvidia/cu13/lib:${LD_LIBRARY_PATH:-}"
fi
if [ "$device" != cpu ]; then
  # The GPU machine's libtorch (tch 0.24 wants torch 2.11); CUDA is dlopen'ed from there.
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

echo "== pspace engine: $bin ${args[*]}" >&2
"$bin" "${args[@]}" | tail -n 1 > "$work/engine.json"

"$python" - "$work" "$dest/engine_bench.json" <<'PY'
import json, os, sys
work, dest = sys.argv[1], sys.argv[2]
engine = json.load(open(os.path.join(work, "engine.json")))
result = {"engine": engine}
hf_path = os.path.join(work, "hf_baseline.json")
if os.path.exists(hf_path):
    hf = json.load(open(hf_path))
    result["hf_baseline"] = hf
    ratios = {"extract": round(engine["extract_tok_s"] / hf["extract_tok_s"], 2)}
    for batch, tok_s in engine.get("gen_tok_s", {}).items():
        ratios[f"generate_b{batch}_vs_hf_b{hf['gen_batch']}"] = round(tok_s / hf["gen_tok_s"], 2)
    result["ratio_vs_hf"] = ratios
json.dump(result, open(dest, "w"), indent=1)
print(json.dumps(result))
PY
