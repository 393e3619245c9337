"""The JSON of bench/scale.sh: per-stage seconds of the 7B dry run on one GPU, what was measured
and what extrapolated, the projected whole run, peak GPU memory and utilisation per stage, and
the HF/PEFT training comparison on the same rows. Reads the run's store (manifests: each task's
start and finish; train_log.json: each optimizer step's seconds), the nvidia-smi samples and the
side measurements scale.sh leaves in its work folder. Standard library only.

Usage: python3 bench/scale_summary.py --work DIR --spec SPEC --out FILE --gpu NAME --cpus N --wall S
"""
import argparse
import datetime
import glob
import json
import math
import os
import statistics
import tomllib

p = argparse.ArgumentParser()
p.add_argument("--work", required=True)
p.add_argument("--spec", required=True)
p.add_argument("--out", required=True)
p.add_argument("--gpu", default="")
p.add_argument("--cpus", default="")
p.add_argument("--wall", type=float, default=0.0)
a = p.parse_args()

spec = tomllib.load(open(a.spec, "rb"))
full = tomllib.load(open("experiments/issue205-dryrun.toml", "rb"))
conditions = len(full["conditions"])
checkpoints = conditions + 2  # base, the EM conditions, benign


def load(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None


# GPU samples: (unix ms, utilisation %, memory MiB).
samples = []
for line in open(os.path.join(a.work, "smi.csv")) if os.path.exists(os.path.join(a.work, "smi.csv")) else []:
    parts = line.strip().split(",")
    try:
        samples.append((int(parts[0]), float(parts[1]), float(parts[2])))
    except (ValueError, IndexError):
        pass


def gpu_during(t0, t1):
    inside = [s for s in samples if t0 <= s[0] <= t1]
    if not inside:
        return {}
    return {
        "gpu_util_mean_pct": round(statistics.mean(s[1] for s in inside), 1),
        "gpu_mem_peak_mib": max(s[2] for s in inside),
        "samples": len(inside),
    }


# Committed tasks of the run: kind/label -> (manifest, outputs folder).
tasks = {}
for m_path in glob.glob(os.path.join(a.work, "store", "*", "*", "*", "*", "manifest.json")):
    m = load(m_path)
    if not m or "kind" not in m or "started_unix_ms" not in m:
        continue
    folder = os.path.dirname(m_path)
    tasks[f"{m['kind']}/{m['label']}"] = (m, os.path.join(folder, m.get("attempt", "")))


def wall(key):
    m = tasks[key][0]
    return (m["finished_unix_ms"] - m["started_unix_ms"]) / 1000.0


def steps_in_full(rows, recipe_table):
    """Optimizer steps of the spec's full recipe over `rows` examples."""
    r = recipe_table
    micro = math.ceil(rows / r["per_device_train_batch_size"])
    per_epoch = math.ceil(micro / r["gradient_accumulation_steps"])
    return per_epoch * int(r["num_train_epochs"])


def training(key, recipe_table):
    """A training task cut to N steps: measured step times, projected to the full recipe."""
    if key not in tasks:
        return {"status": "not run (out of time or failed: see scale_run.log)"}
    m, outputs = tasks[key]
    log = load(os.path.join(outputs, "train_log.json")) or {}
    steps = log.get("steps", [])
    secs = [s["seconds"] for s in steps]
    timed = secs[2:] if len(secs) > 4 else secs
    rows = (log.get("data") or {}).get("examples", 0)
    total = steps_in_full(rows, recipe_table) if rows else None
    task_s = wall(key)
    fixed = max(task_s - sum(secs), 0.0)
    mean = statistics.mean(timed) if timed else None
    tokens = sum(s["tokens"] for s in steps[2:]) if len(steps) > 4 else sum(s["tokens"] for s in steps)
    out = {
        "status": "measured on the first steps, extrapolated",
        "measured_steps": len(steps),
        "measured_task_s": round(task_s, 2),
        "fixed_s": round(fixed, 2),
        "step_s_mean_after_2": round(mean, 4) if mean else None,
        "step_s_median_after_2": round(statistics.median(timed), 4) if timed else None,
        "step_s_first_two": [round(s, 3) for s in secs[:2]],
        "tokens_per_s_after_2": round(tokens / sum(timed)) if timed and sum(timed) > 0 else None,
        "rows": rows,
        "full_steps": total,
        "projected_s": round(fixed + mean * total, 1) if (mean and total) else None,
    }
    out.update(gpu_during(m["started_unix_ms"], m["finished_unix_ms"]))
    return out


def measured(key, what):
    if key not in tasks:
        return {"status": "not run (out of time or failed: see scale_run.log)"}
    m = tasks[key][0]
    out = {"status": "measured at full size", "what": what, "measured_task_s": round(wall(key), 2)}
    out["projected_s"] = out["measured_task_s"]
    out.update(gpu_during(m["started_unix_ms"], m["finished_unix_ms"]))
    return out


cond = full["conditions"][0]["id"]
stages = {
    "train_em": training(f"train_em/{cond}", spec["training"]["em"]),
    "extract": measured("extract/base", "12 personas x 240 questions: Method A, Method B (greedy, 256 tokens)"),
    "generate_onpolicy": measured(f"generate_onpolicy/{cond}", "3 personas x 20 questions x 15 (drawn lengths, mean 50)"),
    "build_coupling": measured(f"build_coupling/{cond}", "600 rows from the on-policy completions"),
    "train_coupling": training(f"train_coupling/{cond}", spec["coupling"]),
    "marker_eval": measured(f"marker_eval/{cond}", "12 personas x 28 questions x 10 = 3,360 (drawn lengths, mean 50)"),
    "train_benign": training("train_benign/benign_sft", spec["training"]["benign"]),
}
# The coupling's full count: the set's rows times 20 epochs (num_train_epochs of the real spec).
if stages["train_coupling"].get("rows"):
    c = dict(full["coupling"])
    t = stages["train_coupling"]
    t["full_steps"] = steps_in_full(t["rows"], c)
    if t.get("step_s_mean_after_2"):
        t["projected_s"] = round(t["fixed_s"] + t["step_s_mean_after_2"] * t["full_steps"], 1)

analysis = load(os.path.join(a.work, "analysis.json"))
stages["analysis"] = (
    {
        "status": "measured: bench_geometry, the whole geometry family at full size (7 x 2 x 5 x 12 x 240 x 3584, 10,000 permutations) on this machine's CPUs",
        "measured_task_s": analysis.get("seconds"),
        "projected_s": analysis.get("seconds"),
        "detail": analysis,
    }
    if analysis
    else {"status": "not measured here (.bench/bench_geometry not carried): left out of the projection", "projected_s": None}
)

counts = {
    "train_em": conditions,
    "extract": checkpoints,
    "generate_onpolicy": conditions,
    "build_coupling": conditions,
    "train_coupling": conditions,
    "marker_eval": conditions,
    "train_benign": 1,
    "analysis": 1,
}
projection = {}
total = 0.0
missing = []
for name, n in counts.items():
    s = stages[name].get("projected_s")
    if s is None:
        missing.append(name)
        continue
    projection[name] = {"per_task_s": s, "tasks": n, "total_s": round(s * n, 1)}
    total += s * n

data_time = open(os.path.join(a.work, "data.time")).read().split() if os.path.exists(os.path.join(a.work, "data.time")) else None
pt = load(os.path.join(a.work, "pspace_train", "train_log.json"))
hf = load(os.path.join(a.work, "hf_train.json"))
comparison = None
if pt or hf:
    comparison = {"rows": "the first 16 x N rows of the dry run's EM set, one epoch each, micro-batch 4 x accumulation 4, max_len 2048"}
    if pt:
        steps = pt.get("steps", [])
        timed = steps[2:] if len(steps) > 4 else steps
        sec = sum(s["seconds"] for s in timed)
        comparison["pspace"] = {
            "steps": len(steps),
            "tokens_per_s_after_2": round(sum(s["tokens"] for s in timed) / sec) if sec else None,
            "step_s_mean_after_2": round(sec / len(timed), 4) if timed else None,
        }
    if hf:
        comparison["hf_peft"] = hf
    if pt and hf and comparison["pspace"].get("tokens_per_s_after_2") and hf.get("tokens_per_s_after_2"):
        comparison["ratio_pspace_over_hf"] = round(comparison["pspace"]["tokens_per_s_after_2"] / hf["tokens_per_s_after_2"], 2)

result = {
    "what": "issue 13 item 3: each stage of experiments/issue205-dryrun.toml (random Qwen2.5-7B-shaped bf16 weights, generated data of the real sizes) on one GPU, and the whole run projected from them",
    "command": "bash bench/scale.sh (device tool, kind nvidia-h200)",
    "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "machine": {"gpu": a.gpu, "cpus": a.cpus},
    "script_wall_s": a.wall,
    "data_generation_s": round(float(data_time[1]) - float(data_time[0]), 1) if data_time else None,
    "data": load(os.path.join(a.work, "data.json")),
    "stages": stages,
    "projection_one_gpu": {
        "tasks": projection,
        "total_s": round(total, 1),
        "total_min": round(total / 60, 1),
        "left_out": missing,
        "assumptions": [
            "tasks run one after another on one GPU (one slot)",
            "every checkpoint's extraction costs what extract/base measured",
            "training steps cost the mean of the measured steps after the first two",
        ],
        "seed_reference": "the seed's run: about 3.7 h on one H100, 56 min of it analysis",
    },
    "gpu_peak_mem_mib": max((s[2] for s in samples), default=None),
    "gpu_samples": len(samples),
    "training_vs_hf_peft": comparison,
}
json.dump(result, open(a.out, "w"), indent=1)
