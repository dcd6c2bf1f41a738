"""The prompt record that flows from the data pipeline into rollout engines and the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class PromptItem:
    """One templated prompt, ready for any rollout engine.

    prompt_ids: chat-templated token ids with every <|image_pad|> already expanded to its
        image's merged patch count (what the HF engine and the trainer feed the model).
    prompt_text: the templated text with ONE <|image_pad|> per image (what vLLM takes
        together with `images`; it expands the pads itself).
    images: the resized RGB PIL images, in prompt order ([] for text-only prompts).
    pixel_values: float32 (total_patches, C * temporal_patch * patch * patch) from the image
        processor, or None for text-only prompts.
    image_grid_thw: int64 (num_images, 3) grid (t, h, w) in patches, or None.
    label: the reference answer (LaTeX for math, "" for Sokoban).
    datasource: groups metrics and routes rewards ("math", "sokoban", a dataset name...).
    meta: everything else worth carrying (env_path, question id, "source": "file:line").
    """

    prompt_ids: list[int]
    prompt_text: str
    images: list[Any] = field(default_factory=list)
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    label: str = ""
    datasource: str = "default"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return 0 if self.image_grid_thw is None else int(self.image_grid_thw.shape[0])
