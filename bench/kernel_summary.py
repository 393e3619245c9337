#!/usr/bin/env python3
"""Totals a Chrome trace from libtorch's profiler (engine::kernel_trace, bench_train or
bench_engine --kernel-trace) by GPU kernel, by the aten operator that launched it, and by the
autograd node whose backward ran it; and the GPU's idle time between kernels.

Usage: kernel_summary.py TRACE.json [--steps N] [--top K] [--json OUT]
  --steps N  divide the totals by N (the traced steps), to read them per step.
"""
import argparse
import bisect
import json
import re
import sys
from collections import defaultdict


def category(kernel):
    k = kernel.lower()
    if "flash" in k or "fmha" in k:
        return "attention (flash / efficient)"
    if any(s in k for s in ("gemm", "cutlass", "xmma", "nvjet", "sm90_", "cublas", "gemv")):
        return "matmul (cuBLAS / CUTLASS)"
    if "dropout" in k or "fused_dropout" in k:
        return "dropout"
    if "reduce" in k or "norm" in k or "softmax" in k:
        return "reductions, norms, softmax"
    if "copy" in k or "cat" in k or "index" in k or "gather" in k or "scatter" in k:
        return "copies, cat, index"
    if "elementwise" in k or "vectorized" in k or "unrolled" in k:
        return "elementwise"
    if "memset" in k or "fill" in k:
        return "fill"
    return "other"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--steps", type=float, default=1.0)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--json", dest="json_out")
    a = ap.parse_args()
    with open(a.trace) as f:
        events = json.load(f).get("traceEvents", [])

    ops = {}  # External id -> (name, tid, ts)
    grads = defaultdict(list)  # tid -> [(ts, end, name)] of autograd evaluate_function events
    kernels = []
    for e in events:
        if e.get("ph") != "X":
            continue
        cat, args = e.get("cat", ""), e.get("args", {})
        if cat == "cpu_op":
            ext = args.get("External id")
            if ext is not None:
                ops[ext] = (e["name"], e.get("tid"), e["ts"])
            if e["name"].startswith("autograd::engine::evaluate_function: "):
                grads[e.get("tid")].append((e["ts"], e["ts"] + e["dur"], e["name"].split(": ", 1)[1]))
        elif cat == "kernel" or cat == "gpu_memcpy" or cat == "gpu_memset":
            kernels.append(e)
    for tid in grads:
        grads[tid].sort()
    starts = {tid: [g[0] for g in gs] for tid, gs in grads.items()}

    def grad_node(tid, ts):
        gs = grads.get(tid)
        if not gs:
            return None
        i = bisect.bisect_right(starts[tid], ts) - 1
        # The innermost evaluate_function that contains ts (they do not nest in practice).
        while i >= 0:
            s, end, name = gs[i]
            if s <= ts <= end:
                return name
            i -= 1
            if end < ts and i >= 0 and gs[i][1] < ts:
                break
        return None

    by_kernel = defaultdict(lambda: [0.0, 0])
    by_op = defaultdict(lambda: [0.0, 0])
    by_cat = defaultdict(float)
    busy = 0.0
    first, last = None, None
    for k in kernels:
        dur = float(k.get("dur", 0.0))
        name = re.sub(r"\s+", " ", k["name"])[:140]
        ext = k.get("args", {}).get("External id")
        op = ops.get(ext)
        if op:
            node = grad_node(op[1], op[2])
            where = f"backward {node}: {op[0]}" if node else f"forward: {op[0]}"
        else:
            where = "(no operator)"
        by_kernel[name][0] += dur
        by_kernel[name][1] += 1
        by_op[where][0] += dur
        by_op[where][1] += 1
        by_cat[category(k["name"])] += dur
        busy += dur
        s, e = k["ts"], k["ts"] + dur
        first = s if first is None else min(first, s)
        last = e if last is None else max(last, e)
    span = (last - first) if kernels else 0.0
    n = a.steps
    ms = lambda us: us / 1000.0 / n
    out = {
        "kernels": len(kernels),
        "kernels_per_step": len(kernels) / n,
        "gpu_span_ms_per_step": ms(span),
        "gpu_busy_ms_per_step": ms(busy),
        "gpu_idle_ms_per_step": ms(span - busy),
        "by_category_ms_per_step": {c: round(ms(v), 2) for c, v in sorted(by_cat.items(), key=lambda x: -x[1])},
        "top_kernels": [
            {"kernel": k, "ms_per_step": round(ms(v[0]), 2), "launches_per_step": v[1] / n}
            for k, v in sorted(by_kernel.items(), key=lambda x: -x[1][0])[: a.top]
        ],
        "top_operators": [
            {"operator": k, "ms_per_step": round(ms(v[0]), 2), "launches_per_step": v[1] / n}
            for k, v in sorted(by_op.items(), key=lambda x: -x[1][0])[: a.top]
        ],
    }
    print(f"{a.trace}: {len(kernels)} kernels; per step: span {ms(span):.1f} ms, busy {ms(busy):.1f}, idle {ms(span - busy):.1f}")
    print("by category, ms per step:")
    for c, v in out["by_category_ms_per_step"].items():
        print(f"  {v:9.2f}  {c}")
    print("top operators (forward / backward node: aten op), ms per step, launches per step:")
    for r in out["top_operators"]:
        print(f"  {r['ms_per_step']:9.2f} {r['launches_per_step']:7.0f}  {r['operator']}")
    print("top kernels:")
    for r in out["top_kernels"]:
        print(f"  {r['ms_per_step']:9.2f} {r['launches_per_step']:7.0f}  {r['kernel']}")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
