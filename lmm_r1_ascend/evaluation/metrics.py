"""Evaluation figures from n sampled responses per prompt: pass@k, maj@k, lengths, statuses.

Pure Python and numpy, exact (no Monte Carlo). Conventions:

- pass@k is the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models
  Trained on Code"): the probability that a uniformly drawn k-subset of the n samples holds
  at least one correct sample.
- maj@k is the expected correctness of a majority vote over a uniformly drawn k-subset.
  Only samples with an answer vote: an answer that is None or blank gets class None and is
  left out of every vote (it still counts as a sample of the subset). The most frequent class
  among the subset's voters wins; a tie between T classes scores (correct tied classes) / T,
  as if the winner were drawn uniformly among them; a subset without a voter scores 0.
- A class's correctness is decided once, over all n samples: the majority of its samples'
  ``correct`` flags, an exact tie going to the first sample's flag. Samples of one class
  should agree (equivalent answers are equally right); the rule only makes disagreement
  deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction

import numpy as np

_FLOAT_LIMIT = 1e300  # maj@k counts in exact Python integers when C(n, n // 2) exceeds this (n > 1000)


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k) for ``c`` correct samples out of ``n``; computed as
    1 - prod_{i=n-c+1..n} (1 - k/i), which never forms a large binomial. 1.0 when n - c < k."""
    if n < 1:
        raise ValueError(f"pass@k needs n >= 1 samples, got n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k} with n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n correct samples, got c={c} with n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def ks_for(n: int) -> list[int]:
    """The k values reported for n samples per prompt: powers of two <= n, then n itself.
    ks_for(1) == [1], ks_for(8) == [1, 2, 4, 8], ks_for(12) == [1, 2, 4, 8, 12]."""
    if n < 1:
        raise ValueError(f"need n >= 1 samples per prompt, got n={n}")
    ks = {1 << i for i in range(n.bit_length()) if 1 << i <= n}
    return sorted(ks | {n})


def answer_classes(answers: Sequence[str | None],
                   same: Callable[[str, str], bool] | None = None) -> list[int | None]:
    """Equivalence classes of one prompt's extracted answers, for maj@k.

    answers: n strings (or None when no answer could be extracted). Returns n class ids:
    0, 1, ... in order of first appearance; None for a None or blank answer (it never votes).
    An answer joins the first class whose representative (its first member) it is ``same`` as,
    called as ``same(representative, answer)``; otherwise it opens a new class. ``same``
    defaults to equality of the stripped strings (the caller passes math-verify equivalence).
    """
    if same is None:
        def same(a: str, b: str) -> bool:
            return a.strip() == b.strip()
    reps: list[str] = []
    out: list[int | None] = []
    for answer in answers:
        if answer is None or not str(answer).strip():
            out.append(None)
            continue
        for cid, rep in enumerate(reps):
            if same(rep, answer):
                out.append(cid)
                break
        else:
            reps.append(answer)
            out.append(len(reps) - 1)
    return out


def _class_table(classes: Sequence[int | None], correct: Sequence[bool],
                 voting: Sequence[bool] | None) -> tuple[list[int], list[bool]]:
    """Sizes and correctness of the voting classes (see the module docstring for the rule)."""
    members: dict[int, list[bool]] = {}
    for i, (cid, ok) in enumerate(zip(classes, correct)):
        if cid is not None and (voting is None or voting[i]):
            members.setdefault(cid, []).append(bool(ok))
    sizes = [len(flags) for flags in members.values()]
    right = [2 * sum(flags) > len(flags) or (2 * sum(flags) == len(flags) and flags[0]) for flags in members.values()]
    return sizes, right


def _majority_weight(sizes: list[int], right: list[bool], pool: int, k: int, exact: bool):
    """Sum over all k-subsets of the subset's vote score (not yet divided by C(n, k)).

    A subset is a count vector: x_j samples of voting class j (0 <= x_j <= s_j) plus x_0 of
    the ``pool`` non-voters, sum = k, drawn in prod C(s_j, x_j) * C(pool, x_0) ways. Split by
    the winning count t = max_j x_j (1..k). For a fixed t, a DP over the classes carries
    D[a, b, z]: the ways to draw z samples so far with a correct and b wrong classes at
    exactly t and all others below t (class polynomial sum_{x<t} C(s,x) z^x, or C(s,t) z^t
    when tied). The pool is folded in at the end (coefficient of z^k); a state with
    a + b >= 1 scores a / (a + b). Cost O(k^2 * m * a_max * b_max) array cells for m classes;
    float64 (non-negative terms, so relative error ~1e-15) unless ``exact``.
    """
    dtype = object if exact else np.float64
    pool_poly = np.array([math.comb(pool, x) for x in range(k + 1)], dtype=dtype)
    total = Fraction(0) if exact else 0.0
    for t in range(1, min(k, max(sizes)) + 1):
        n_right = sum(1 for s, r in zip(sizes, right) if s >= t and r)
        n_wrong = sum(1 for s, r in zip(sizes, right) if s >= t and not r)
        d = np.zeros((n_right + 1, n_wrong + 1, k + 1), dtype=dtype)
        d[0, 0, 0] = 1
        for s, r in zip(sizes, right):
            new = np.zeros_like(d)
            for x in range(min(t - 1, s) + 1):  # this class below t
                new[:, :, x:] += math.comb(s, x) * d[:, :, : k + 1 - x]
            if s >= t:  # this class tied at t
                ways = math.comb(s, t)
                if r:
                    new[1:, :, t:] += ways * d[:-1, :, : k + 1 - t]
                else:
                    new[:, 1:, t:] += ways * d[:, :-1, : k + 1 - t]
            d = new
        at_k = (d * pool_poly[::-1]).sum(axis=2)  # sum_z D[a, b, z] * C(pool, k - z)
        for a in range(n_right + 1):
            for b in range(n_wrong + 1):
                if a and at_k[a, b]:
                    total += (Fraction(a, a + b) if exact else a / (a + b)) * at_k[a, b]
    return total


def maj_at_k(classes: Sequence[int | None], correct: Sequence[bool], k: int,
             voting: Sequence[bool] | None = None) -> float:
    """Expected majority-vote correctness of a uniform k-subset of one prompt's n samples.

    classes: n answer-class ids (``answer_classes``), None = no vote. correct: n flags.
    voting: optional n flags; a sample votes only when its flag is True and its class is not
    None. Ties split evenly, a subset without voters scores 0 (module docstring). Exact,
    through class counts (``_majority_weight``): n=64, k=32, 10 classes takes milliseconds.
    maj@1 is the mean correctness of the voters' classes over all n samples.
    """
    n = len(classes)
    if len(correct) != n or (voting is not None and len(voting) != n):
        raise ValueError(f"maj@k: classes ({n}), correct ({len(correct)})"
                         + ("" if voting is None else f" and voting ({len(voting)})") + " must have equal lengths")
    if not 1 <= k <= n:
        raise ValueError(f"maj@k needs 1 <= k <= n, got k={k} with n={n}")
    sizes, right = _class_table(classes, correct, voting)
    if not any(right):
        return 0.0
    subsets = math.comb(n, k)
    exact = math.comb(n, n // 2) > _FLOAT_LIMIT  # bounds every partial count in the DP
    weight = _majority_weight(sizes, right, n - sum(sizes), k, exact)
    return float(weight / subsets) if exact else float(min(1.0, weight / subsets))


def length_stats(lengths: Sequence[int], max_new_tokens: int,
                 finish_reasons: Sequence[str] | None = None) -> dict[str, float]:
    """{"mean", "median", "p90", "cut_frac"} of response lengths (tokens). p90 and the median
    are numpy's default percentiles (linear interpolation between order statistics, i.e.
    ``np.percentile(..., method="linear")``). cut_frac: fraction cut at the token limit,
    finish_reason == "length" when finish_reasons are given, else length >= max_new_tokens."""
    if len(lengths) == 0:
        raise ValueError("length_stats: no lengths given")
    if finish_reasons is not None and len(finish_reasons) != len(lengths):
        raise ValueError(f"length_stats: {len(lengths)} lengths but {len(finish_reasons)} finish_reasons")
    arr = np.asarray(lengths, dtype=np.float64)
    if finish_reasons is not None:
        cut = np.mean([r == "length" for r in finish_reasons])
    else:
        cut = np.mean(arr >= max_new_tokens)
    return {"mean": float(arr.mean()), "median": float(np.percentile(arr, 50)),
            "p90": float(np.percentile(arr, 90)), "cut_frac": float(cut)}


_RECORD_KEYS = ("prompt_id", "datasource", "correct", "format", "answer_class", "response_length",
                "finish_reason", "status")


def _figures(prompts: list[list[Mapping]], n: int, max_new_tokens: int) -> dict[str, float]:
    samples = [r for group in prompts for r in group]
    out: dict[str, float] = {"accuracy": float(np.mean([bool(r["correct"]) for r in samples]))}
    for k in ks_for(n):
        out[f"pass@{k}"] = float(np.mean([pass_at_k(n, sum(bool(r["correct"]) for r in g), k) for g in prompts]))
    for k in ks_for(n):
        out[f"maj@{k}"] = float(np.mean([maj_at_k([r["answer_class"] for r in g], [bool(r["correct"]) for r in g], k)
                                         for g in prompts]))
    out["format_rate"] = float(np.mean([float(r["format"]) for r in samples]))
    if all("reward" in r for r in samples):  # the reward's own scale (e.g. Sokoban's mean reward)
        out["reward_mean"] = float(np.mean([float(r["reward"]) for r in samples]))
    lengths = length_stats([int(r["response_length"]) for r in samples], max_new_tokens,
                           [r["finish_reason"] for r in samples])
    for key in ("mean", "median", "p90"):
        out[f"response_length/{key}"] = lengths[key]
    out["cut_frac"] = lengths["cut_frac"]
    out["n_prompts"] = len(prompts)
    out["n_samples"] = len(samples)
    statuses: dict[str, int] = {}
    for r in samples:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    for name in sorted(statuses):
        out[f"status/{name}"] = statuses[name]
    return out


def summarise(records: Sequence[Mapping], n: int, max_new_tokens: int) -> dict[str, dict[str, float]]:
    """Per-datasource and overall figures from per-sample records.

    records: one mapping per sample with keys prompt_id (int | str), datasource (str), correct
    (bool), format (float in [0, 1]), answer_class (int | None, from ``answer_classes`` per
    prompt), response_length (int), finish_reason (str), status (str). A prompt is the pair
    (datasource, prompt_id) and must have exactly n records (their order is kept).
    Returns {datasource: figures, ..., "all": figures}; figures are "accuracy" (mean over
    samples), "pass@k" and "maj@k" for k in ks_for(n) (mean over prompts), "format_rate",
    "reward_mean" (when every record has a "reward"), "response_length/mean|median|p90",
    "cut_frac" (finish_reason == "length"),
    "n_prompts", "n_samples" and "status/<status>" (a count of samples).
    """
    if not records:
        raise ValueError("summarise: no records")
    ks_for(n)  # validates n
    groups: dict[tuple[str, object], list[Mapping]] = {}
    for i, rec in enumerate(records):
        missing = [key for key in _RECORD_KEYS if key not in rec]
        if missing:
            raise ValueError(f"summarise: record {i} lacks key(s) {missing} (needs {list(_RECORD_KEYS)})")
        groups.setdefault((str(rec["datasource"]), rec["prompt_id"]), []).append(rec)
    for (source, pid), group in groups.items():
        if len(group) != n:
            raise ValueError(f"summarise: prompt {pid!r} of datasource {source!r} has {len(group)} samples, "
                             f"expected n={n} (every prompt must be sampled n times)")
    by_source: dict[str, list[list[Mapping]]] = {}
    for (source, _), group in groups.items():
        by_source.setdefault(source, []).append(group)
    if "all" in by_source:
        raise ValueError('summarise: "all" is reserved for the overall figures; rename that datasource')
    summary = {source: _figures(by_source[source], n, max_new_tokens) for source in sorted(by_source)}
    summary["all"] = _figures(list(groups.values()), n, max_new_tokens)
    return summary
