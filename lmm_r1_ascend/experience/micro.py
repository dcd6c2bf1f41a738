"""Shuffled mini-batches and token-budget micro-batches of an ExperienceBatch.

One optimizer step consumes a mini-batch; its gradient is accumulated over
micro-batches that fit a token budget (``kernels.packing.split_by_token_budget``).
Each micro-batch carries the *mini-batch* loss normaliser, so the accumulated
gradient equals the whole mini-batch gradient for every aggregation mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmm_r1_ascend.algorithms.aggregation import loss_normaliser
from lmm_r1_ascend.experience.batch import ExperienceBatch
from lmm_r1_ascend.kernels.packing import split_by_token_budget


def minibatch_indices(n: int, batch_size: int, *, seed: int, shuffle: bool = True,
                      drop_last: bool = False) -> list[list[int]]:
    """The sample indices of each mini-batch of ``minibatches`` (same arguments)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"mini-batch size must be an int >= 1, got {batch_size!r}")
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    else:
        order = list(range(n))
    out = [order[start : start + batch_size] for start in range(0, n, batch_size)]
    return [idx for idx in out if not (drop_last and len(idx) < batch_size)]


def minibatches(
    batch: ExperienceBatch,
    batch_size: int,
    *,
    seed: int,
    shuffle: bool = True,
    drop_last: bool = False,
) -> list[ExperienceBatch]:
    """Split ``batch`` into mini-batches of ``batch_size`` samples.

    The permutation comes from a private ``torch.Generator`` seeded with ``seed`` (pass
    e.g. ``base_seed + epoch``), so it is reproducible and leaves global RNG state alone.
    The last mini-batch may be smaller unless ``drop_last``.
    """
    return [batch.select(idx) for idx in minibatch_indices(len(batch), batch_size, seed=seed, shuffle=shuffle,
                                                           drop_last=drop_last)]


@dataclass
class MicroBatch:
    """A micro-batch of a mini-batch.

    batch: the samples. indices: their positions in the mini-batch.
    normaliser: the mini-batch's loss normaliser for ``agg_mode`` (pass it to the losses).
    """

    batch: ExperienceBatch
    indices: list[int]
    normaliser: float
    agg_mode: str

    @property
    def num_tokens(self) -> int:
        """Prompt + response tokens: the packed forward's length."""
        return sum(self.batch.sequence_lengths)


def micro_batches(
    minibatch: ExperienceBatch,
    max_tokens: int,
    *,
    agg_mode: str,
    constant: float | None = None,
    hard_max_tokens: int | None = None,
    normaliser: float | None = None,
) -> list[MicroBatch]:
    """Split a mini-batch into micro-batches of at most ``max_tokens`` prompt+response tokens.

    Sequences stay whole and in order; one longer than ``max_tokens`` gets a micro-batch
    of its own, one longer than ``hard_max_tokens`` is a ValueError. ``constant`` is the
    Dr. GRPO constant for ``seq-mean-token-sum-norm``. ``normaliser`` overrides the one
    computed from ``minibatch``: pass the whole mini-batch's when ``minibatch`` is only one
    data-parallel rank's shard of it.
    """
    if normaliser is None:
        normaliser = loss_normaliser(agg_mode, minibatch.action_counts, constant)
    groups = split_by_token_budget(minibatch.sequence_lengths, max_tokens, hard_max_tokens=hard_max_tokens)
    return [MicroBatch(minibatch.select(g), list(g), normaliser, agg_mode) for g in groups]


def collate_multimodal(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate per-sample multimodal inputs along dim 0, key by key, in sample order.

    Text-only samples ({}) contribute nothing, e.g. Qwen2.5-VL's ``pixel_values``
    (patches, dim) and ``image_grid_thw`` (images, 3) of the image samples are stacked.
    """
    keys: list[str] = []
    for d in items:
        keys += [k for k in d if k not in keys]
    return {k: torch.cat([d[k] for d in items if k in d], dim=0) for k in keys}
