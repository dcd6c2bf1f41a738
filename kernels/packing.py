"""Sequence packing: one row of concatenated sequences, cu_seqlens, restarted positions.

Conventions (see shared DESIGN.md):
- A packed batch is one row of ``T = sum(lengths)`` tokens, sequences back to back in
  their original order, no padding.
- ``cu_seqlens`` is int32 ``(B + 1,)`` with a leading 0 (flash-attn convention);
  NPU kernels take ``cu_seqlens[1:]`` built on the host (``cu_seqlens_host``).
- Position ids restart at 0 for every sequence.
- Micro-batching by token budget keeps every sequence whole and the original order.

Qwen2.5-VL 3-D (mRoPE) positions for packed samples live in
``lmm_r1_ascend.kernels.mrope``.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def validate_lengths(lengths: Sequence[int], what: str = "lengths") -> list[int]:
    """Validate per-sequence lengths (ints >= 1, at least one) and return them as a list."""
    if isinstance(lengths, torch.Tensor):
        if lengths.dim() != 1:
            raise ValueError(f"{what} must be 1-D, got shape {tuple(lengths.shape)}")
        lengths = lengths.tolist()
    out = []
    for i, n in enumerate(lengths):
        try:
            if isinstance(n, bool):
                raise TypeError
            n = operator.index(n)
        except TypeError:
            raise TypeError(f"{what}[{i}] must be an int, got {n!r}") from None
        if n < 1:
            raise ValueError(f"{what}[{i}] = {n}: every sequence needs at least one token")
        out.append(n)
    if not out:
        raise ValueError(f"{what} is empty: a packed batch needs at least one sequence")
    return out


def split_by_token_budget(
    lengths: Sequence[int], max_tokens: int, *, hard_max_tokens: int | None = None
) -> list[list[int]]:
    """Group sample indices into micro-batches of at most ``max_tokens`` summed tokens.

    Greedy and order-preserving: indices appear in their original order, within and
    across groups; a new group starts when the next sequence would overflow the budget.
    A sequence longer than ``max_tokens`` gets a micro-batch of its own; one longer
    than ``hard_max_tokens`` (when given) is a ValueError naming its index and length.

    Args:
        lengths: token count of each sample (ints >= 1).
        max_tokens: token budget per micro-batch (>= 1).
        hard_max_tokens: optional absolute limit on any single sequence.

    Returns:
        A list of groups, each a non-empty list of indices into ``lengths``.
        An empty ``lengths`` gives ``[]``.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
    if hard_max_tokens is not None and (
        isinstance(hard_max_tokens, bool) or not isinstance(hard_max_tokens, int) or hard_max_tokens < 1
    ):
        raise ValueError(f"hard_max_tokens must be None or an int >= 1, got {hard_max_tokens!r}")
    if len(lengths) == 0:
        return []
    lens = validate_lengths(lengths)
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, n in enumerate(lens):
        if hard_max_tokens is not None and n > hard_max_tokens:
            raise ValueError(
                f"sequence {i} has {n} tokens, over hard_max_tokens={hard_max_tokens}: "
                "truncate it (e.g. lower the generation/prompt max length) or raise the limit"
            )
        if current and used + n > max_tokens:
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    groups.append(current)
    return groups


def cu_seqlens_from_lengths(lengths: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """int32 ``(B + 1,)`` cumulative lengths with a leading 0: ``[0, l0, l0 + l1, ...]``."""
    lens = validate_lengths(lengths)
    return torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32, device=device)


def lengths_from_cu_seqlens(cu_seqlens: torch.Tensor | Sequence[int]) -> list[int]:
    """Inverse of :func:`cu_seqlens_from_lengths`; checks the leading 0 and monotonicity."""
    cu = cu_seqlens.tolist() if isinstance(cu_seqlens, torch.Tensor) else list(cu_seqlens)
    if len(cu) < 2 or cu[0] != 0:
        raise ValueError(f"cu_seqlens must start with 0 and hold B + 1 >= 2 entries, got {cu[:8]}")
    lens = [b - a for a, b in itertools.pairwise(cu)]
    if any(n < 1 for n in lens):
        raise ValueError(f"cu_seqlens must be strictly increasing, got {cu[:16]}")
    return lens


def position_ids_from_lengths(lengths: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """int64 ``(T,)`` positions restarting at 0 per sequence: ``[0..l0-1, 0..l1-1, ...]``."""
    lens = validate_lengths(lengths)
    total = sum(lens)
    starts = torch.tensor([0, *itertools.accumulate(lens[:-1])], dtype=torch.int64, device=device)
    offsets = torch.repeat_interleave(starts, torch.tensor(lens, device=device), output_size=total)
    return torch.arange(total, dtype=torch.int64, device=device) - offsets


def pack(seqs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate sequences along their first dim.

    Args:
        seqs: B tensors shaped ``(L_i, *rest)`` with the same ``rest``, dtype and device; L_i >= 1.

    Returns:
        packed: ``(T, *rest)``, T = sum(L_i).
        cu_seqlens: int32 ``(B + 1,)`` with a leading 0, on the tensors' device.
    """
    if len(seqs) == 0:
        raise ValueError("pack: got no sequences")
    for i, s in enumerate(seqs):
        if not isinstance(s, torch.Tensor):
            raise TypeError(f"pack: seqs[{i}] is a {type(s).__name__}, expected a torch.Tensor")
        if s.dim() < 1 or s.shape[0] < 1:
            raise ValueError(f"pack: seqs[{i}] has shape {tuple(s.shape)}; each needs a first dim >= 1")
        if s.shape[1:] != seqs[0].shape[1:] or s.dtype != seqs[0].dtype or s.device != seqs[0].device:
            raise ValueError(
                f"pack: seqs[{i}] is {tuple(s.shape)} {s.dtype} on {s.device}, but seqs[0] is "
                f"{tuple(seqs[0].shape)} {seqs[0].dtype} on {seqs[0].device}; trailing dims, dtype, device must match"
            )
    cu = cu_seqlens_from_lengths([s.shape[0] for s in seqs], device=seqs[0].device)
    return torch.cat(list(seqs), dim=0), cu


def unpack(packed: torch.Tensor, cu_seqlens: torch.Tensor | Sequence[int], dim: int = 0) -> list[torch.Tensor]:
    """Split ``packed`` (``(T, ...)`` along ``dim``) back into B views by ``cu_seqlens`` (B + 1,)."""
    lens = lengths_from_cu_seqlens(cu_seqlens)
    if sum(lens) != packed.shape[dim]:
        raise ValueError(
            f"unpack: cu_seqlens ends at {sum(lens)} but packed has {packed.shape[dim]} tokens along dim {dim}"
        )
    return list(torch.split(packed, lens, dim=dim))


@dataclass
class PackedBatch:
    """A packed training micro-batch.

    Attributes:
        input_ids: int64 ``(1, T)``.
        position_ids: int64 ``(1, T)``; for mRoPE ``(3, 1, T)`` (temporal, height, width) or
            ``(4, 1, T)`` with a leading row of plain restarted positions (see ``kernels.mrope``).
        cu_seqlens: int32 ``(B + 1,)`` with a leading 0, on the batch's device.
        cu_seqlens_host: the same values as a Python list (NPU kernels need them on the host).
        max_seqlen: the longest sequence.
        lengths: per-sequence token counts.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    cu_seqlens_host: list[int]
    max_seqlen: int
    lengths: list[int]

    @property
    def num_tokens(self) -> int:
        return self.cu_seqlens_host[-1]

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(
            input_ids=self.input_ids.to(device),
            position_ids=self.position_ids.to(device),
            cu_seqlens=self.cu_seqlens.to(device),
            cu_seqlens_host=list(self.cu_seqlens_host),
            max_seqlen=self.max_seqlen,
            lengths=list(self.lengths),
        )


def pack_input_ids(seqs: Sequence[torch.Tensor], position_ids: torch.Tensor | None = None) -> PackedBatch:
    """Build a :class:`PackedBatch` from B 1-D int token tensors.

    Args:
        seqs: B int tensors ``(L_i,)``.
        position_ids: optional precomputed mRoPE positions ``(R, T)`` or ``(R, 1, T)`` with R = 3
            or 4 (see ``kernels.mrope.mrope_position_ids``); default: 1-D restarted positions.
    """
    for i, s in enumerate(seqs):
        if isinstance(s, torch.Tensor) and (s.dim() != 1 or s.is_floating_point()):
            raise ValueError(f"pack_input_ids: seqs[{i}] must be a 1-D integer tensor, got {s.dtype} {tuple(s.shape)}")
    ids, cu = pack(seqs)
    lens = [int(s.shape[0]) for s in seqs]
    total = ids.shape[0]
    if position_ids is None:
        pos = position_ids_from_lengths(lens, device=ids.device).unsqueeze(0)
    else:
        pos = position_ids.unsqueeze(1) if position_ids.dim() == 2 else position_ids
        if pos.dim() != 3 or pos.shape[0] not in (3, 4) or tuple(pos.shape[1:]) != (1, total):
            raise ValueError(
                f"pack_input_ids: position_ids must be (3|4, T) or (3|4, 1, T) with T={total}, "
                f"got {tuple(position_ids.shape)}"
            )
    return PackedBatch(
        input_ids=ids.long().unsqueeze(0),
        position_ids=pos,
        cu_seqlens=cu,
        cu_seqlens_host=cu.tolist(),
        max_seqlen=max(lens),
        lengths=lens,
    )
