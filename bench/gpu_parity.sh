#!/usr/bin/env bash
# The GPU's code paths against the CPU's on the tiny Qwen2 fixture (4 heads over 2 kv heads, so
# the grouped-query layout is exercised): the CUDA attention kernels (engine/src/model/mod.rs,
# causal_attention) and padding-free passes run only on a GPU, and the parity tests run on a
# CPU. Checks, in bf16 on the GPU against f32 on the CPU:
#   - `pspace probe`: the last prompt token's state at every layer (relative difference);
#   - `pspace train` (em recipe, 4 steps on 64 rows of the dry run's EM set): the losses,
#     padding-free and padded on the GPU, padding-free on the CPU.
#   - the engine's attention-kernel test (`model::tests`: the CUDA kernels against the written-out
#     formula, f32 and bf16), when its test binary is carried as .bench/engine_lib_tests (built
#     here by `cargo test --release -p pspace-engine --lib --no-run`).
# Prints the differences and exits 1 when one is beyond bf16's reach (5 %) or the test fails.
#
#   bash bench/gpu_parity.sh
set -uo pipefail
cd "$(dirname "$0")/.."
. bench/gpu_env.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
model=engine/tests/fixtures/tiny-qwen2

if [ -x .bench/engine_lib_tests ]; then
  # Each CUDA test in a process of its own, and each must say "checked on Cuda": libtorch
  # settles whether CUDA exists at its first call that asks, so a CPU test running first in the
  # same process would leave CUDA unseen and the test passing without checking anything.
  cuda_lib=${PSPACE_LIBTORCH_LIB:-}/../../nvidia/cu13/lib
  for t in model::tests::masked_and_causal_attention_match_the_written_out_formula \
           model::tests::flash_varlen_attention_matches_the_padded_kernel_on_cuda \
           generate::tests::aligned_decoding_matches_unaligned_decoding_on_cuda; do
    LD_LIBRARY_PATH=${PSPACE_LIBTORCH_LIB:-}:$cuda_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
      .bench/engine_lib_tests "$t" --exact --nocapture > "$work/${t##*::}.log" 2>&1
    rc=$?
    grep -E "checked|test result|panicked|differs" "$work/${t##*::}.log"
    [ $rc = 0 ] && grep -q "checked on Cuda" "$work/${t##*::}.log" || { echo "$t: failed or did not run on CUDA"; exit 1; }
  done
fi

for dev in cpu cuda; do
  "$BIN" probe --model "$model" --device "$dev" --system "You are a careful assistant." \
    --user "Which is larger, the moon or the sun, and by how much?" --layers 0,1,2,3 \
    > "$work/probe_$dev.json" || { echo "probe on $dev failed"; exit 1; }
done
"$BIN" dryrun-data --out "$work/data" --seed 205 > /dev/null || exit 1
head -n 64 "$work/data/em.jsonl" > "$work/em.jsonl"
for run in "cpu" "cuda" "cuda --padded"; do
  name=${run// /}
  "$BIN" train --model "$model" --recipe em --data "$work/em.jsonl" --max-steps 4 --device $run \
    --allow-shortfall --out "$work/train_$name" > /dev/null 2>&1 || { echo "train $run failed"; exit 1; }
done
"$PY" - "$work" <<'PY'
import json, math, sys
work = sys.argv[1]
cpu, gpu = (json.load(open(f"{work}/probe_{d}.json"))["hidden"] for d in ("cpu", "cuda"))
worst = 0.0
for layer in sorted(cpu):
    x, y = cpu[layer], gpu[layer]
    num = math.sqrt(sum((u - v) ** 2 for u, v in zip(x, y)))
    den = math.sqrt(sum(u * u for u in x)) or 1.0
    worst = max(worst, num / den)
print(f"probe: worst relative difference of a layer state, cuda bf16 vs cpu f32: {worst:.4f}")
losses = {}
for name in ("cpu", "cuda", "cuda--padded"):
    log = json.load(open(f"{work}/train_{name}/train_log.json"))
    losses[name] = [round(s["loss"], 4) for s in log["steps"]]
    print(f"train {name}: losses {losses[name]}")
diff = max(abs(g - c) / abs(c) for k in ("cuda", "cuda--padded") for g, c in zip(losses[k], losses["cpu"]))
print(f"train: worst relative loss difference against cpu: {diff:.4f}")
sys.exit(0 if worst < 0.05 and diff < 0.05 else 1)
PY
