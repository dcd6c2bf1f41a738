"""Split one packed row across a sequence-parallel (SP) group: a zigzag split per sequence.

Every sequence of the row (lengths n_s, original order) is padded at its END to a multiple
of 2 * sp tokens (p_s = ceil(n_s / 2sp) * 2sp) and cut into 2 * sp equal chunks of
c_s = p_s / 2sp tokens. Rank r holds chunks r and 2sp - 1 - r of every sequence, in that
order, so all ranks hold the same number of tokens (sum 2 c_s) and, under causal attention,
the same work: an early chunk (little to attend) pairs with a late one (a lot).

End padding never changes a valid token's result under causal attention: a valid query sees
only keys at or before it, and padding sits after every valid token of its sequence. Padded
tokens copy their sequence's last token (so any per-token op stays finite) and are marked
invalid; callers drop them (``SPShard.valid``).

Local layout (the same offsets on every rank): sequence s occupies local rows
[o_s, o_s + 2 c_s), o_s = sum_{t<s} 2 c_t; its first half is global chunk r, its second half
global chunk 2sp - 1 - r. ``local_cu_seqlens_host`` is the cumulative of 2 c_s (leading 0).

Pure host-side index arithmetic (ints and int64 CPU tensors); nothing runs at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmm_r1_ascend.kernels.packing import validate_lengths


def check_sp_size(sp_size: int, what: str = "sequence_parallel_size") -> int:
    if isinstance(sp_size, bool) or not isinstance(sp_size, int) or sp_size < 1:
        raise ValueError(f"{what} must be an int >= 1, got {sp_size!r}")
    return sp_size


@dataclass(frozen=True)
class SPShard:
    """One rank's share of a packed row (see the module docstring for the layout).

    sp_size, rank: the SP group size and this rank's place in it.
    lengths: the original sequence lengths; chunks: c_s per sequence (padded length 2 sp c_s).
    index: int64 (T_local,) position in the ORIGINAL packed row of each local token (padding
      repeats its sequence's last token). valid: bool (T_local,), False on padding.
    local_cu_seqlens_host: cumulative local lengths (2 c_s each) with a leading 0.
    padded_cu_seqlens_host: cumulative padded lengths (2 sp c_s each) of the padded global row.
    """

    sp_size: int
    rank: int
    lengths: tuple[int, ...]
    chunks: tuple[int, ...]
    index: torch.Tensor
    valid: torch.Tensor
    local_cu_seqlens_host: tuple[int, ...]
    padded_cu_seqlens_host: tuple[int, ...]

    @property
    def num_local_tokens(self) -> int:
        return self.local_cu_seqlens_host[-1]

    def local_cu_seqlens(self, device=None) -> torch.Tensor:
        return torch.tensor(self.local_cu_seqlens_host, dtype=torch.int32, device=device)

    def padded_positions(self, rank: int | None = None) -> torch.Tensor:
        """int64 (T_local,) positions of rank ``rank``'s tokens in the PADDED global row."""
        rank = self.rank if rank is None else rank
        out = []
        for start, c in zip(self.padded_cu_seqlens_host, self.chunks):
            out.append(torch.arange(start + rank * c, start + (rank + 1) * c))
            far = 2 * self.sp_size - 1 - rank
            out.append(torch.arange(start + far * c, start + (far + 1) * c))
        return torch.cat(out)

    def ulysses_order(self) -> torch.Tensor:
        """int64 (T_padded,): row of the rank-concatenated tokens (rank 0's local rows, then rank
        1's, ...) that holds each position of the padded global row. Its inverse (argsort) maps
        back. Used by Ulysses, whose all-to-all delivers every rank's tokens in rank order."""
        cat = torch.cat([self.padded_positions(r) for r in range(self.sp_size)])
        return torch.argsort(cat)


def split_packed(lengths: Sequence[int], sp_size: int, rank: int) -> SPShard:
    """The zigzag share of rank ``rank`` of a packed row of sequences ``lengths``."""
    lengths = validate_lengths(lengths)
    check_sp_size(sp_size)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < sp_size:
        raise ValueError(f"rank must be an int in [0, {sp_size}), got {rank!r}")
    parts = 2 * sp_size
    chunks = [-(-n // parts) for n in lengths]
    index, valid, local_cu, padded_cu = [], [], [0], [0]
    start = 0
    for n, c in zip(lengths, chunks):
        for chunk in (rank, parts - 1 - rank):
            pos = torch.arange(chunk * c, (chunk + 1) * c)
            valid.append(pos < n)
            index.append(start + torch.clamp(pos, max=n - 1))
        local_cu.append(local_cu[-1] + 2 * c)
        padded_cu.append(padded_cu[-1] + parts * c)
        start += n
    return SPShard(sp_size, rank, tuple(lengths), tuple(chunks), torch.cat(index), torch.cat(valid),
                   tuple(local_cu), tuple(padded_cu))


def owner_of_positions(lengths: Sequence[int], sp_size: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For positions of the ORIGINAL row, the rank holding each and its local row there.

    Returns (rank, row), both int64 like ``positions``. Valid tokens have exactly one owner.
    """
    lengths = validate_lengths(lengths)
    parts = 2 * check_sp_size(sp_size)
    positions = positions.long().cpu()
    starts = torch.tensor([0] + lengths[:-1]).cumsum(0)
    chunks = torch.tensor([-(-n // parts) for n in lengths])
    local_start = torch.cat([torch.zeros(1, dtype=torch.long), (2 * chunks).cumsum(0)[:-1]])
    seq = torch.searchsorted(starts, positions, right=True) - 1
    if bool((positions < 0).any()) or bool((positions >= sum(lengths)).any()):
        raise ValueError(f"positions must lie in [0, {sum(lengths)})")
    off = positions - starts[seq]
    c = chunks[seq]
    chunk = off // c
    first = chunk < sp_size
    rank = torch.where(first, chunk, parts - 1 - chunk)
    row = local_start[seq] + torch.where(first, 0, c) + off - chunk * c
    return rank, row
