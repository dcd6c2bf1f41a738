"""Vision inputs of a packed forward: checking a sample's images, the tower's merged features,
and the blank image that keeps the tower in the graph of a text-only micro-batch (models.forward)."""

from __future__ import annotations

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
