"""Math reward throughput: the worker pool against sequential scoring, same inputs.

``python -m lmm_r1_ascend.reward --task math --bench 2000 --workers 2`` prints one JSON
object with answers per second for both. Inputs are simple, varied answers (integers,
fractions, radicals, half of them wrong) inside well-formed responses, so the parse
caches do not make every answer free.
"""

from __future__ import annotations

import random
import time

from lmm_r1_ascend.rewards.math_reward import MathReward
from lmm_r1_ascend.rewards.types import RewardInput


def simple_samples(n: int, seed: int = 0, group: int = 1) -> list[RewardInput]:
    """``n`` (label, response) pairs, about half correct; each label is used for
    ``group`` consecutive samples (as with n_samples_per_prompt in training)."""
    rng = random.Random(seed)
    out = []
    a = 0
    for i in range(n):
        if i % group == 0:
            a = rng.randint(1, 10_000)
        b = a if rng.random() < 0.5 else a + rng.randint(1, 9)
        kind = (i // group) % 3
        if kind == 0:
            label, ans = f"{a}", f"{b}"
        elif kind == 1:
            label, ans = f"\\frac{{{a}}}{{{a + 7}}}", f"\\frac{{{b}}}{{{a + 7}}}"
        else:
            label, ans = f"{a}\\sqrt{{2}}", f"{b}\\sqrt{{2}}"
        resp = f"<think> Working it out step by step. </think><answer> The answer is $\\boxed{{{ans}}}$ </answer>"
        out.append(RewardInput(response=resp, label=label))
    return out


def run_bench(n: int = 1000, workers: int = 2, timeout_s: float = 10.0, seed: int = 0, group: int = 1) -> dict:
    """Score the same ``n`` samples with a pool of ``workers`` and in-process; report
    answers per second (pool start-up and warm-up excluded) and that both agree."""
    if n < 1 or group < 1:
        raise ValueError(f"need n >= 1 and group >= 1, got {n}, {group}")
    samples = simple_samples(n, seed, group)
    with MathReward(workers=workers, timeout_s=timeout_s) as pooled:
        pooled(simple_samples(4, seed + 1))  # start and warm up the workers
        t = time.perf_counter()
        pool_out = pooled(samples)
        pool_s = time.perf_counter() - t
    seq = MathReward(workers=0, timeout_s=timeout_s)
    seq(simple_samples(4, seed + 1))
    t = time.perf_counter()
    seq_out = seq(samples)
    seq_s = time.perf_counter() - t
    agree = sum(a.total == b.total for a, b in zip(pool_out, seq_out))
    return {
        "n": n,
        "workers": workers,
        "group": group,
        "pool_per_s": round(n / pool_s, 1),
        "sequential_per_s": round(n / seq_s, 1),
        "speedup": round(seq_s / pool_s, 2),
        "agree": agree,
        "correct": sum(o.status == "correct" for o in pool_out),
    }
