#!/usr/bin/env bash
# The whole dry run across device calls without a restart at each call's end: the same command in
# every call. It starts bench/dryrun_distributed.sh in the background (setsid, so it outlives the
# call; on 2026-11-30 the device machine kept such processes while it stayed warm) unless one is
# running or the run has finished, then follows it until it ends or --follow-s seconds pass, and
# copies the results to $OUT. A call boundary then costs nothing; only a machine given back
# (30 s idle) loses the run, and the next call resumes from the store when the store survived.
#
#   bash bench/dryrun_follow.sh [--gpus N] [--follow-s 540] [--budget-s 1700] [--store DIR]
#                               [--spec FILE] [--cpu-workers N]
#
# --budget-s bounds the background run as a whole (bench/dryrun_distributed.sh's budget; its
# drain is 60 s). Results: $OUT/dryrun_distributed.json (or bench/results/ when OUT is unset),
# the same JSON bench/dryrun_distributed.sh writes, and $OUT/dryrun_follow.log, the run's log.
set -uo pipefail
cd "$(dirname "$0")/.."

gpus="" follow=540 budget=1700 store=.bench/dryrun-store spec=experiments/issue205-dryrun.toml cpu=0
while [ $# -gt 0 ]; do
  case "$1" in
    --gpus) gpus=$2; shift 2 ;;
    --follow-s) follow=$2; shift 2 ;;
    --budget-s) budget=$2; shift 2 ;;
    --store) store=$2; shift 2 ;;
    --spec) spec=$2; shift 2 ;;
    --cpu-workers) cpu=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "bench/dryrun_follow.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
dest=${OUT:-bench/results}
keep=$PWD/.bench/follow-$(basename "$store")   # outlives the call, unlike $OUT
mkdir -p "$keep" "$dest"
finished() { grep -q '"finished": true' "$keep/dryrun_distributed.json" 2>/dev/null; }
running() { pgrep -f "bench/dryrun_distributed.sh.*--store $store" > /dev/null; }

if finished; then
  echo "the run has finished already"
elif running; then
  echo "following the run started by an earlier call"
else
  echo "starting the run in the background (budget $budget s)"
  args=(--budget-s "$budget" --drain-s 60 --store "$store" --spec "$spec")
  [ -n "$gpus" ] && args+=(--gpus "$gpus")
  [ "$cpu" -gt 0 ] && args+=(--cpu-workers "$cpu")
  OUT=$keep setsid nohup bash bench/dryrun_distributed.sh "${args[@]}" >> "$keep/run.log" 2>&1 < /dev/null &
  sleep 2
fi
end=$(( SECONDS + follow ))
while running && [ $SECONDS -lt $end ]; do
  sleep 5
  if [ $(( SECONDS % 60 )) -lt 5 ]; then
    echo "$(date -u +%T): $(cat "$store".logs/coordinator-*.err 2>/dev/null | grep -cE ' [0-9.]+s$') tasks run so far"
  fi
done
running && echo "still running after $follow s: call again to follow it" || tail -n 3 "$keep/run.log"
cp "$keep/dryrun_distributed.json" "$dest/" 2>/dev/null
cp "$keep/run.log" "$dest/dryrun_follow.log" 2>/dev/null
finished
