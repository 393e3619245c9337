#!/usr/bin/env bash
# Kernel-level traces of a packed 7B LoRA training step and of batched greedy decoding, on the
# GPU machine (device tool): bench_train / bench_engine --kernel-trace, totalled by
# bench/kernel_summary.py (GPU time by kernel, by launching operator, by autograd node, and the
# GPU's idle time between kernels). The traces are gzipped into $DEST.
#
# Usage: BENCH_BIN=.bench/gpubin bash bench/kernel_profile.sh [--train "16 264"] [--decode 512]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/gpu_env.sh
export LD_LIBRARY_PATH="$PSPACE_LIBTORCH_LIB:$PSPACE_LIBTORCH_LIB/../../nvidia/cu13/lib:${LD_LIBRARY_PATH:-}"
BB=${BENCH_BIN:-target/release/examples}
train="16 264"; decode=512
while [ $# -gt 0 ]; do
  case "$1" in
    --train) train="$2"; shift 2 ;;
    --decode) decode="$2"; shift 2 ;;
    *) echo "kernel_profile.sh: unknown argument $1 (expected --train \"B T\" or --decode B)" >&2; exit 2 ;;
  esac
done
read -r b t <<<"$train"
if [ "$b" != 0 ]; then
  "$BB/bench_train" --device cuda --packed --no-recompute --batch "$b" --seq "$t" --steps 4 \
    --kernel-trace "$DEST/trace_train_${b}x${t}.json" > "$DEST/bench_train_${b}x${t}.json"
  $PY bench/kernel_summary.py "$DEST/trace_train_${b}x${t}.json" --steps 3 --top 45 \
    --json "$DEST/kernels_train_${b}x${t}.json" | tee "$DEST/kernels_train_${b}x${t}.txt"
  gzip -f "$DEST/trace_train_${b}x${t}.json"
fi
if [ "$decode" != 0 ]; then
  "$BB/bench_engine" --device cuda --gen-batches "$decode" --new-tokens 64 \
    --kernel-trace "$DEST/trace_decode_${decode}.json" > "$DEST/bench_engine_decode_${decode}.json"
  $PY bench/kernel_summary.py "$DEST/trace_decode_${decode}.json" --steps 32 --top 30 \
    --json "$DEST/kernels_decode_${decode}.json" | tee "$DEST/kernels_decode_${decode}.txt"
  gzip -f "$DEST/trace_decode_${decode}.json"
fi
