"""Qwen2.5-VL 3-D rotary positions (mRoPE) for packed samples with images / videos.

Qwen2.5-VL gives every token three position ids (temporal, height, width):
- a run of text tokens continues one counter on all three rows;
- a run of vision tokens (one image or video, ``t x (h/m) x (w/m)`` tokens after the
  ``m x m`` spatial merge) gets ``start + t_idx * interval``, ``start + row``,
  ``start + col``; the counter then advances by ``max(h, w) / m``. ``interval`` is 1 for
  images and ``tokens_per_second * seconds_per_grid`` (truncated) for videos.
Runs are told apart by ``mm_token_type_ids`` (0 text, 1 image, 2 video), which
transformers 5.x needs too; two vision items must be separated by at least one text
token (the chat template's ``<|vision_end|>`` / ``<|vision_start|>`` do that).

For a packed row each sample's positions are computed as for that sample alone and
concatenated, so positions restart at 0 per sample. Grids are consumed in packed order
across samples, as the model consumes ``image_grid_thw`` across a batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from lmm_r1_ascend.kernels.packing import position_ids_from_lengths, validate_lengths

TEXT, IMAGE, VIDEO = 0, 1, 2


def mm_token_type_ids_from_input_ids(
    input_ids: torch.Tensor, image_token_id: int, video_token_id: int | None = None
) -> torch.Tensor:
    """int32 tensor like ``input_ids``: 1 where the image pad token is, 2 for the video pad token, else 0."""
    out = torch.zeros_like(input_ids, dtype=torch.int32)
    out[input_ids == image_token_id] = IMAGE
    if video_token_id is not None:
        out[input_ids == video_token_id] = VIDEO
    return out


def _runs(types: torch.Tensor) -> list[tuple[int, int, int]]:
    """(type, start, end) for each maximal run of equal values in a 1-D tensor."""
    change = torch.nonzero(types[1:] != types[:-1]).flatten() + 1
    bounds = [0, *change.tolist(), types.numel()]
    values = types[bounds[:-1]].tolist() if types.numel() else []
    return [(v, a, b) for v, a, b in zip(values, bounds[:-1], bounds[1:])]


def _vision_positions(
    start: int, grid: Sequence[int], merge: int, interval: int | float | torch.Tensor
) -> tuple[torch.Tensor, int]:
    """int64 (3, t*h'*w') positions of one vision item and the counter advance max(h', w')."""
    t, h, w = grid[0], grid[1] // merge, grid[2] // merge
    temporal = (torch.arange(t) * interval).long() + start
    rows = torch.arange(h) + start
    cols = torch.arange(w) + start
    pos = torch.stack(
        (
            temporal.repeat_interleave(h * w),
            rows.repeat_interleave(w).repeat(t),
            cols.repeat(t * h),
        )
    )
    return pos, max(h, w)


def mrope_position_ids(
    mm_token_type_ids: torch.Tensor,
    lengths: Sequence[int] | None = None,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    *,
    spatial_merge_size: int,
    tokens_per_second: int | float = 1,
    second_per_grid_ts: torch.Tensor | Sequence[float] | None = None,
    with_text_positions: bool = False,
) -> torch.Tensor:
    """3-D positions of a packed row of samples, per-sample positions concatenated.

    Args:
        mm_token_type_ids: int ``(T,)`` or ``(1, T)``: 0 text, 1 image token, 2 video token.
        lengths: token count of each packed sample (sum = T); default: one sample.
        image_grid_thw: int ``(n_images, 3)`` (t, h, w) in patches, images in packed order.
        video_grid_thw: int ``(n_videos, 3)``, videos in packed order.
        spatial_merge_size: the vision config's ``spatial_merge_size``.
        tokens_per_second: the vision config's ``tokens_per_second`` (videos only).
        second_per_grid_ts: seconds per temporal grid for each video (default 1 each).
        with_text_positions: prepend a row of plain per-sample positions (0..L-1), giving
            the ``(4, 1, T)`` form transformers reads as "packed": row 0 marks sequence
            starts for the attention mask, rows 1-3 are the mRoPE positions.

    Returns:
        int64 ``(3, 1, T)`` (or ``(4, 1, T)``) on ``mm_token_type_ids``'s device.
    """
    types, lens = _check_types(mm_token_type_ids, lengths, spatial_merge_size)
    device = types.device
    types = types.cpu()
    grids, seconds = _check_grids(image_grid_thw, video_grid_thw, spatial_merge_size, second_per_grid_ts)
    intervals = {IMAGE: [1] * len(grids[IMAGE]), VIDEO: [tokens_per_second * sec for sec in seconds]}
    used = {IMAGE: 0, VIDEO: 0}  # vision items consumed so far, in packed order across samples
    pieces: list[torch.Tensor] = []
    for s, (a, b) in enumerate(itertools.pairwise([0, *itertools.accumulate(lens)])):
        pieces += _sample_positions(s, types[a:b], grids, used, merge=spatial_merge_size, intervals=intervals)
    for kind, name in ((IMAGE, "image"), (VIDEO, "video")):
        if used[kind] != len(grids[kind]):
            raise ValueError(f"found {used[kind]} {name} spans but {name}_grid_thw has {len(grids[kind])} rows")

    pos = torch.cat(pieces, dim=1)
    if with_text_positions:
        pos = torch.cat((position_ids_from_lengths(lens).unsqueeze(0), pos))
    return pos.unsqueeze(1).to(device)


def _check_types(mm_token_type_ids: torch.Tensor, lengths: Sequence[int] | None,
                 spatial_merge_size: int) -> tuple[torch.Tensor, list[int]]:
    """The token types as a 1-D integer tensor (on their device) and the sample lengths, checked."""
    types = mm_token_type_ids
    if types.dim() == 2 and types.shape[0] == 1:
        types = types[0]
    if types.dim() != 1 or types.is_floating_point():
        raise ValueError(
            "mm_token_type_ids must be an integer (T,) or (1, T) tensor, "
            f"got {types.dtype} {tuple(mm_token_type_ids.shape)}"
        )
    if isinstance(spatial_merge_size, bool) or not isinstance(spatial_merge_size, int) or spatial_merge_size < 1:
        raise ValueError(f"spatial_merge_size must be an int >= 1, got {spatial_merge_size!r}")
    total = types.numel()
    lens = validate_lengths([total] if lengths is None else lengths)
    if sum(lens) != total:
        raise ValueError(f"lengths sum to {sum(lens)} but mm_token_type_ids has {total} tokens")
    bad = ~((types == TEXT) | (types == IMAGE) | (types == VIDEO))
    if bad.any():
        i = int(torch.nonzero(bad)[0])
        raise ValueError(f"mm_token_type_ids[{i}] = {int(types[i])}: allowed values are 0 text, 1 image, 2 video")
    return types, lens


def _check_grids(image_grid_thw: torch.Tensor | None, video_grid_thw: torch.Tensor | None, merge: int,
                 second_per_grid_ts: torch.Tensor | Sequence[float] | None) -> tuple[dict[int, list], list]:
    """{IMAGE: [(t, h, w), ...], VIDEO: [...]} checked against the merge size, and each video's
    seconds per temporal grid (default 1)."""
    grids = {IMAGE: _grid_list(image_grid_thw, "image_grid_thw"), VIDEO: _grid_list(video_grid_thw, "video_grid_thw")}
    for kind, name in ((IMAGE, "image_grid_thw"), (VIDEO, "video_grid_thw")):
        for k, (t, h, w) in enumerate(grids[kind]):
            if min(t, h, w) < 1 or h % merge or w % merge:
                raise ValueError(
                    f"{name}[{k}] = {(t, h, w)}: t, h, w must be >= 1 with h and w divisible by "
                    f"spatial_merge_size={merge}"
                )
    n_videos = len(grids[VIDEO])
    if second_per_grid_ts is None:
        seconds: list = [1] * n_videos
    else:
        seconds = list(second_per_grid_ts)  # 0-d tensors kept as tensors: the model multiplies by them
        if len(seconds) != n_videos:
            raise ValueError(f"second_per_grid_ts has {len(seconds)} entries for {n_videos} videos")
    return grids, seconds


def _sample_positions(s: int, types: torch.Tensor, grids: dict[int, list], used: dict[int, int], *, merge: int,
                      intervals: dict[int, list]) -> list[torch.Tensor]:
    """int64 (3, n) position pieces of sample s (its token types: types), from 0; takes its vision
    items' grids from grids[kind][used[kind]:] and advances used. intervals[kind][k]: the
    temporal step of vision item k (1 for images)."""
    pieces: list[torch.Tensor] = []
    current = 0
    for kind, start, end in _runs(types):
        n = end - start
        if kind == TEXT:
            pieces.append((torch.arange(n) + current).expand(3, n))
            current += n
            continue
        name = "image" if kind == IMAGE else "video"
        k = used[kind]
        if k >= len(grids[kind]):
            raise ValueError(
                f"sample {s} has more {name} spans than {name}_grid_thw rows ({len(grids[kind])}); "
                f"each {name} needs one (t, h, w) row, in packed order"
            )
        grid = grids[kind][k]
        expected = grid[0] * grid[1] * grid[2] // merge**2
        if n != expected:
            raise ValueError(
                f"sample {s}: the {name} span at token {start} has {n} tokens but {name}_grid_thw[{k}] = "
                f"{grid} needs {expected} (t*h*w / spatial_merge_size^2); adjacent {name}s must be "
                "separated by at least one text token"
            )
        pos, advance = _vision_positions(current, grid, merge, intervals[kind][k])
        pieces.append(pos)
        current += advance
        used[kind] += 1
    return pieces


def _grid_list(grid_thw: torch.Tensor | None, name: str) -> list[tuple[int, int, int]]:
    if grid_thw is None:
        return []
    g = torch.as_tensor(grid_thw)
    if g.dim() != 2 or g.shape[1] != 3 or g.is_floating_point():
        raise ValueError(f"{name} must be an integer (n, 3) tensor of (t, h, w), got {g.dtype} {tuple(g.shape)}")
    return [tuple(r) for r in g.tolist()]
