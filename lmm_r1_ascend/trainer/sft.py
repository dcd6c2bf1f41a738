"""The SFT stage (`--stage sft`): teacher-forced cross-entropy on the rows' reference responses.

It is PPOTrainer's loop with another step: the same data loader and templating, training
ranks (torch or DeepSpeed ZeRO, local or Ray), checkpoints and resume, validation and
trackers. A step takes rollout.rollout_batch_size rows, builds their teacher-forcing batch
(workers/sft.py), and makes rollout_batch_size / trainer.train_batch_size optimizer steps
(times trainer.max_epochs) on seeded mini-batches; nothing is generated. The new weights go
to the rollout engine, which only the held-out evaluation uses.

Metrics per step: loss/sft (the aggregated NLL of the step's references, from each
mini-batch's forward before its update), entropy, actor/grad_norm, actor/lr,
response_length/mean (reference tokens). Validation adds eval/loss: the teacher-forced NLL
(token mean) of the held-out rows that carry a reference, next to the sampled accuracy.
"""

from __future__ import annotations

import time

import torch

from lmm_r1_ascend.algorithms.aggregation import loss_normaliser
from lmm_r1_ascend.config import TrainConfig
from lmm_r1_ascend.experience.micro import minibatch_indices
from lmm_r1_ascend.trainer.ppo import PPOTrainer
from lmm_r1_ascend.trainer.ppo_update import minibatch_seed
from lmm_r1_ascend.workers.roles import average_metrics
from lmm_r1_ascend.workers.sft import reference_text, sft_algorithm, sft_batch, sft_loss

# the actor's on-policy step reports the PPO surrogate (-1 at ratio 1): not a figure of SFT
_SURROGATE_KEYS = ("loss/actor", "loss/policy", "policy/clip_frac", "policy/dual_clip_frac", "policy/approx_kl",
                   "policy/ratio_")


class SFTTrainer(PPOTrainer):
    def __init__(self, cfg: TrainConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        self.key = cfg.data.response_key
        self.sft_alg = sft_algorithm(cfg.algorithm)
        self.eval_batch = None
        if self.validator is not None:
            held = [p for p in self.validator.prompts if reference_text(p, self.key) is not None]
            self.eval_batch = sft_batch(held, self.parts.tokenizer, self.key) if held else None

    def _step_summary(self, metrics: dict[str, float]) -> str:
        return f"loss {metrics['loss/sft']:.4f} step {metrics['timing/step']:.1f}s"

    def train_step(self) -> dict[str, float]:
        c, cfg, alg = self.parts, self.cfg, self.sft_alg
        start = time.perf_counter()
        batch = sft_batch(self._next_prompts(), c.tokenizer, self.key)
        rows, loss, weight = [], 0.0, 0.0
        for epoch in range(cfg.trainer.max_epochs):
            order = minibatch_indices(len(batch), cfg.trainer.train_batch_size,
                                      seed=minibatch_seed(cfg.seed, self.step, epoch))
            for idx in order:
                mb = batch.select(idx)
                row, log_probs = c.cluster.train_actor_on_policy(mb, alg)
                rows.append({k: v for k, v in row.items() if not k.startswith(_SURROGATE_KEYS)})
                lp = torch.cat(log_probs)
                mask = torch.ones_like(lp, dtype=torch.bool)
                mb_loss = float(sft_loss(lp, mask, alg.loss_agg_mode, cu_seqlens=mb.response_cu_seqlens(),
                                         constant=alg.loss_agg_constant))
                w = loss_normaliser(alg.loss_agg_mode, mb.action_counts, alg.loss_agg_constant)
                loss, weight = loss + mb_loss * w, weight + w
        trained = time.perf_counter()
        c.rollout.sync_weights()
        self.step += 1
        self.step_skips = {"actor": [float(r.get("actor/skipped_steps", 0.0)) for r in rows]}
        lengths = torch.tensor(batch.response_lengths, dtype=torch.float32)
        now = time.perf_counter()
        metrics = {
            "loss/sft": loss / weight, **average_metrics(rows),
            "actor/skipped_steps": sum(self.step_skips["actor"]),
            "response_length/mean": float(lengths.mean()), "response_length/max": float(lengths.max()),
            "timing/train_actor": trained - start, "timing/weight_sync": now - trained, "timing/step": now - start,
            "throughput/tokens_per_s": sum(batch.sequence_lengths) / max(now - start, 1e-9),
            "data/epoch": c.dataset.epoch, "memory/peak_gb": c.cluster.peak_memory_gb(),
        }
        return self._with_common_metrics(metrics)

    def held_out_loss(self) -> float | None:
        """Token-mean NLL of the held-out references under the current weights (None without any)."""
        if self.eval_batch is None:
            return None
        lp = torch.cat(self.parts.cluster.actor_log_probs(self.eval_batch))
        return float(sft_loss(lp, torch.ones_like(lp, dtype=torch.bool), cu_seqlens=self.eval_batch.response_cu_seqlens()))

    def _validate(self, step: int) -> dict[str, float]:
        metrics = super()._validate(step)
        loss = self.held_out_loss()
        if loss is not None:
            metrics["eval/loss"] = loss
            self.log(f"held-out loss at step {step}: {loss:.4f} ({len(self.eval_batch)} references)")
        return metrics
