"""The gradient contract of data-parallel training, as one pure plan.

A mini-batch of B samples is trained on W ranks in one optimizer step. For the ranks'
gradients to add up to the single-process gradient of the mini-batch loss, three rules hold:

1. One normaliser. Every rank divides its token losses by the WHOLE mini-batch's loss
   normaliser (algorithms.aggregation.loss_normaliser over all B samples' action counts),
   never by its shard's: the mini-batch loss is then the plain sum of the ranks' losses,
   each the sum of its micro-batch losses.
2. Equal pass counts. Every rank runs the same number of forward/backward passes
   (`n_micro`, the largest shard's micro-batch count under the token budget), because
   ZeRO's gathers and reduce-scatters inside forward and backward are collectives that must
   line up. A shorter shard pads with repeats of its first micro-batch, weighted 0 (the
   loss is multiplied by 0: the graph and the collectives run, the gradient gets nothing).
   A rank with no samples (B < W) runs n_micro zero-weighted passes of sample 0 (real=False).
3. The world-size factor. DeepSpeed averages gradients over ranks; the loss is a sum over
   ranks, so the engine multiplies each rank's loss by W before backward
   (engines/deepspeed_engine.py). The torch engine is one rank: factor 1.

Shards are contiguous index ranges with about equal token counts (`shard_indices`), so a
run on W ranks follows the single-process run up to floating-point reduction order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lmm_r1_ascend.algorithms.aggregation import loss_normaliser
from lmm_r1_ascend.kernels.packing import split_by_token_budget


@dataclass(frozen=True)
class RankShard:
    """One rank's part of a mini-batch step.

    indices: the rank's samples of the mini-batch, ascending and contiguous ([] on a padding rank).
    normaliser: the whole mini-batch's loss normaliser (rule 1).
    n_micro: forward/backward passes every rank runs (rule 2).
    """

    indices: list[int]
    normaliser: float
    n_micro: int

    @property
    def real(self) -> bool:
        """False for a rank without samples: it only takes part in the collectives."""
        return bool(self.indices)

    @property
    def rows(self) -> list[int]:
        """The samples the rank actually feeds forward: its own, or sample 0 as zero-weighted padding."""
        return self.indices or [0]


def shard_indices(lengths: Sequence[int], world_size: int) -> list[list[int]]:
    """Contiguous index ranges, one per rank, with about equal token sums; a rank gets an
    empty list only when there are fewer samples than ranks."""
    n = len(lengths)
    if world_size == 1:
        return [list(range(n))]
    shards, start = [], 0
    total, seen = float(sum(lengths)), 0.0
    for r in range(world_size):
        remaining_ranks = world_size - r
        if r == world_size - 1:
            end = n
        else:
            target = total * (r + 1) / world_size
            end = start
            # take samples until this rank reaches its share, leaving at least one per later rank
            while end < n - (remaining_ranks - 1) and (end == start or seen + lengths[end] / 2 <= target):
                seen += lengths[end]
                end += 1
        shards.append(list(range(start, end)))
        start = end
    return shards


def micro_batch_count(lengths: Sequence[int], max_tokens: int) -> int:
    """Packed micro-batches of these sequences (kept whole, in order) under the token budget."""
    return len(split_by_token_budget(list(lengths), max_tokens))


def shard_plan(lengths: Sequence[int], action_counts: Sequence[int], world_size: int, max_tokens: int, *,
               agg_mode: str, constant: float | None = None) -> list[RankShard]:
    """The per-rank plan of one mini-batch step (see the module docstring).

    lengths: (B,) prompt+response tokens per sample; action_counts: (B,) action tokens per sample.
    """
    if len(lengths) != len(action_counts) or not lengths:
        raise ValueError(f"need one length and one action count per sample, got {len(lengths)} and "
                         f"{len(action_counts)} for a non-empty mini-batch")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    normaliser = loss_normaliser(agg_mode, list(action_counts), constant)
    parts = shard_indices(lengths, world_size)
    n_micro = max(micro_batch_count([lengths[i] for i in (idx or [0])], max_tokens) for idx in parts)
    return [RankShard(idx, normaliser, n_micro) for idx in parts]
