#!/usr/bin/env bash
# Speed benchmark of the whole geometry family (M1, M2, M3 with 10,000 permutations, bootstrap
# intervals, all three families) at full size on seeded synthetic data held in memory:
# 7 checkpoints x 2 methods x 5 layers x 12 personas x 240 questions x 3584 dims.
# CPU only; writes bench/results/analysis_geometry_cpu.json (time, machine, cores, load).
# Extra arguments go to the benchmark (e.g. --permutations 1000 for a quick look).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p pspace-analysis --example bench_geometry
out=bench/results/analysis_geometry_cpu.json
load_before=$(cut -d' ' -f1 /proc/loadavg)
start=$(date +%s.%N)
result=$(target/release/examples/bench_geometry "$@")
end=$(date +%s.%N)
load_after=$(cut -d' ' -f1 /proc/loadavg)
mkdir -p bench/results
python3 - "$result" "$load_before" "$load_after" "$start" "$end" > "$out" <<'PY'
import json, sys
result = json.loads(sys.argv[1])
result["load_average_1min_before"] = float(sys.argv[2])
result["load_average_1min_after"] = float(sys.argv[3])
result["process_wall_seconds_including_data_generation"] = float(sys.argv[5]) - float(sys.argv[4])
result["date_utc"] = __import__("datetime").datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
print(json.dumps(result, indent=2, sort_keys=True))
PY
cat "$out"
