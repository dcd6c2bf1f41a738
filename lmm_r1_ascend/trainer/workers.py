"""Actor, Reference and Critic workers: plain classes, each owning one model on one device.

They run in-process here (distributed.mode=local) and are the classes a Ray worker group
will host, one per rank (issue 7). Each forward goes through packed micro-batches under
a token budget (no padding, no cross-sample attention).
"""

from __future__ import annotations

from typing import Iterable

import torch

from lmm_r1_ascend.algorithms.config import AlgorithmConfig
from lmm_r1_ascend.algorithms.objectives import actor_loss, critic_loss
from lmm_r1_ascend.engines.torch_engine import TorchEngine
from lmm_r1_ascend.experience import ExperienceBatch, micro_batches
from lmm_r1_ascend.kernels.packing import split_by_token_budget
from lmm_r1_ascend.models.forward import packed_log_probs, packed_values, samples_from_experience


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0)


def _infer_chunks(batch: ExperienceBatch, max_tokens: int) -> list[list[int]]:
    return split_by_token_budget(batch.sequence_lengths, max_tokens)


def average_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per key, the mean over the rows that have it (micro-batches, mini-batches)."""
    keys = {k for r in rows for k in r}
    return {k: sum(r[k] for r in rows if k in r) / sum(1 for r in rows if k in r) for k in sorted(keys)}


class ReferenceWorker:
    """The frozen reference policy: per-token log-probs of responses."""

    def __init__(self, model: torch.nn.Module, *, temperature: float, max_tokens: int):
        self.model, self.temperature, self.max_tokens = model, temperature, max_tokens

    @torch.no_grad()
    def log_probs(self, batch: ExperienceBatch) -> list[torch.Tensor]:
        out: list[torch.Tensor] = [None] * len(batch)  # type: ignore[list-item]
        for idx in _infer_chunks(batch, self.max_tokens):
            sub = batch.select(idx)
            res = packed_log_probs(self.model, samples_from_experience(sub), temperature=self.temperature)
            for i, lp in zip(idx, res.log_probs):
                out[i] = lp.float().cpu()
        return out


class CriticWorker:
    """The value model and its optimizer."""

    def __init__(self, critic: torch.nn.Module, engine: TorchEngine, *, max_tokens: int):
        self.model, self.engine, self.max_tokens = critic, engine, max_tokens

    @torch.no_grad()
    def values(self, batch: ExperienceBatch) -> list[torch.Tensor]:
        self.model.eval()
        out: list[torch.Tensor] = [None] * len(batch)  # type: ignore[list-item]
        for idx in _infer_chunks(batch, self.max_tokens):
            for i, v in zip(idx, packed_values(self.model, samples_from_experience(batch.select(idx)))):
                out[i] = v.float().cpu()
        self.model.train()
        return out

    def train_minibatch(self, minibatch: ExperienceBatch, cfg: AlgorithmConfig) -> dict[str, float]:
        """One optimizer step over a mini-batch, accumulated over packed micro-batches."""
        rows = []
        device = next(self.model.parameters()).device
        for micro in micro_batches(minibatch, self.max_tokens, agg_mode=cfg.loss_agg_mode,
                                   constant=cfg.loss_agg_constant):
            mb = micro.batch
            values = _cat(packed_values(self.model, samples_from_experience(mb)))
            out = critic_loss(cfg, values.float(), mb.packed("values").to(device), mb.packed("returns").to(device),
                              mb.packed("action_mask").to(device), normaliser=micro.normaliser,
                              cu_seqlens=mb.response_cu_seqlens())
            self.engine.backward(out.loss)
            rows.append(out.metrics())
        grad_norm = self.engine.step()
        return {**average_metrics(rows), "critic/grad_norm": grad_norm, "critic/lr": self.engine.lr}


class ActorWorker:
    """The policy, its optimizer, and its weights for the rollout engine."""

    def __init__(self, model: torch.nn.Module, engine: TorchEngine, *, temperature: float, max_tokens: int):
        self.model, self.engine = model, engine
        self.temperature, self.max_tokens = temperature, max_tokens

    def train_minibatch(self, minibatch: ExperienceBatch, cfg: AlgorithmConfig) -> dict[str, float]:
        rows = []
        device = next(self.model.parameters()).device
        for micro in micro_batches(minibatch, self.max_tokens, agg_mode=cfg.loss_agg_mode,
                                   constant=cfg.loss_agg_constant):
            mb = micro.batch
            res = packed_log_probs(self.model, samples_from_experience(mb), temperature=self.temperature,
                                   return_entropy=True)
            log_probs, entropy = _cat(res.log_probs), _cat(res.entropy)
            ref = mb.packed("ref_log_probs").to(device) if mb.ref_log_probs is not None else None
            out = actor_loss(cfg, log_probs, mb.packed("log_probs").to(device), mb.packed("advantages").to(device),
                             mb.packed("action_mask").to(device), normaliser=micro.normaliser,
                             ref_log_probs=ref, entropy=entropy, cu_seqlens=mb.response_cu_seqlens())
            self.engine.backward(out.loss)
            rows.append(out.metrics())
        grad_norm = self.engine.step()
        return {**average_metrics(rows), "actor/grad_norm": grad_norm, "actor/lr": self.engine.lr}

    def named_weights(self) -> Iterable[tuple[str, torch.Tensor]]:
        """The weights the rollout engine needs (every parameter and buffer of the policy)."""
        for name, tensor in self.model.state_dict().items():
            yield name, tensor.detach()
