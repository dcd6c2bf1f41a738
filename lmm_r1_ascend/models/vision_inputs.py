"""Vision inputs of a packed forward: checking a sample's images, the tower's merged features,
the blank image that keeps the tower in the graph of a text-only micro-batch, and the images of
a shared-prompt row (kernels.shared_prompts: each prompt image once) (models.forward)."""

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


def _split_images(pix: torch.Tensor, grid: torch.Tensor) -> list[torch.Tensor]:
    """A sample's (N, D) pixel rows, one (t*h*w, D) block per image of its (n_images, 3) grid."""
    return list(pix.split(grid.prod(-1).tolist()))


def prompt_image_count(ids: torch.Tensor, prompt_length: int, grid: torch.Tensor, config) -> int:
    """How many of a sample's images (in order) sit in its prompt, the first ``prompt_length`` of
    its (L,) ``ids``; the rest are observations inside its response (multi-turn)."""
    pads = int((ids[:prompt_length] == config.image_token_id).sum())
    merged = (grid.prod(-1) // config.vision_config.spatial_merge_size**2).cumsum(0)
    return int((merged <= pads).sum())


def same_prompt_images(a: tuple[torch.Tensor, torch.Tensor] | None, b: tuple[torch.Tensor, torch.Tensor] | None,
                       count: int) -> bool:
    """Whether two samples' first ``count`` images (their prompt's; a and b: (pixel_values, grid) or
    None) are the same: equal pads do not identify an image. The samples of one prompt usually hold
    the same pixel tensor, which is recognised without reading it; otherwise the pixels are compared."""
    if count == 0:
        return True
    (pa, ga), (pb, gb) = a, b
    if not torch.equal(ga[:count], gb[:count]):
        return False
    rows = image_rows(ga[:count])
    pa, pb = pa[:rows], pb[:rows]
    if pa.dtype != pb.dtype:
        return False
    return (pa.data_ptr() == pb.data_ptr() and pa.stride() == pb.stride()) or torch.equal(pa, pb)


def row_images(members, images: list, prompt_images: list[int]
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """pixel_values (N, D) and image_grid_thw (n, 3) in the order of a packed row's image pads: per
    group (``SharedPrompts.members``; one group per sample for a row of whole samples), its first
    sample's images, then each later sample's response images. images[i]: sample i's (pixel_values, grid), or None;
    prompt_images[i]: how many of them sit in its prompt (prompt_image_count)."""
    pix, grids = [], []
    for group in members:
        for j, m in enumerate(group):
            if images[m] is None:
                continue
            p, g = images[m]
            keep = range(0, len(g)) if j == 0 else range(prompt_images[m], len(g))  # later samples: their own
            blocks = _split_images(p, g)
            pix += [blocks[x] for x in keep]
            grids += [g[x:x + 1] for x in keep]
    if not pix:
        return None, None
    return torch.cat([p.to(pix[0].device) for p in pix]), torch.cat(grids)
