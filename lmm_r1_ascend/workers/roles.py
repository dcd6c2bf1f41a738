"""Actor, Reference and Critic workers: plain classes, each owning one model on one device.

They run in-process (distributed.mode=local) or inside a Ray actor per rank
(distributed/rank_worker.py). Each forward goes through packed micro-batches under a
token budget (no padding, no cross-sample attention).

Data parallelism: a rank trains on its shard of each mini-batch as its RankShard says
(experience/shard_plan.py states the gradient contract): the WHOLE mini-batch's loss
normaliser, the same number of forwards/backwards on every rank (`n_micro`, padded with
zero-weighted repeats of a real micro-batch), and the engine's world-size factor.

Non-finite steps: the engines skip an optimizer step whose loss or grad norm is NaN/inf
(engines/base.py); the train methods report it as `<prefix>/skipped_steps` (1 or 0 per step,
the same on every rank). Tests plant NaN losses by wrapping the engine (tests/fault_hooks.py).

Trained models are called through their engine's module, a `PolicyLogProbs` /
`CriticValues` wrapper (models/train_modules.py): under ZeRO-3 that is the only way their
partitioned weights are whole and their gradients accumulate.
"""

from __future__ import annotations

from typing import Iterable

import torch

from lmm_r1_ascend.algorithms.config import AlgorithmConfig
from lmm_r1_ascend.algorithms.objectives import actor_loss, critic_loss
from lmm_r1_ascend.algorithms.rollout_correction import correction_weights
from lmm_r1_ascend.engines.base import TrainingEngine
from lmm_r1_ascend.experience import ExperienceBatch, micro_batches
from lmm_r1_ascend.experience.micro import MicroBatch
from lmm_r1_ascend.kernels.packing import split_by_token_budget
from lmm_r1_ascend.models.forward import samples_from_experience
from lmm_r1_ascend.models.train_modules import CriticValues, PolicyLogProbs
from lmm_r1_ascend.workers.metric_sums import MetricSums


def _infer_chunks(batch: ExperienceBatch, max_tokens: int) -> list[list[int]]:
    return split_by_token_budget(batch.sequence_lengths, max_tokens)


def _padded(items: list, n: int | None) -> list[tuple[object, float]]:
    """(item, weight 1) per item, then (items[0], weight 0) repeats up to n."""
    if n is not None and n < len(items):
        raise ValueError(f"n_micro={n} is smaller than this shard's {len(items)} micro-batches")
    out = [(item, 1.0) for item in items]
    return out + [(items[0], 0.0)] * ((n or 0) - len(items))


@torch.no_grad()
def _per_sample(batch: ExperienceBatch, max_tokens: int, forward, n_chunks: int | None = None) -> list[torch.Tensor]:
    """forward(samples) -> (T_resp,) response-token values of the samples, concatenated; run on
    packed chunks under the token budget and split back into per-sample float32 CPU tensors.
    n_chunks pads the forward count with discarded repeats (ZeRO-3 ranks must stay in step)."""
    out: list[torch.Tensor] = [None] * len(batch)  # type: ignore[list-item]
    for idx, weight in _padded(_infer_chunks(batch, max_tokens), n_chunks):
        sub = batch.select(idx)
        parts = forward(samples_from_experience(sub)).split(sub.response_lengths)
        if weight:
            for i, t in zip(idx, parts):
                out[i] = t.float().cpu()
    return out


def _train_micro_batches(engine: TrainingEngine, micros: list[MicroBatch], n_micro: int | None, real: bool, loss_fn,
                         prefix: str) -> MetricSums:
    """Accumulate over micro-batches (zero-weighted padding up to n_micro), then one optimizer step."""
    plan = _padded(micros, n_micro) if real else [(micros[0], 0.0)] * (n_micro or 1)
    sums = MetricSums()
    for k, (micro, weight) in enumerate(plan):
        out = loss_fn(micro)
        loss = out.loss if weight == 1.0 else out.loss * weight
        engine.backward(loss, last=k == len(plan) - 1)
        if weight:
            sums.add(out.metrics(), weight=float(sum(micro.batch.action_counts)))
            if getattr(out, "forward_log_probs", None) is not None:
                sums.log_probs.append(out.forward_log_probs.cpu())
    lr = engine.lr  # the rate this step uses (step() advances the schedule)
    grad_norm = engine.step()
    skipped = engine.last_step_skipped
    sums.scalars = {f"{prefix}/grad_norm": grad_norm, f"{prefix}/lr": lr, f"{prefix}/skipped_steps": float(skipped)}
    return sums


def _check_wrapped(engine, wrapper: type) -> None:
    inner = getattr(engine, "unwrapped", engine.module)
    if not isinstance(inner, wrapper):
        raise TypeError(f"the engine must train a {wrapper.__name__} wrapper of the model (models/train_modules.py), "
                        f"got {type(inner).__name__}")


def average_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per key, the mean over the rows that have it (micro-batches, mini-batches)."""
    keys = {k for r in rows for k in r}
    return {k: sum(r[k] for r in rows if k in r) / sum(1 for r in rows if k in r) for k in sorted(keys)}


class ReferenceWorker:
    """The frozen reference policy: per-token log-probs of responses."""

    def __init__(self, model: torch.nn.Module, *, temperature: float, max_tokens: int):
        self.model, self.temperature, self.max_tokens = model, temperature, max_tokens
        self._forward = PolicyLogProbs(model, temperature)  # a plain module: no engine wraps the reference

    def log_probs(self, batch: ExperienceBatch) -> list[torch.Tensor]:
        return _per_sample(batch, self.max_tokens, lambda samples: self._forward(samples)["log_probs"])


class TrainedRole:
    """A model with a training engine: the update loop the actor and the critic share.

    Subclasses set `prefix` (metrics namespace), `wrapper` (the train_modules class the engine
    must train) and `_loss(micro, cfg, device)` -> an object with `.loss` and `.metrics()`.
    """

    prefix: str
    wrapper: type

    def __init__(self, model: torch.nn.Module, engine, *, max_tokens: int):
        self.model, self.engine, self.max_tokens = model, engine, max_tokens
        _check_wrapped(engine, self.wrapper)

    def _loss(self, micro: MicroBatch, cfg: AlgorithmConfig, device: torch.device, on_policy: bool = False):
        raise NotImplementedError

    def train_shard(self, shard: ExperienceBatch, cfg: AlgorithmConfig, *, normaliser: float | None = None,
                    n_micro: int | None = None, real: bool = True, on_policy: bool = False) -> MetricSums:
        """One optimizer step over (this rank's shard of) a mini-batch, following the rank's
        experience.shard_plan.RankShard (normaliser, n_micro, real); see the module docstring.
        on_policy (actor only): the weights are the old policy's, so this forward's detached
        log-probs are the old log-probs (see ActorWorker._loss); they come back in .log_probs."""
        device = next(self.model.parameters()).device
        micros = micro_batches(shard, self.max_tokens, agg_mode=cfg.loss_agg_mode, constant=cfg.loss_agg_constant,
                               normaliser=normaliser)
        return _train_micro_batches(self.engine, micros, n_micro, real,
                                    lambda m: self._loss(m, cfg, device, on_policy), self.prefix)

    def train_minibatch(self, minibatch: ExperienceBatch, cfg: AlgorithmConfig) -> dict[str, float]:
        """One optimizer step over a whole mini-batch (single process)."""
        return self.train_shard(minibatch, cfg).result()


class CriticWorker(TrainedRole):
    """The value model and its training engine (torch or DeepSpeed) over a CriticValues wrapper of it."""

    prefix, wrapper = "critic", CriticValues

    def values(self, batch: ExperienceBatch, n_chunks: int | None = None) -> list[torch.Tensor]:
        """Per-sample values of response tokens; n_chunks pads the forward count (ZeRO-3 ranks in step)."""
        self.model.eval()
        try:
            return _per_sample(batch, self.max_tokens, self.engine.module, n_chunks)
        finally:
            self.model.train()

    def _loss(self, micro: MicroBatch, cfg: AlgorithmConfig, device: torch.device, on_policy: bool = False):
        if on_policy:
            raise ValueError("on_policy is the actor's: the critic's values have no old-policy counterpart")
        mb = micro.batch
        values = self.engine.module(samples_from_experience(mb))
        return critic_loss(cfg, values.float(), mb.packed("values").to(device), mb.packed("returns").to(device),
                           mb.packed("action_mask").to(device), normaliser=micro.normaliser,
                           cu_seqlens=mb.response_cu_seqlens())


class ActorWorker(TrainedRole):
    """The policy, its training engine, and its weights for the rollout engine."""

    prefix, wrapper = "actor", PolicyLogProbs

    def __init__(self, model: torch.nn.Module, engine, *, temperature: float, max_tokens: int):
        super().__init__(model, engine, max_tokens=max_tokens)
        self.temperature = temperature

    def _loss(self, micro: MicroBatch, cfg: AlgorithmConfig, device: torch.device, on_policy: bool = False):
        """on_policy: this is the only update of the rollout (one epoch, one mini-batch), so the
        weights are still those a recompute forward would have used: the old log-probs are this
        forward's, detached (the ratio is exactly 1, as verl and TRL do on-policy), and the
        rollout-correction weights are computed here from them and mb.rollout_log_probs. The
        detached log-probs ride back on the output (forward_log_probs) for the mismatch metrics."""
        mb = micro.batch
        res = self.engine.module(samples_from_experience(mb), return_entropy=True)
        ref = mb.packed("ref_log_probs").to(device) if mb.ref_log_probs is not None else None
        mask, cu = mb.packed("action_mask").to(device), mb.response_cu_seqlens()
        if on_policy:
            old = res["log_probs"].detach()
            weights = None
            if cfg.corrections:
                low, high = cfg.rollout_correction_bounds
                weights = correction_weights(cfg.corrections, old, mb.packed("rollout_log_probs").to(device), mask,
                                             cu, low=low, high=high).weights
        else:
            old = mb.packed("log_probs").to(device)
            weights = mb.packed("correction_weights").to(device) if mb.correction_weights is not None else None
        out = actor_loss(cfg, res["log_probs"], old, mb.packed("advantages").to(device), mask,
                         normaliser=micro.normaliser, ref_log_probs=ref, entropy=res["entropy"],
                         cu_seqlens=cu, correction_weights=weights)
        if on_policy:
            out.forward_log_probs = old
        return out

    def train_on_policy(self, minibatch: ExperienceBatch, cfg: AlgorithmConfig
                        ) -> tuple[dict[str, float], list[torch.Tensor]]:
        """The rollout's only optimizer step (single process): its metrics and the old log-probs
        its forward computed, per sample (R_i,) float32 on the CPU, in minibatch order."""
        sums = self.train_shard(minibatch, cfg, on_policy=True)
        return sums.result(), sums.per_sample_log_probs(minibatch.response_lengths)

    def log_probs(self, batch: ExperienceBatch, n_chunks: int | None = None) -> list[torch.Tensor]:
        """The current policy's log-probs of the response tokens, under no_grad on the reference
        forward's packed chunks: the old log-probs of algorithm.old_logprobs=recompute (and a
        weight-sync check). n_chunks pads the forward count (ZeRO-3 ranks in step)."""
        return _per_sample(batch, self.max_tokens, lambda samples: self.engine.module(samples)["log_probs"], n_chunks)

    def named_weights(self, bucket_bytes: int = 256 << 20) -> Iterable[tuple[str, torch.Tensor]]:
        """The weights the rollout engine needs: every parameter and buffer of the policy, full
        (gathered bucket by bucket under ZeRO-3: every rank must iterate to the end)."""
        prefix = PolicyLogProbs.prefix
        return ((name.removeprefix(prefix), t) for name, t in self.engine.iter_full_weights(bucket_bytes))
