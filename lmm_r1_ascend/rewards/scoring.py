"""Scoring rollout samples: the one path from samples to rewards, shared by training, rollout
collection and evaluation, with one non-finite policy.

Any reward function (custom, HTTP, a future one) may hand back NaN or inf. Such a sample scores
0 in its total and in every component, gets the status ``nonfinite_reward`` and is neither
correct nor formatted, so a NaN counts the same in training metrics (reward/status/*) and in
evaluation (status/*, accuracy, format_rate), and never poisons a batch mean.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lmm_r1_ascend.rewards.inputs import reward_inputs
from lmm_r1_ascend.rewards.types import RewardInput, RewardOutput

if TYPE_CHECKING:
    from lmm_r1_ascend.rollout.base import RolloutSample

NONFINITE = "nonfinite_reward"

Reward = Callable[[Sequence[RewardInput]], list[RewardOutput]]


def guard_nonfinite(out: RewardOutput) -> RewardOutput:
    """`out` unchanged when its total and components are finite; else the same output with
    every number 0, status ``nonfinite_reward`` and a detail naming what was not finite."""
    values = {"total": float(out.total), **{k: float(v) for k, v in out.components.items()}}
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if not bad:
        return out
    detail = f"non-finite {', '.join(f'{k}={values[k]}' for k in bad)} (was status {out.status!r})"
    return dataclasses.replace(out, total=0.0, components={k: 0.0 for k in out.components}, status=NONFINITE,
                               detail=detail)


@dataclass
class Scored:
    """Rewards of B samples. totals: (B,) float32 scalar rewards; info: per-sample (B,) float32
    tensors (reward_<component>: the router's components, e.g. reward_accuracy, reward_format);
    statuses: the reward status of each sample (correct, wrong, timeout, nonfinite_reward, ...).
    inputs / outputs: the RewardInput and (guarded) RewardOutput of each sample, when scored
    here ([] when built from tensors alone)."""

    totals: torch.Tensor
    info: dict[str, torch.Tensor]
    statuses: list[str]
    inputs: list[RewardInput] = field(default_factory=list, repr=False)
    outputs: list[RewardOutput] = field(default_factory=list, repr=False)

    @classmethod
    def cat(cls, parts: list[Scored]) -> Scored:
        keys = sorted({k for p in parts for k in p.info})
        info = {k: torch.cat([p.info.get(k, torch.zeros(len(p.statuses))) for p in parts]) for k in keys}
        whole = all(len(p.outputs) == len(p.statuses) for p in parts)
        return cls(torch.cat([p.totals for p in parts]), info, [s for p in parts for s in p.statuses],
                   [i for p in parts for i in p.inputs] if whole else [],
                   [o for p in parts for o in p.outputs] if whole else [])

    def select(self, rows: list[int]) -> Scored:
        """The scores of samples `rows`, in that order."""
        idx = torch.tensor(rows, dtype=torch.int64)
        return Scored(self.totals[idx], {k: v[idx] for k, v in self.info.items()}, [self.statuses[i] for i in rows],
                      [self.inputs[i] for i in rows] if self.inputs else [],
                      [self.outputs[i] for i in rows] if self.outputs else [])


def score_outputs(outputs: Sequence[RewardOutput], inputs: Sequence[RewardInput] = ()) -> Scored:
    """Scored from the reward router's outputs (one per sample), non-finite ones guarded."""
    outs = [guard_nonfinite(o) for o in outputs]
    keys = sorted({k for o in outs for k in o.components})
    totals = torch.tensor([float(o.total) for o in outs], dtype=torch.float32)
    info = {f"reward_{k}": torch.tensor([float(o.components.get(k, 0.0)) for o in outs]) for k in keys}
    return Scored(totals, info, [o.status for o in outs], list(inputs), outs)


def trajectory_output(sample: RolloutSample) -> RewardOutput:
    """A multi-turn sample's reward (rollout/multi_turn.py): its return, the sum of the env's per-turn
    rewards. Components (metrics reward/<name>): env_return, turns, success, invalid_actions. Status:
    solved (the last step says solved or success), env_error, or how the trajectory ended (done, max_turns, token_budget, ...)."""
    t = sample.trajectory
    invalid = sum(bool(i.get("invalid_action", False)) for i in t.infos)
    comps = {"env_return": t.total_reward, "turns": float(len(t.turn_ends)), "success": float(t.success),
             "invalid_actions": float(invalid)}
    status = "env_error" if t.env_error else ("solved" if t.success else t.end_reason)
    return RewardOutput(total=t.total_reward, components=comps, status=status, detail=t.env_error,
                        info={"end_reason": t.end_reason})


def score_samples(samples: Sequence[RolloutSample], reward: Reward, tokenizer: Any) -> Scored:
    """The reward router's verdict on each sample (see reward_metrics for the metrics); multi-turn
    samples (with a trajectory) are scored by their environment instead (trajectory_output)."""
    inputs = reward_inputs(samples, tokenizer)
    multi = [getattr(s, "trajectory", None) is not None for s in samples]
    if any(multi):
        if not all(multi):
            raise ValueError("a batch mixes multi-turn and single-response samples; score them separately")
        return score_outputs([trajectory_output(s) for s in samples], inputs)
    outputs = reward(inputs)
    if len(outputs) != len(inputs):
        raise RuntimeError(f"the reward returned {len(outputs)} outputs for {len(inputs)} samples")
    return score_outputs(outputs, inputs)


def reward_metrics(samples: Sequence[RolloutSample], scored: Scored) -> dict[str, float]:
    """reward/mean, reward/std, reward/<component>, reward/status/<status>, and per-datasource
    reward/<source>/mean when the samples come from several sources."""
    totals = scored.totals
    metrics = {"reward/mean": float(totals.mean()), "reward/std": float(totals.std(unbiased=False))}
    for key, values in scored.info.items():
        if key.startswith("reward_"):
            metrics[f"reward/{key.removeprefix('reward_')}"] = float(values.mean())
    for status in sorted(set(scored.statuses)):
        metrics[f"reward/status/{status}"] = sum(s == status for s in scored.statuses) / len(scored.statuses)
    sources = sorted({s.prompt.datasource for s in samples})
    if len(sources) > 1:
        for src in sources:
            sel = [i for i, s in enumerate(samples) if s.prompt.datasource == src]
            metrics[f"reward/{src}/mean"] = float(totals[sel].mean())
    return metrics
