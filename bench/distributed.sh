#!/usr/bin/env bash
# The distributed runtime on one machine's GPUs: `pspace coordinator` and one `pspace worker`
# per GPU run the tiny spec with 4 seeds (64 tasks), first with 1 worker on GPU 0, then with one
# worker per GPU, each into a fresh store; prints the wall time of each (start to the
# coordinator's `done:` line) as JSON lines and writes them to $OUT/distributed.json.
#
#   bash bench/distributed.sh [N_GPUS]        # default: every visible GPU (nvidia-smi)
#
# On the GPU machines libtorch comes from their torch (GPU.md): PSPACE_LIBTORCH_LIB defaults to it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PSPACE_LIBTORCH_LIB=${PSPACE_LIBTORCH_LIB:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}
export PSPACE_HEARTBEAT_MS=500 PSPACE_LEASE_MS=3000
BIN=target/release/pspace
OUT=${OUT:-$(mktemp -d)}
GPUS=${1:-$(nvidia-smi -L 2>/dev/null | wc -l)}
work=$(mktemp -d)
sed -e "s|\"../../|\"$PWD/|g" -e 's/seeds = \[42\]/seeds = [42, 7, 11, 13]/' tests/data/tiny_run.toml > "$work/tiny4.toml"

run() { # $1 = number of workers (GPUs 0..$1-1)
  local n=$1 port=$((50200 + $1)) store="$work/store$1"
  local t0 t1
  t0=$(date +%s.%N)
  $BIN coordinator "$work/tiny4.toml" --store "$store" --listen "127.0.0.1:$port" \
    > "$OUT/coordinator-$n.out" 2> "$OUT/coordinator-$n.err" &
  local coordinator=$!
  for g in $(seq 0 $((n - 1))); do
    $BIN worker --coordinator "http://127.0.0.1:$port" --gpus "$g" --name "gpu$g" 2> "$OUT/worker-$n-$g.err" &
  done
  until grep -q '^done:' "$OUT/coordinator-$n.err" 2>/dev/null; do
    kill -0 $coordinator 2>/dev/null || { cat "$OUT/coordinator-$n.err"; exit 1; }
    sleep 0.1
  done
  t1=$(date +%s.%N)
  wait
  local wall
  wall=$(python3 -c "print(round($t1 - $t0, 2))")
  echo "{\"workers\": $n, \"gpus\": $n, \"tasks\": 64, \"wall_s\": $wall, \"spec\": \"tests/data/tiny_run.toml with seeds [42, 7, 11, 13]\", \"results\": $(grep -c '^result:' "$OUT/coordinator-$n.out")}"
}

{
  run 1
  if [ "$GPUS" -ge 2 ]; then run "$GPUS"; fi
} | tee "$OUT/distributed.json"
# Same results on 1 and N GPUs? (bf16 kernels may differ between devices: report, do not fail.)
for i in 1 2 3 4; do
  a=$(sed -n "${i}p" "$OUT/coordinator-1.out" | sed 's/^[a-z]*: //')
  b=$(sed -n "${i}p" "$OUT/coordinator-$GPUS.out" 2>/dev/null | sed 's/^[a-z]*: //')
  [ -n "$b" ] && [ -f "$a" ] && cmp -s "$a" "$b" && echo "same: $(basename "$(dirname "$(dirname "$a")")")" || true
done
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader || true
