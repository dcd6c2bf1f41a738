"""Vision inputs of a packed forward: checking a sample's images, the tower's merged features,
the blank image that keeps the tower in the graph of a text-only micro-batch, and the images of
a shared-prompt row (kernels.shared_prompts: each prompt image once) (models.forward)."""

from __future__ import annotations

import hashlib

import torch


def image_rows(grid: torch.Tensor) -> int:
    """Patch rows of the images of an (n_images, 3) int (t, h, w) grid: sum(t * h * w)."""
    return int(grid.prod(-1).sum())


def check_sample_images(i: int, pix, grid, ids: torch.Tensor, config) -> torch.Tensor:
    """Validate sample i's pixel_values (N, C * temporal_patch * patch^2) float and image_grid_thw
    (n_images, 3) int against the model config and ``ids``, the tokens images may sit at (its
    prompt and observation turns: one <|image_pad|> per merged patch). Returns pixel_values."""
    vc = config.vision_config
    if not isinstance(grid, torch.Tensor) or grid.dim() != 2 or grid.shape[1] != 3 or grid.is_floating_point():
        raise ValueError(f"samples[{i}].image_grid_thw must be an integer (n_images, 3) tensor of (t, h, w), "
                         f"got {getattr(grid, 'shape', grid)!r}")
    width = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
    if not isinstance(pix, torch.Tensor) or pix.dim() != 2 or not pix.is_floating_point() or pix.shape[1] != width:
        raise ValueError(f"samples[{i}].pixel_values must be a float (patches, {width}) tensor, "
                         f"got {getattr(pix, 'dtype', '')} {tuple(getattr(pix, 'shape', ()))}")
    if pix.shape[0] != image_rows(grid):
        raise ValueError(f"samples[{i}]: pixel_values has {pix.shape[0]} patch rows but image_grid_thw "
                         f"{grid.tolist()} needs sum(t*h*w) = {image_rows(grid)}")
    pads, need = int((ids == config.image_token_id).sum()), image_rows(grid) // vc.spatial_merge_size**2
    if pads != need:
        raise ValueError(f"samples[{i}] has {pads} <|image_pad|> tokens but its image_grid_thw {grid.tolist()} needs "
                         f"sum(t*h*w) / spatial_merge_size^2 = {need}; expand each image's pad to its patch count")
    return pix


def image_features(backbone, pixel_values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """(n_tokens, H) merged image embeddings of the images, in order."""
    out = backbone.get_image_features(pixel_values, grid)
    out = getattr(out, "pooler_output", out)  # an output object (transformers >= 5.2x) or per-image tensors
    return torch.cat(list(out)) if isinstance(out, (list, tuple)) else out


def blank_image(config, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest image the tower takes: one merge block, (m*m, D) zeros and grid (1, m, m)."""
    vc = config.vision_config
    m = vc.spatial_merge_size
    width = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
    return torch.zeros(m * m, width, device=device, dtype=dtype), torch.tensor([[1, m, m]], device=device)


def _split_images(pix: torch.Tensor, grid: torch.Tensor) -> list[torch.Tensor]:
    """A sample's (N, D) pixel rows, one (t*h*w, D) block per image of its (n_images, 3) grid."""
    return list(pix.split(grid.prod(-1).tolist()))


def prompt_image_count(ids: torch.Tensor, prompt_length: int, grid: torch.Tensor, config) -> int:
    """How many of a sample's images (in order) sit in its prompt, the first ``prompt_length`` of
    its (L,) ``ids``; the rest are observations inside its response (multi-turn)."""
    pads = int((ids[:prompt_length] == config.image_token_id).sum())
    merged = (grid.prod(-1) // config.vision_config.spatial_merge_size**2).cumsum(0)
    return int((merged <= pads).sum())


def prompt_image_key(ids: torch.Tensor, prompt_length: int, pix: torch.Tensor | None, grid: torch.Tensor | None,
                     config) -> bytes | None:
    """A digest of the images in a sample's prompt (None without any): two prompts with equal ids
    share their pads, whatever the pixels, so shared-prompt packing groups on this too."""
    if pix is None:
        return None
    k = prompt_image_count(ids, prompt_length, grid, config)
    if k == 0:
        return None
    digest = hashlib.blake2b(digest_size=16)
    for block in [*_split_images(pix, grid)[:k], grid[:k]]:
        digest.update(block.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.digest()


def shared_row_images(members, ids: list[torch.Tensor], prompt_lengths: list[int], images: list, config
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """pixel_values (N, D) and image_grid_thw (n, 3) in the order of a shared-prompt row's image
    pads: per group (``SharedPrompts.members``), its first sample's prompt images, then each
    sample's response images. images[i]: sample i's (pixel_values, grid), or None."""
    pix, grids = [], []
    for group in members:
        for j, m in enumerate(group):
            if images[m] is None:
                continue
            p, g = images[m]
            k = prompt_image_count(ids[m], prompt_lengths[m], g, config)
            keep = range(0, len(g)) if j == 0 else range(k, len(g))  # later samples: their own images only
            blocks = _split_images(p, g)
            pix += [blocks[x] for x in keep]
            grids += [g[x:x + 1] for x in keep]
    if not pix:
        return None, None
    return torch.cat(pix), torch.cat(grids)
