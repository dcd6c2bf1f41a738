"""One step's rollout: draw prompts, sample n responses each, score them, shape the rewards,
and (DAPO dynamic sampling) keep drawing until the batch holds enough informative groups.

Dynamic sampling (algorithm.dynamic_sampling, Yu et al. 2025 "DAPO"): a group whose n
rewards are all equal has zero group-baselined advantage everywhere, so it only dilutes
the update. Such groups are dropped, and further batches of `rollout_batch_size` prompts
are drawn (the dataset's position advances with each, so a checkpoint resumes exactly)
until `rollout_batch_size` informative groups are kept, at most `max_sample_batches`
draws. Kept groups beyond the target are discarded. When the last draw still leaves the
batch short, the step trains on the groups it has, and on none (no update) when it has
none; `dynamic_sampling/*` metrics say so.

Overlong shaping (reward.overlong_shaping): DAPO's soft penalty for responses in the last
`overlong_buffer_len` tokens before max_new_tokens, added to each sample's reward before the
filter (so the filter sees the reward that is trained on).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from lmm_r1_ascend.algorithms.shaping import informative_groups, overlong_penalty
from lmm_r1_ascend.rewards.scoring import Scored
from lmm_r1_ascend.rollout.base import RolloutSample

# draw(k) -> the k-th batch of this step: samples (groups of n consecutive) and their scores.
Draw = Callable[[int], tuple[list[RolloutSample], Scored]]


@dataclass
class Collected:
    """samples / scored: what trains (whole groups, prompt_index renumbered 0..G-1 in order).
    drawn / drawn_scored: every sample generated this step (what the policy did: the reward
    and length metrics describe these). metrics: dynamic_sampling/* (empty when it is off)."""

    samples: list[RolloutSample]
    scored: Scored
    drawn: list[RolloutSample]
    drawn_scored: Scored
    metrics: dict[str, float]


def shape_overlong(samples: list[RolloutSample], scored: Scored, *, max_new_tokens: int, buffer_len: int,
                   penalty: float) -> Scored:
    """scored with the overlong penalty added to the totals and kept as info["reward_overlong_penalty"]."""
    lengths = torch.tensor([int(s.response_ids.numel()) for s in samples])
    pen = overlong_penalty(lengths, max_new_tokens, buffer_len, penalty)
    return dataclasses.replace(scored, totals=scored.totals + pen, info={**scored.info, "reward_overlong_penalty": pen})


def _select(samples: list[RolloutSample], scored: Scored, rows: list[int]) -> tuple[list[RolloutSample], Scored]:
    return [samples[i] for i in rows], scored.select(rows)


def collect(draw: Draw, *, n: int, want_groups: int, dynamic: bool, max_draws: int,
            log: Callable[[str], None] = print, step: int = 0) -> Collected:
    """The step's training samples (see the module docstring); `draw` is called 1..max_draws times."""
    samples, scored = draw(0)
    if not dynamic:
        return Collected(samples, scored, samples, scored, {})
    drawn, drawn_scored = [samples], [scored]
    kept: list[tuple[list[RolloutSample], Scored]] = []
    n_kept = filtered = 0
    draws = 0
    while True:
        draws += 1
        useful = informative_groups(scored.totals, n).tolist()
        filtered += useful.count(False)
        for g, ok in enumerate(useful):
            if ok and n_kept < want_groups:
                kept.append(_select(samples, scored, list(range(g * n, (g + 1) * n))))
                n_kept += 1
        if n_kept >= want_groups or draws >= max_draws:
            break
        samples, scored = draw(draws)
        drawn.append(samples)
        drawn_scored.append(scored)
    if n_kept < want_groups:
        log(f"warning: step {step + 1}: dynamic sampling kept {n_kept} of {want_groups} groups after "
            f"algorithm.max_sample_batches={max_draws} draws (the others had all-equal rewards); "
            + ("this step trains on fewer samples" if n_kept else "no group is informative: the update is skipped")
            + ". Raise max_sample_batches, or check that the data is neither far too easy nor too hard.")
    out_samples: list[RolloutSample] = []
    for g, (group, _) in enumerate(kept):
        out_samples += [dataclasses.replace(s, prompt_index=g) for s in group]
    total_groups = sum(len(d) for d in drawn) // n
    metrics = {"dynamic_sampling/draws": float(draws), "dynamic_sampling/kept_groups": float(n_kept),
               "dynamic_sampling/filtered_groups": float(filtered),
               "dynamic_sampling/filtered_frac": filtered / total_groups,
               "dynamic_sampling/short": float(n_kept < want_groups)}
    train_scored = Scored.cat([s for _, s in kept]) if kept else Scored(torch.zeros(0), {}, [])
    return Collected(out_samples, train_scored, [s for d in drawn for s in d], Scored.cat(drawn_scored), metrics)
