"""Decode-step attention on CPU: transformers' SDPA path vs kernels/decode_attention.py's matmul.

    python benchmarks/bench_decode_attention_cpu.py [--repeats 200] [--threads 2] [--json]

One layer's attention for one generated token per sequence, against KV caches of L keys
with left padding masked (as batched generation has it), for three shapes:
- demo: the demo's rollout batch (128 sequences, 4 query / 2 kv heads, D 32) at L 40, 90, 200;
- shape3b: Qwen2.5-VL-3B's attention widths (16 query / 2 kv heads, D 128), 32 sequences, L 300, 1000.
Both sides get the same tensors and the same bool mask; before timing their outputs are
checked to agree (fp32, 1e-5). The two alternate in blocks of 20 calls within each repeat
(the same machine load); each side's best block is the headline, the median beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from lmm_r1_ascend.kernels.decode_attention import decode_attention_matmul

SHAPES = [("demo", 128, 4, 2, 32, L) for L in (40, 90, 200)] + [("shape3b", 32, 16, 2, 128, L) for L in (300, 1000)]
BLOCK = 20


class _Layer:
    """What transformers' SDPA path reads from an attention module."""

    is_causal = True

    def __init__(self, groups: int):
        self.num_key_value_groups = groups


def bench(shape, repeats: int, seed: int) -> dict:
    name, batch, hq, hkv, dim, length = shape
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, hq, 1, dim, generator=gen)
    key, value = (torch.randn(batch, hkv, length, dim, generator=gen) for _ in range(2))
    pads = torch.randint(0, length // 3, (batch,), generator=gen)
    mask = (torch.arange(length)[None] >= pads[:, None])[:, None, None, :]  # (B, 1, 1, L) bool
    layer, scale = _Layer(hq // hkv), dim ** -0.5
    impls = {
        "sdpa": lambda: sdpa_attention_forward(layer, query, key, value, mask, scaling=scale)[0],
        "matmul": lambda: decode_attention_matmul(query, key, value, mask, scale=scale),
    }
    torch.testing.assert_close(impls["matmul"](), impls["sdpa"](), atol=1e-5, rtol=1e-5)
    times = {n: [] for n in impls}
    for _ in range(repeats // BLOCK or 1):
        for n, fn in impls.items():
            start = time.perf_counter()
            for _ in range(BLOCK):
                fn()
            times[n].append((time.perf_counter() - start) / BLOCK)
    best = {n: min(ts) for n, ts in times.items()}
    return {"shape": name, "batch": batch, "heads": [hq, hkv, dim], "keys": length,
            "best_ms": {n: round(b * 1e3, 3) for n, b in best.items()},
            "median_ms": {n: round(statistics.median(ts) * 1e3, 3) for n, ts in times.items()},
            "speedup": round(best["sdpa"] / best["matmul"], 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200, help="calls per side per shape, in blocks of 20")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [bench(shape, args.repeats, args.seed) for shape in SHAPES]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} calls per side, alternated blocks of {BLOCK}")
    print(f"{'shape':8} {'batch':>5} {'heads':>10} {'keys':>5} {'sdpa ms':>16} {'matmul ms':>16} {'speedup':>8}")
    for r in rows:
        heads = "/".join(map(str, r["heads"]))
        print(f"{r['shape']:8} {r['batch']:5d} {heads:>10} {r['keys']:5d} {r['best_ms']['sdpa']:7.3f} "
              f"({r['median_ms']['sdpa']:6.3f}) {r['best_ms']['matmul']:7.3f} ({r['median_ms']['matmul']:6.3f}) "
              f"{r['speedup']:7.2f}x")
    print("best block (median in parentheses), ms per call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
