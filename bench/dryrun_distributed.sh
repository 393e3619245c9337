#!/usr/bin/env bash
# The whole dry run at 7B size (experiments/issue205-dryrun.toml: random Qwen2.5-7B-shaped weights,
# generated data of the real sizes) through `pspace coordinator` and one `pspace worker` per GPU
# (issues 9, 13 item 6 and 16: wall time on 2 and 4 GPUs against 1).
#
#   bash bench/dryrun_distributed.sh [--gpus N] [--budget-s 540] [--drain-s 0] [--store DIR]
#                                    [--spec FILE] [--cpu-workers N]
#
# --cpu-workers N runs N CPU workers instead (a smoke test of the script on a machine without a
# GPU, e.g. with --spec tests/data/tiny_dryrun.toml).
#
# A device call lasts at most 10 minutes and the run may take longer, so the script runs for
# --budget-s seconds, then stops the workers and the coordinator; calling it again with the same
# --store (default .bench/dryrun-store, an ignored path the device machine keeps while it stays
# warm) resumes: committed tasks are not run again. With --drain-s N the workers get SIGTERM
# first and up to N more seconds to finish and report their tasks in hand (keep budget + drain
# under the call's limit); without it tasks in flight are killed and run again (their time so far
# is lost, and counted). Each call appends to DIR.calls.jsonl; every call rewrites
# $OUT/dryrun_distributed.json (or bench/results/dryrun_distributed_<N>gpu.json when OUT is unset):
#   calls: each call's seconds and whether the run finished in it;
#   wall_s: the sum of the calls' seconds (the run's wall time once finished; restarts included);
#   tasks: each committed task's start, finish and seconds (from its manifest);
#   one_gpu_s: the tasks' seconds added up (what one GPU running them back to back would take,
#     without the per-task model loads a resident worker saves);
#   gpus: per GPU, the share of nvidia-smi samples (1 s apart) at more than 10 % utilisation, and
#     the mean utilisation, over the calls.
# On the GPU machine: run tool, carry target/release/pspace and target/release/pspace-core; kind
# nvidia-h200-x2 (or -x4). libtorch comes from /opt/torch/.venv there (GPU.md).
set -uo pipefail
cd "$(dirname "$0")/.."

gpus=$(nvidia-smi -L 2>/dev/null | wc -l) budget=540 drain=0 store=.bench/dryrun-store
spec=experiments/issue205-dryrun.toml cpu_workers=0
while [ $# -gt 0 ]; do
  case "$1" in
    --gpus) gpus=$2; shift 2 ;;
    --budget-s) budget=$2; shift 2 ;;
    --drain-s) drain=$2; shift 2 ;;
    --store) store=$2; shift 2 ;;
    --spec) spec=$2; shift 2 ;;
    --cpu-workers) cpu_workers=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "bench/dryrun_distributed.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[ "$cpu_workers" -gt 0 ] && gpus=$cpu_workers
[ "$gpus" -ge 1 ] 2>/dev/null || { echo "bench/dryrun_distributed.sh: no GPU (nvidia-smi -L lists none); give --gpus N" >&2; exit 2; }

. bench/gpu_env.sh
mkdir -p "$store"
logs="$store.logs"
mkdir -p "$logs"

# The spec's generated training sets: made here for the 7B dry run (its md5s name this seed's
# output); another spec's header says how to make its own.
for f in $(sed -n 's/^data = "\(.*dryrun\/[a-z]*\.jsonl\)".*/\1/p' "$spec"); do
  [ -s "$(dirname "$spec")/$f" ] && continue
  if [ "$spec" = experiments/issue205-dryrun.toml ]; then
    "$BIN" dryrun-data --out experiments/data/dryrun --seed 205 > "$logs/data.json" || exit 1
  else
    echo "bench/dryrun_distributed.sh: $(dirname "$spec")/$f is missing: make it as $spec's header says (pspace dryrun-data)" >&2
    exit 2
  fi
done

# GPU sampler: unix s, index, utilisation %, memory MiB (appended across calls).
( while true; do
    now=$(date +%s)
    nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits 2>/dev/null \
      | sed "s/^/$now,/; s/ //g"
    sleep 1
  done ) >> "$store.smi.csv" 2>/dev/null &
sampler=$!

previous=0
[ -f "$store.calls.jsonl" ] && previous=$(wc -l < "$store.calls.jsonl")
call=$(( previous + 1 ))
port=$(( 50300 + call % 100 ))
started=$(date +%s.%N)
"$BIN" coordinator "$spec" --store "$store" --listen "127.0.0.1:$port" \
  > "$logs/coordinator-$call.out" 2> "$logs/coordinator-$call.err" &
coordinator=$!
workers=()
for g in $(seq 0 $((gpus - 1))); do
  if [ "$cpu_workers" -gt 0 ]; then device=(--device cpu); else device=(--gpus "$g"); fi
  "$BIN" worker --coordinator "http://127.0.0.1:$port" "${device[@]}" --name "gpu$g" \
    > /dev/null 2> "$logs/worker-$call-$g.err" &
  workers+=($!)
done

finished=false
deadline=$(( $(date +%s) + budget ))
while kill -0 "$coordinator" 2>/dev/null; do
  if grep -q '^done:' "$logs/coordinator-$call.err" 2>/dev/null; then finished=true; break; fi
  [ "$(date +%s)" -ge "$deadline" ] && break
  sleep 1
done
grep -q '^done:' "$logs/coordinator-$call.err" 2>/dev/null && finished=true
if [ "$finished" = false ]; then
  # SIGTERM drains a worker: it finishes and reports its task in hand (--drain-s at most), so
  # the next call does not run it again; then the coordinator stops. --drain-s 0: at once.
  if [ "$drain" -gt 0 ]; then
    kill -TERM "${workers[@]}" 2>/dev/null
    drain_end=$(( $(date +%s) + drain ))
    while [ "$(date +%s)" -lt "$drain_end" ] && kill -0 "$coordinator" 2>/dev/null; do
      alive=0
      for w in "${workers[@]}"; do kill -0 "$w" 2>/dev/null && alive=1; done
      [ "$alive" = 0 ] && break
      grep -q '^done:' "$logs/coordinator-$call.err" 2>/dev/null && break
      sleep 1
    done
  fi
  kill -KILL "${workers[@]}" 2>/dev/null
  kill -TERM "$coordinator" 2>/dev/null
fi
wait "$coordinator" 2>/dev/null
code=$?
ended=$(date +%s.%N)
# The tasks in hand may have been the run's last.
grep -q '^done:' "$logs/coordinator-$call.err" 2>/dev/null && finished=true
for w in "${workers[@]}"; do wait "$w" 2>/dev/null; done
kill "$sampler" 2>/dev/null
echo "{\"call\": $call, \"gpus\": $gpus, \"start\": $started, \"end\": $ended, \"finished\": $finished, \"coordinator_exit\": $code}" >> "$store.calls.jsonl"
tail -n 5 "$logs/coordinator-$call.err" >&2

python3 - "$store" "$DEST" "$gpus" "$spec" "$(nvidia-smi --query-gpu=name --format=csv,noheader -i 0 2>/dev/null)" <<'PY'
import glob, json, os, sys
store, dest, gpus, spec, gpu_name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
calls = [json.loads(l) for l in open(store + ".calls.jsonl") if l.strip()]
tasks = {}
for path in glob.glob(os.path.join(store, "**", "manifest.json"), recursive=True):
    try:
        m = json.load(open(path))
    except (OSError, ValueError):
        continue
    if "kind" in m and "started_unix_ms" in m:
        seconds = (m["finished_unix_ms"] - m["started_unix_ms"]) / 1000
        tasks[f"{m['kind']}/{m['label']}"] = {"start_unix_s": m["started_unix_ms"] / 1000,
                                              "finish_unix_s": m["finished_unix_ms"] / 1000,
                                              "seconds": round(seconds, 1)}
samples, memory = {}, {}
for line in open(store + ".smi.csv") if os.path.exists(store + ".smi.csv") else []:
    parts = line.strip().split(",")
    try:
        samples.setdefault(int(parts[1]), []).append(float(parts[2]))
        memory.setdefault(int(parts[1]), []).append(float(parts[3]))
    except (ValueError, IndexError):
        pass
by_kind = {}
for key, t in tasks.items():
    kind = key.split("/")[0]
    k = by_kind.setdefault(kind, {"tasks": 0, "seconds": 0.0})
    k["tasks"] += 1
    k["seconds"] = round(k["seconds"] + t["seconds"], 1)
out = {
    "what": f"{spec} through pspace coordinator + one pspace worker per GPU",
    "command": "bash bench/dryrun_distributed.sh (device tool), resumed across calls with the same store",
    "gpu": gpu_name, "gpus": gpus,
    "finished": any(c["finished"] for c in calls),
    "calls": [{"call": c["call"], "seconds": round(c["end"] - c["start"], 1), "finished": c["finished"]} for c in calls],
    "wall_s": round(sum(c["end"] - c["start"] for c in calls), 1),
    "tasks_committed": len(tasks),
    "one_gpu_s": round(sum(t["seconds"] for t in tasks.values()), 1),
    "by_kind": by_kind,
    "gpu_busy": {str(g): {"busy_share": round(sum(u > 10 for u in us) / len(us), 3),
                          "mean_util_pct": round(sum(us) / len(us), 1), "samples": len(us),
                          "peak_memory_used_mib": max(memory.get(g, [0.0]))}
                 for g, us in sorted(samples.items())},
    "tasks": dict(sorted(tasks.items(), key=lambda kv: kv[1]["start_unix_s"])),
}
name = "dryrun_distributed.json" if os.environ.get("OUT") else f"dryrun_distributed_{gpus}gpu.json"
json.dump(out, open(os.path.join(dest, name), "w"), indent=1)
print(json.dumps({k: v for k, v in out.items() if k != "tasks"}, indent=1))
PY
