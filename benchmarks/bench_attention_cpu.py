"""Packed attention forward + backward on CPU: the per-sequence reference vs the length-bucketed batch.

    python benchmarks/bench_attention_cpu.py [--repeats 9] [--threads 2] [--json]

One decoder layer's attention over one packed micro-batch, forward and backward of the sum
of the output times a fixed random cotangent, for three length mixes:
- demo: the demo's micro-batch (about 43 sequences of 60-100 tokens, 4 query / 2 kv heads, D 32);
- longtail: log-normal lengths (median 128, sigma 1, 1..1024) filling a 4096-token budget;
- shape3b: the demo mix at Qwen2.5-VL-3B's attention widths (16 query / 2 kv heads, D 128).
The two implementations alternate within each repeat (the same machine load); the headline
is each one's fastest repeat (other processes only add time), the median printed beside.
Before timing, the outputs and gradients of both are checked to agree (fp32, 1e-5).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from lmm_r1_ascend.kernels.attention import varlen_attention_batched, varlen_attention_reference

IMPLS = {"reference": varlen_attention_reference, "batched": varlen_attention_batched}


def lengths_for(mix: str, gen: torch.Generator) -> list[int]:
    if mix in ("demo", "shape3b"):
        return torch.randint(60, 101, (43,), generator=gen).tolist()
    lengths, total = [], 0
    while True:
        n = int(torch.exp(torch.randn((), generator=gen) + math.log(128)).round().clamp(1, 1024))
        if total + n > 4096:
            return lengths
        lengths.append(n)
        total += n


def run_once(fn, q, k, v, cu, max_len, cot) -> tuple[float, list[torch.Tensor]]:
    leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
    start = time.perf_counter()
    out = fn(*leaves, cu, max_len)
    (out * cot).sum().backward()
    return time.perf_counter() - start, [out.detach()] + [x.grad for x in leaves]


def bench(mix: str, repeats: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    hq, hkv, d = (16, 2, 128) if mix == "shape3b" else (4, 2, 32)
    lengths = lengths_for(mix, gen)
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    t = bounds[-1]
    q, k, v = (torch.randn(t, h, d, generator=gen) for h in (hq, hkv, hkv))
    cot = torch.randn(t, hq, d, generator=gen)
    cu = torch.tensor(bounds, dtype=torch.int32)
    _, want = run_once(varlen_attention_reference, q, k, v, cu, max(lengths), cot)
    _, got = run_once(varlen_attention_batched, q, k, v, cu, max(lengths), cot)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{mix} {n}: {m}")
    times = {name: [] for name in IMPLS}
    for _ in range(repeats):
        for name, fn in IMPLS.items():
            times[name].append(run_once(fn, q, k, v, cu, max(lengths), cot)[0])
    best = {name: min(ts) for name, ts in times.items()}
    return {"mix": mix, "sequences": len(lengths), "tokens": t, "heads": [hq, hkv, d],
            "best_ms": {n: round(b * 1e3, 2) for n, b in best.items()},
            "median_ms": {n: round(statistics.median(ts) * 1e3, 2) for n, ts in times.items()},
            "speedup": round(best["reference"] / best["batched"], 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [bench(mix, args.repeats, args.seed) for mix in ("demo", "longtail", "shape3b")]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} alternated repeats, fwd+bwd per call")
    print(f"{'mix':9} {'seqs':>5} {'tokens':>6} {'reference ms':>14} {'batched ms':>12} {'speedup':>8}")
    for r in rows:
        print(f"{r['mix']:9} {r['sequences']:5d} {r['tokens']:6d} {r['best_ms']['reference']:8.1f} "
              f"({r['median_ms']['reference']:5.1f}) {r['best_ms']['batched']:6.1f} ({r['median_ms']['batched']:5.1f}) "
              f"{r['speedup']:7.2f}x")
    print("best repeat (median in parentheses)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
