"""Supervised fine-tuning (teacher forcing) on the reference responses of prompt rows.

The SFT stage trains the policy on `-log p(reference response | prompt)`, the reference taken
from each row's REFERENCE_FIELD ("response" by default, `data.response_key`), tokenised
without special tokens and closed by the tokenizer's end-of-turn token (the token the rollout
engines stop at), so the model learns to stop where a reference stops.

It runs through the actor's own on-policy update (ActorWorker with on_policy=True, on every
engine and placement: torch or DeepSpeed ZeRO, local or Ray ranks, packed micro-batches)
with one identity instead of a second training path: with the old log-probs taken from the
same forward (ratio exactly 1) and every advantage 1, the PPO surrogate's token loss is
`-exp(lp - sg(lp))`, whose gradient is `-grad lp`, the cross-entropy's (no clipping is
active at ratio 1). So an on-policy actor step on `sft_batch(...)` with `sft_algorithm(...)`
is a gradient step of `sft_loss` under the same aggregation mode and normaliser; the
surrogate's *value* is -1, so the trainer reports `sft_loss` computed from the log-probs that
forward returns. tests/unit/test_sft.py checks value and gradient against a per-sequence
cross-entropy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from lmm_r1_ascend.algorithms.aggregation import aggregate
from lmm_r1_ascend.algorithms.config import AlgorithmConfig
from lmm_r1_ascend.data.types import PromptItem
from lmm_r1_ascend.experience import ExperienceBatch

REFERENCE_FIELD = "response"


def reference_text(item: PromptItem, key: str = REFERENCE_FIELD) -> str | None:
    """The row's reference response (a non-empty string), or None when it has none."""
    value = item.meta.get(key)
    return value if isinstance(value, str) and value.strip() else None


def reference_ids(text: str, tokenizer: Any) -> torch.Tensor:
    """(R,) int64: the response's tokens (no special tokens added) + the tokenizer's eos token."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token: SFT closes every reference with it (the engines' stop)")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor([*ids, eos], dtype=torch.int64)


def sft_batch(items: Sequence[PromptItem], tokenizer: Any, key: str = REFERENCE_FIELD) -> ExperienceBatch:
    """A teacher-forcing batch: sample i is (items[i].prompt_ids, its reference + eos), every
    response token trained (action_mask True), advantages 1; log_probs are zeros the on-policy
    forward replaces (see the module docstring). Images ride along as in a rollout.
    Raises ValueError naming the row when one has no reference (the dataset filters those)."""
    prompts, responses = [], []
    for item in items:
        text = reference_text(item, key)
        if text is None:
            raise ValueError(f"{item.meta.get('source', 'a row')}: no reference response in field '{key}'")
        prompts.append(torch.as_tensor(item.prompt_ids, dtype=torch.int64))
        responses.append(reference_ids(text, tokenizer))
    n = len(items)
    mm = [{"pixel_values": it.pixel_values, "image_grid_thw": it.image_grid_thw} if it.pixel_values is not None
          else {} for it in items]
    return ExperienceBatch(
        prompt_ids=prompts, response_ids=responses,
        action_mask=[torch.ones(r.numel(), dtype=torch.bool) for r in responses],
        log_probs=[torch.zeros(r.numel()) for r in responses], rewards=torch.zeros(n),
        group_ids=torch.arange(n), advantages=[torch.ones(r.numel()) for r in responses],
        multimodal=mm if any(mm) else None)


def sft_algorithm(alg: AlgorithmConfig) -> AlgorithmConfig:
    """The run's algorithm settings under which the actor's on-policy step is an SFT step: PPO's
    surrogate (ratio 1, so any clip range is inactive), no KL term, no rollout correction;
    aggregation, its constant and the entropy bonus stay the run's."""
    return dataclasses.replace(alg, policy_loss="ppo", use_kl_loss=False, init_kl_coef=0.0, dual_clip=None,
                               rollout_correction=["none"], advantage_estimator="reinforce",
                               n_samples_per_prompt=1, dynamic_sampling=False)


def sft_loss(log_probs: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean", normaliser: float | None = None,
             *, cu_seqlens: torch.Tensor | Sequence[int] | None = None, constant: float | None = None) -> torch.Tensor:
    """Teacher-forced cross-entropy: aggregate(-log_probs) over the mask by `mode` (token-mean:
    mean NLL per reference token). log_probs/mask: (B, L) padded or (T,) packed with cu_seqlens;
    returns a 0-dim float32 tensor (differentiable in log_probs)."""
    return aggregate(-log_probs.float(), mask, mode, normaliser, cu_seqlens=cu_seqlens, constant=constant)
