"""The training half of a PPO step, after rollout and rewards: the old policy's log-probs
(recomputed by the actor, or the rollout engine's), the rollout/trainer mismatch and its
correction weights, reference log-probs, critic values, KL-shaped advantages, critic then
actor updates over seeded mini-batches.

One function, called by `PPOTrainer.train_step` and by the parity replay
(`lmm_r1_ascend.parity`), so the replay is the trainer's computation and not a copy of it.
`workers` is anything with the TrainingCluster methods actor_log_probs, ref_log_probs,
critic_values, train_critic, train_actor and train_actor_on_policy (distributed/cluster.py).

When the rollout gets a single actor step (one epoch, one mini-batch) and no reference, the
recompute forward is folded into that step: its forward, before any weight change, IS the old
policy's, so its detached log-probs are the old log-probs (ratio exactly 1), the correction
weights are computed from them inside the loss, and the mismatch metrics after the step. Same
numbers as the separate recompute, one packed forward fewer (the demo's case; verl and TRL
take the same shortcut on-policy).
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

from lmm_r1_ascend.algorithms.config import AlgorithmConfig
from lmm_r1_ascend.algorithms.rollout_correction import correction_weights, mismatch_metrics
from lmm_r1_ascend.experience import ExperienceBatch
from lmm_r1_ascend.experience.micro import minibatch_indices


@dataclass
class UpdateResult:
    """batch: with ref log-probs, values, advantages and returns. advantages: the estimator's
    output (mean_kl, ...). kl_coef: the coefficient used (before the controller's update).
    critic_rows / actor_rows: one metrics dict per optimizer step. metrics: per-rollout
    figures (mismatch/*, rollout_correction/*; empty with old_logprobs=rollout)."""

    batch: ExperienceBatch
    advantages: Any
    kl_coef: float
    critic_rows: list[dict[str, float]]
    actor_rows: list[dict[str, float]]
    metrics: dict[str, float] = field(default_factory=dict)


def minibatch_seed(seed: int, step: int, epoch: int) -> int:
    """The mini-batch shuffle seed of (run seed, trainer step, epoch)."""
    return seed + 7919 * step + epoch


def folds_recompute(batch: ExperienceBatch, alg: AlgorithmConfig, *, train_batch_size: int,
                    max_epochs: int) -> bool:
    """Whether the old log-probs can come from the update's own forward instead of a recompute
    forward before it: the rollout gets exactly one actor step (one epoch, one mini-batch), so
    that step's weights are the ones the recompute would use, and nothing before the update
    reads the old log-probs (no reference: the KL-shaped rewards and the kl metric do)."""
    return (alg.old_logprobs == "recompute" and max_epochs == 1 and train_batch_size >= len(batch)
            and not alg.uses_reference)


def ppo_update(workers, batch: ExperienceBatch, alg: AlgorithmConfig, *, kl_ctl, train_batch_size: int,
               max_epochs: int, seed: int, step: int,
               timed: Callable[[str], AbstractContextManager] = lambda name: nullcontext()) -> UpdateResult:
    metrics: dict[str, float] = {}
    fold = folds_recompute(batch, alg, train_batch_size=train_batch_size, max_epochs=max_epochs)
    if fold:
        batch = dataclasses.replace(batch, rollout_log_probs=batch.log_probs)
    elif alg.old_logprobs == "recompute":
        with timed("old_log_probs"):
            batch, metrics = recompute_old_log_probs(workers, batch, alg)
    if alg.uses_reference:
        with timed("reference"):
            batch.ref_log_probs = workers.ref_log_probs(batch)
    if alg.uses_critic:
        with timed("critic_forward"):
            batch.values = workers.critic_values(batch)
    batch, adv = batch.with_advantages(alg, kl_coef=kl_ctl.value)
    kl_coef = kl_ctl.value
    kl_ctl.update(float(adv.mean_kl), n_steps=len(batch))
    critic_rows: list[dict[str, float]] = []
    actor_rows: list[dict[str, float]] = []
    for epoch in range(max_epochs):
        order = minibatch_indices(len(batch), train_batch_size, seed=minibatch_seed(seed, step, epoch))
        parts = [batch.select(idx) for idx in order]
        if alg.uses_critic:
            with timed("train_critic"):
                critic_rows += [workers.train_critic(mb, alg) for mb in parts]
        with timed("train_actor"):
            if fold:  # one epoch, one mini-batch (folds_recompute)
                row, old_in_order = workers.train_actor_on_policy(parts[0], alg)
                actor_rows.append(row)
                old: list = [None] * len(batch)
                for i, lp in zip(order[0], old_in_order):
                    old[i] = lp.to(batch.log_probs[i].dtype)
            else:
                actor_rows += [workers.train_actor(mb, alg) for mb in parts]
    if fold:
        batch, metrics = with_old_log_probs(batch, old, alg)
    return UpdateResult(batch, adv, kl_coef, critic_rows, actor_rows, metrics)


def recompute_old_log_probs(workers, batch: ExperienceBatch, alg: AlgorithmConfig
                            ) -> tuple[ExperienceBatch, dict[str, float]]:
    """The actor's own log-probs become the old policy's (the PPO ratio's denominator); the
    rollout engine's move to rollout_log_probs (the behaviour policy). Returns the new batch
    (with correction_weights when alg.rollout_correction asks for any) and the mismatch and
    correction metrics."""
    return with_old_log_probs(dataclasses.replace(batch, rollout_log_probs=batch.log_probs),
                              workers.actor_log_probs(batch), alg)


def with_old_log_probs(batch: ExperienceBatch, old: list, alg: AlgorithmConfig
                       ) -> tuple[ExperienceBatch, dict[str, float]]:
    """batch (whose rollout_log_probs are set) with the trainer's old log-probs `old` (B tensors
    (R_i,)), its correction weights when alg.rollout_correction asks for any, and the mismatch
    and correction metrics."""
    new = dataclasses.replace(batch, log_probs=old)
    args = (new.packed("log_probs"), new.packed("rollout_log_probs"), new.packed("action_mask"),
            new.response_cu_seqlens())
    metrics = mismatch_metrics(*args)
    if alg.corrections:
        low, high = alg.rollout_correction_bounds
        out = correction_weights(alg.corrections, *args, low=low, high=high)
        new = dataclasses.replace(new, correction_weights=list(out.weights.split(new.response_lengths)))
        metrics.update(out.metrics())
    return new, metrics
