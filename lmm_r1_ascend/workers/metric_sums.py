"""Training metrics that merge exactly across micro-batches and data-parallel ranks.

A mini-batch is split into packed micro-batches (token budget) and, under data
parallelism, across ranks first. Reported metrics must not depend on that split, or a
2-rank run could not be compared with a single-process one. Each micro-batch metric is
one of three kinds, decided by its key:
- additive: loss terms already divided by the MINI-BATCH normaliser (loss/*, policy/loss,
  policy/entropy, critic/loss): their sum over micro-batches is the mini-batch value;
- extreme: keys ending in _min / _max: min / max;
- everything else (clip fractions, ratio means, value means): a mean weighted by the
  micro-batch's action-token count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

ADDITIVE_KEYS = frozenset({"policy/loss", "policy/entropy", "critic/loss"})  # besides every loss/* key


def _kind(key: str) -> str:
    if key.startswith("loss/") or key in ADDITIVE_KEYS:
        return "sum"
    if key.endswith("_min"):
        return "min"
    if key.endswith("_max"):
        return "max"
    return "mean"


@dataclass
class MetricSums:
    """Partial aggregates of micro-batch metrics; `merge` is associative, `result` finalises."""

    sums: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    extremes: dict[str, float] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)  # same on every rank (grad norm, lr): kept as is
    # The on-policy update's detached log-probs (packed response tokens of each real micro-batch),
    # concatenated in merge order: ranks hold contiguous shards, so it is the mini-batch's order.
    log_probs: list[torch.Tensor] = field(default_factory=list)

    def add(self, metrics: dict[str, float], weight: float) -> MetricSums:
        """One micro-batch's metrics; weight: its action-token count (for the weighted means)."""
        for key, value in metrics.items():
            kind = _kind(key)
            if kind == "sum":
                self.sums[key] = self.sums.get(key, 0.0) + value
            elif kind == "mean":
                self.sums[key] = self.sums.get(key, 0.0) + value * weight
                self.weights[key] = self.weights.get(key, 0.0) + weight
            elif not math.isnan(value):  # NaN: a micro-batch without action tokens has no extreme
                pick = min if kind == "min" else max
                self.extremes[key] = pick(self.extremes.get(key, value), value)
        return self

    def merge(self, other: MetricSums) -> MetricSums:
        out = MetricSums(dict(self.sums), dict(self.weights), dict(self.extremes), {**self.scalars, **other.scalars},
                         self.log_probs + other.log_probs)
        for key, value in other.sums.items():
            out.sums[key] = out.sums.get(key, 0.0) + value
        for key, value in other.weights.items():
            out.weights[key] = out.weights.get(key, 0.0) + value
        for key, value in other.extremes.items():
            pick = min if key.endswith("_min") else max
            out.extremes[key] = pick(out.extremes.get(key, value), value)
        return out

    def per_sample_log_probs(self, lengths: list[int]) -> list[torch.Tensor]:
        """The collected on-policy log-probs cut into samples of `lengths` response tokens."""
        return list(torch.cat(self.log_probs).split(lengths))

    def result(self) -> dict[str, float]:
        out = dict(self.scalars)
        for key, value in self.sums.items():
            if key in self.weights:
                w = self.weights[key]
                out[key] = value / w if w > 0 else float("nan")
            else:
                out[key] = value
        out.update(self.extremes)
        return dict(sorted(out.items()))


def merge_all(parts: list[MetricSums]) -> MetricSums:
    total = MetricSums()
    for part in parts:
        total = total.merge(part)
    return total
