"""Shared-prompt packing: each distinct prompt of a packed row runs through the model once.

GRPO-style rollouts draw n responses per prompt, so a packed micro-batch of plain
concatenated samples repeats every prompt n times, and the prompt usually holds most of the
tokens (the CPU demo: ~60 prompt tokens, ~25 response tokens). The decoder's per-token work
(projections, MLP, norms, rotary) is the same for every copy of a prompt, so the packed row
keeps one copy per distinct prompt and lays its samples' responses after it:

    samples (unshared, "virtual" rows):  [p_a r_1] [p_a r_2] [p_b r_3]
    shared rows:                         [p_a r_1 r_2] [p_b r_3]

Attention is the one place where the two layouts differ, and the only place that needs the
virtual one: ``row_of_virtual`` gathers the shared rows' q / k / v into the unshared layout
(every sample whole, as ``cu_seqlens`` describes it), the backend's own varlen kernel runs
unchanged, and ``virtual_of_row`` gathers its output back (a prompt row takes the output of
its first sample's copy; every copy computes the same causal prefix). Gradients follow the
gathers: a shared prompt key / value row collects the gradient of every response that
attends to it, which is what the n copies received separately before. The same idea, for
GRPO, is Prefix Grouper (arXiv 2506.05433), which also splits attention so the prefix's is
computed once; here attention's own work is unchanged and the sharing is a pure re-indexing
around any varlen kernel, so the CUDA and NPU kernels take it as they are.

A VL prompt is the same only with the same images (pads do not identify them): the caller
(models.packed_inputs) passes a ``same_prompt`` check that compares the prompts' pixels, and lays
the row's images out to match (models.vision_inputs.row_images), so the vision tower
also runs once per prompt image.

Positions stay those of the unshared samples (a response's positions continue its prompt's).
The response token j of sample i is scored from the row that predicts it: the shared last
prompt row for j == 0, its own previous response row otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SharedPrompts:
    """Index maps between the shared rows (T_s) and the unshared samples' rows (T_v).

    virtual_of_row: int64 (T_s,): the unshared row each shared row stands for (a prompt row:
        the copy in the first sample of its prompt group).
    row_of_virtual: int64 (T_v,): the shared row holding each unshared row's token.
    members: the sample indices of each distinct prompt, groups in row order, samples in order.
    """

    virtual_of_row: torch.Tensor
    row_of_virtual: torch.Tensor
    members: tuple[tuple[int, ...], ...]

    @property
    def groups(self) -> int:
        return len(self.members)

    @property
    def rows(self) -> int:
        return int(self.virtual_of_row.numel())

    def to(self, device: torch.device | str) -> SharedPrompts:
        return SharedPrompts(self.virtual_of_row.to(device), self.row_of_virtual.to(device), self.members)


def shared_prompt_layout(sequences: Sequence[torch.Tensor], prompt_lengths: Sequence[int],
                         same_prompt: Callable[[int, int], bool] | None = None) -> SharedPrompts | None:
    """The shared layout of ``sequences`` (1-D int (L_i,) prompt + response ids, in packed order),
    grouping those whose first ``prompt_lengths[i]`` ids are equal and, when given, for which
    ``same_prompt(first, i)`` holds (``first``: the group's first sample; what the ids do not
    identify, e.g. the prompt's images); None when no two share a prompt.

    Groups appear in the order of their first sample; within a group, responses keep sample order.
    prompt_lengths[i] must be in [1, L_i - 1] (a response of at least one token follows).
    """
    if len(sequences) != len(prompt_lengths):
        raise ValueError(f"shared_prompt_layout: {len(sequences)} sequences but {len(prompt_lengths)} prompt lengths")
    lengths = [int(s.numel()) for s in sequences]
    for i, (n, p) in enumerate(zip(lengths, prompt_lengths)):
        if not 1 <= p < n:
            raise ValueError(f"shared_prompt_layout: prompt_lengths[{i}] = {p} must be in [1, {n - 1}] "
                             f"for a sequence of {n} tokens")
    groups: list[list[int]] = []
    by_ids: dict[tuple[int, ...], list[list[int]]] = {}  # prompt ids -> its groups (several only with same_prompt)
    for i, (s, p) in enumerate(zip(sequences, prompt_lengths)):
        candidates = by_ids.setdefault(tuple(s[:p].tolist()), [])
        group = next((g for g in candidates if same_prompt is None or same_prompt(g[0], i)), None)
        if group is None:
            group = []
            candidates.append(group)
            groups.append(group)
        group.append(i)
    if len(groups) == len(sequences):
        return None
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    virtual_of_row: list[torch.Tensor] = []
    row_of_virtual = torch.empty(sum(lengths), dtype=torch.int64)
    row = 0
    for members in groups:
        p = prompt_lengths[members[0]]
        virtual_of_row.append(torch.arange(starts[members[0]], starts[members[0]] + p))
        for m in members:
            row_of_virtual[starts[m]:starts[m] + p] = torch.arange(row, row + p)
        row += p
        for m in members:
            r = lengths[m] - p
            virtual_of_row.append(torch.arange(starts[m] + p, starts[m] + lengths[m]))
            row_of_virtual[starts[m] + p:starts[m] + lengths[m]] = torch.arange(row, row + r)
            row += r
    return SharedPrompts(torch.cat(virtual_of_row), row_of_virtual, tuple(tuple(m) for m in groups))


__all__ = ["SharedPrompts", "shared_prompt_layout"]
