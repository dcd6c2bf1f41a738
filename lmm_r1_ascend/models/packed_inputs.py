"""Packed micro-batches: samples (prompt + response ids, images) laid out as one row.

``pack_samples`` validates the samples against the model config and builds a ``PackedInputs``:
input_ids (1, T), positions that restart per sample ((1, T) for text; (4, 1, T) for
Qwen2(.5)-VL: plain restarted positions then the three mRoPE rows, see kernels.mrope),
cu_seqlens, the rows that score each response token, and for VL models the images'
pixel_values and image_grid_thw in row order plus mm_token_type_ids. With ``share_prompts``
samples that share a prompt (ids and images) keep one copy of it (kernels.shared_prompts).
models.forward runs the forwards on it.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmm_r1_ascend.kernels.mrope import mm_token_type_ids_from_input_ids, mrope_position_ids
from lmm_r1_ascend.kernels.packing import cu_seqlens_from_lengths, position_ids_from_lengths
from lmm_r1_ascend.kernels.shared_prompts import SharedPrompts, shared_prompt_layout
from lmm_r1_ascend.models.vision_inputs import (
    check_sample_images, prompt_image_count, same_prompt_images, row_images,
)


@dataclass
class Sample:
    """One sequence of a packed forward.

    input_ids: int (L,) prompt + response tokens. response_length: R, 1 <= R < L; the last
    R tokens are scored. pixel_values: float (N, C * temporal_patch * patch^2) rows of this
    sample's images, in order; image_grid_thw: int (n_images, 3). Both None without images.
    action_mask: bool (R,) or None (all True): True on response tokens the policy sampled.
    Image pads are images in the prompt and at response tokens the policy did NOT sample
    (a multi-turn sample's observations); a sampled pad id is plain text.
    """

    input_ids: torch.Tensor
    response_length: int
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    action_mask: torch.Tensor | None = None


@dataclass
class PackedInputs:
    """A packed micro-batch (see the module docstring for the layout).

    input_ids: int64 (1, T). position_ids: int64 (1, T) or (4, 1, T). cu_seqlens: int32 (B+1,).
    cu_seqlens_host: the same as ints. lengths / response_lengths: per sample.
    score_index: int64 (sum R,) hidden-state positions that predict the response tokens.
    score_labels: int64 (sum R,) the response tokens. pixel_values (N, D), image_grid_thw
    (n, 3) int64, mm_token_type_ids int32 (1, T): VL only, None otherwise.
    shared: with shared prompts (kernels.shared_prompts) the row holds T_s < T tokens, one copy
    of each distinct prompt: input_ids / position_ids are (.., T_s), score_index points into
    them, while cu_seqlens / lengths still describe the samples whole (attention's layout).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    cu_seqlens_host: list[int]
    lengths: list[int]
    response_lengths: list[int]
    score_index: torch.Tensor
    score_labels: torch.Tensor
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    mm_token_type_ids: torch.Tensor | None = None
    shared: SharedPrompts | None = None

    @property
    def num_tokens(self) -> int:
        """Tokens of the samples whole (attention's layout), shared prompts counted once per sample."""
        return self.cu_seqlens_host[-1]

    def to(self, device: torch.device | str) -> PackedInputs:
        moved = {k: (v.to(device) if isinstance(v, (torch.Tensor, SharedPrompts)) else v) for k, v in vars(self).items()}
        return PackedInputs(**moved)


def text_config_of(config):
    """The text decoder's config of a (VL or text) model config."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _as_int(value, what: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {value!r}") from None


def _shared_layout(ids: list[torch.Tensor], lengths: list[int], resp: list[int], images: list,
                   prompt_images: list[int] | None) -> SharedPrompts | None:
    """The row's shared-prompt layout (kernels.shared_prompts), or None; for a VL model (images:
    per sample (pixels, grid) or None; prompt_images: how many sit in each prompt, None for a text
    model) two prompts with equal ids are the same only with the same images."""
    prompt_lengths = [n - r for n, r in zip(lengths, resp)]
    if prompt_images is None:
        return shared_prompt_layout(ids, prompt_lengths)
    return shared_prompt_layout(ids, prompt_lengths,
                                lambda a, b: same_prompt_images(images[a], images[b], prompt_images[a]))


def _relay_rows(packed: PackedInputs, shared: SharedPrompts) -> None:
    """Move a row built whole onto the shared rows: ids, positions, token types and score rows
    (cu_seqlens stays attention's layout, the samples whole)."""
    rows = shared.virtual_of_row
    packed.shared = shared
    packed.input_ids = packed.input_ids[:, rows]
    packed.position_ids = packed.position_ids.index_select(-1, rows)
    packed.score_index = shared.row_of_virtual[packed.score_index]
    if packed.mm_token_type_ids is not None:
        packed.mm_token_type_ids = packed.mm_token_type_ids[:, rows]


def _sampled_tokens(i: int, m: torch.Tensor | None, n: int, r: int) -> torch.Tensor:
    """bool (n,): True at the response tokens sample i's policy sampled (its action_mask ``m``, all
    of the last r without one). A sampled pad token is plain text; other pads are images."""
    sampled = torch.zeros(n, dtype=torch.bool)
    if m is None:
        sampled[n - r:] = True
        return sampled
    if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or tuple(m.shape) != (r,):
        raise ValueError(f"samples[{i}].action_mask must be a bool ({r},) tensor like its response, "
                         f"got {getattr(m, 'dtype', type(m).__name__)} {tuple(getattr(m, 'shape', ()))}")
    sampled[n - r:] = m.cpu()
    return sampled


def pack_samples(samples: Sequence[Sample], config, device: torch.device | str | None = None, *,
                 share_prompts: bool = False) -> PackedInputs:
    """Validate ``samples`` against the model ``config`` and build one packed row on ``device``.

    share_prompts: one copy of each prompt (its images included) samples share (kernels.shared_prompts).
    """
    if not samples:
        raise ValueError("pack_samples got no samples: a packed micro-batch needs at least one")
    text_cfg = text_config_of(config)
    vision = getattr(config, "vision_config", None)
    max_pos = getattr(text_cfg, "max_position_embeddings", None)
    vocab = int(text_cfg.vocab_size)
    ids, lengths, resp, images, sampled_masks = [], [], [], [], []  # images[i]: (pixel_values, grid) or None
    for i, s in enumerate(samples):
        if not isinstance(s, Sample):
            raise TypeError(f"samples[{i}] is a {type(s).__name__}, expected models.forward.Sample")
        t = s.input_ids
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"samples[{i}].input_ids must be a 1-D integer tensor, got {getattr(t, 'shape', t)!r}")
        n, r = int(t.numel()), _as_int(s.response_length, f"samples[{i}].response_length")
        if not 1 <= r < n:
            raise ValueError(f"samples[{i}]: response_length {r} must be in [1, {n - 1}] for {n} tokens "
                             "(at least one prompt token precedes the response)")
        if max_pos is not None and n > max_pos:
            raise ValueError(f"samples[{i}] has {n} tokens, over the model's max_position_embeddings={max_pos}: "
                             "lower the prompt / generation max length")
        t = t.cpu().long()  # packing metadata is built on the host, then moved once
        if bool(((t < 0) | (t >= vocab)).any()):
            raise ValueError(f"samples[{i}] holds token ids outside the model's vocabulary [0, {vocab})")
        if (s.pixel_values is None) != (s.image_grid_thw is None):
            raise ValueError(f"samples[{i}]: pixel_values and image_grid_thw must be given together (or neither)")
        sampled = _sampled_tokens(i, s.action_mask, n, r)
        prompt = t[~sampled]  # the tokens images may sit at: the prompt and the observation turns
        if s.pixel_values is not None:
            if vision is None:
                raise ValueError(f"samples[{i}] has images but the model ({type(config).__name__}) has no vision tower")
            images.append((check_sample_images(i, s.pixel_values, s.image_grid_thw, prompt, config),
                           s.image_grid_thw.long().cpu()))
        else:
            images.append(None)
        if s.pixel_values is None and vision is not None and bool((prompt == config.image_token_id).any()):
            raise ValueError(f"samples[{i}] has {int((prompt == config.image_token_id).sum())} image pad tokens "
                             "but no pixel_values / image_grid_thw")
        ids.append(t)
        lengths.append(n)
        resp.append(r)
        sampled_masks.append(sampled)

    input_ids = torch.cat(ids)[None]
    cu = cu_seqlens_from_lengths(lengths)
    ends = cu[1:].tolist()
    # Response token j of sample i sits at ends[i] - R_i + j and is predicted from one position earlier.
    labels_at = torch.cat([torch.arange(e - r, e) for e, r in zip(ends, resp)])
    packed = PackedInputs(
        input_ids=input_ids, position_ids=position_ids_from_lengths(lengths)[None], cu_seqlens=cu,
        cu_seqlens_host=cu.tolist(), lengths=lengths, response_lengths=resp,
        score_index=labels_at - 1, score_labels=input_ids[0, labels_at],
    )
    prompt_images = None if vision is None else [  # per sample: how many of its images sit in its prompt
        0 if im is None else prompt_image_count(t, n - r, im[1], config)
        for t, n, r, im in zip(ids, lengths, resp, images)]
    shared = _shared_layout(ids, lengths, resp, images, prompt_images) if share_prompts else None
    if vision is not None:
        types = mm_token_type_ids_from_input_ids(input_ids, config.image_token_id, config.video_token_id)
        types[0, torch.cat(sampled_masks)] = 0  # sampled tokens are text, whatever ids were sampled
        if bool((types == 2).any()):
            raise ValueError("video pad tokens found: packed forwards take images only")
        grids = [im[1] for im in images if im]
        grid = torch.cat(grids) if grids else None  # every sample's: positions are built on the whole row
        packed.mm_token_type_ids = types
        packed.position_ids = mrope_position_ids(types, lengths, grid, spatial_merge_size=vision.spatial_merge_size,
                                                 with_text_positions=True)
        # in the order of the row's pads: every sample's images, or with shared prompts each prompt image once
        packed.pixel_values, packed.image_grid_thw = row_images(
            shared.members if shared else [(i,) for i in range(len(images))], images, prompt_images)
    if shared is not None:
        _relay_rows(packed, shared)
    return packed if device is None else packed.to(device)


__all__ = ["PackedInputs", "Sample", "pack_samples", "text_config_of"]
