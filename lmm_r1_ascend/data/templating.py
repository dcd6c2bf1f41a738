"""Chat templating and image expansion: a checked row into a ``PromptItem``.

The tokenizer's own chat template renders the turns (``add_generation_prompt=True``), each
image as ``<|vision_start|><|image_pad|><|vision_end|>``. That text (one pad per image) is
``prompt_text``, what vLLM takes with the images. ``prompt_ids`` is its tokenisation with each
image's pad repeated grid_t*grid_h*grid_w // merge_size**2 times, what the model itself takes.
This needs only the tokenizer and a Qwen2-VL image processor (the PIL one works without
torchvision, where ``Qwen2_5_VLProcessor`` cannot be built).

Two steps, so a dataset can index (and filter by length) without decoding any image:
``plan`` tokenises and reads image sizes from file headers; ``materialize`` decodes,
resizes and runs the image processor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmm_r1_ascend.data.errors import DataError
from lmm_r1_ascend.data.images import ImageGeometry, load_rgb, read_image_size, resolve_image_path
from lmm_r1_ascend.data.readers import RawPrompt
from lmm_r1_ascend.data.types import PromptItem

IMAGE_PAD = "<|image_pad|>"

# The recipe's math system prompt (RECIPE.md "Rewards"), in this project's words: think first,
# then answer; LaTeX in $...$, final answer in \boxed{}; <think> and <answer> tags.
MATH_SYSTEM_PROMPT = (
    "You are a careful assistant. First think through the problem step by step, then give the "
    "answer. Put the reasoning inside <think> </think> and the answer inside <answer> </answer>. "
    "Write the answer in LaTeX wrapped in $...$ and put the final answer in \\boxed{}, for example: "
    "<think> Since $1+1=2$, the answer is $2$. </think><answer> The answer is $\\boxed{2}$ </answer>"
)


def load_processors(model_path: str | Path) -> tuple[Any, Any | None]:
    """(tokenizer, image processor or None) of a local checkpoint; the image processor is the
    torchvision-free ``Qwen2VLImageProcessorPil`` when the folder has preprocessor_config.json."""
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

    path = Path(model_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    processor = None
    if (path / "preprocessor_config.json").exists():
        processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    return tokenizer, processor


def mm_token_type_ids(prompt_ids: list[int], image_token_id: int) -> list[int]:
    """Per-token modality (0 text, 1 image) that transformers' Qwen2.5-VL needs for mRoPE."""
    return [1 if t == image_token_id else 0 for t in prompt_ids]


@dataclass
class PromptPlan:
    """A templated row before its images are decoded.

    ids: token ids of ``prompt_text`` (one pad per image). pad_counts: pads per image after
    expansion. length: the expanded prompt length in tokens.
    """

    raw: RawPrompt
    prompt_text: str
    ids: list[int]
    image_paths: list[Path] = field(default_factory=list)
    pad_counts: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.ids) + sum(c - 1 for c in self.pad_counts)


class PromptTemplate:
    """Templating settings: tokenizer, optional image processor, optional system prompt
    (added to conversations that have none; rows that bring their own keep it), optional
    min/max pixel overrides of the processor's."""

    def __init__(self, tokenizer: Any, image_processor: Any | None = None, system_prompt: str | None = None,
                 min_pixels: int | None = None, max_pixels: int | None = None):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.system_prompt = system_prompt
        self.geometry = (ImageGeometry.from_processor(image_processor, min_pixels, max_pixels)
                         if image_processor is not None else None)
        pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.image_token_id = pad_id if pad_id is not None and pad_id != tokenizer.unk_token_id else None

    def render(self, raw: RawPrompt) -> str:
        """The templated prompt text, one ``<|image_pad|>`` per image."""
        from jinja2 import TemplateError

        messages = raw.conversation.messages
        if self.system_prompt is not None and not raw.conversation.has_system:
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except TemplateError as exc:
            raise DataError(raw.source, "template", f"the chat template rejected the turns: {exc}") from exc

    def plan(self, raw: RawPrompt, image_root: Path) -> PromptPlan:
        """Tokenise and size the images (headers only); raise DataError for a bad row."""
        refs = raw.conversation.image_refs
        if refs and self.geometry is None:
            raise DataError(raw.source, "no_image_processor",
                            f"the row has {len(refs)} image(s) but no image processor was given "
                            "(a text-only model?); use a vision-language model or text-only data")
        paths = [resolve_image_path(ref, image_root, raw.source) for ref in refs]
        counts = [self.geometry.num_pad_tokens(*read_image_size(p, raw.source), raw.source) for p in paths]
        text = self.render(raw)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        rendered = sum(1 for t in ids if t == self.image_token_id) if self.image_token_id is not None else 0
        if rendered != len(refs):
            raise DataError(raw.source, "template",
                            f"the chat template rendered {rendered} {IMAGE_PAD} token(s) for {len(refs)} "
                            f"image(s); each image must become exactly one {IMAGE_PAD} (a Qwen-VL tokenizer, "
                            f"and no literal {IMAGE_PAD} in the text)", hint="")
        return PromptPlan(raw, text, ids, paths, counts)

    def materialize(self, plan: PromptPlan) -> PromptItem:
        """Decode and resize the images, run the image processor, expand the pads."""
        raw = plan.raw
        meta = dict(raw.meta)
        if not plan.image_paths:
            return PromptItem(prompt_ids=list(plan.ids), prompt_text=plan.prompt_text, label=raw.label,
                              datasource=raw.datasource, meta=meta)
        images = [self.geometry.resize(load_rgb(p, raw.source), raw.source) for p in plan.image_paths]
        pixel_values, grid, counts = self.process_images(images)
        if counts != plan.pad_counts:  # the file changed between indexing and loading
            raise DataError(raw.source, "image_changed",
                            f"image sizes changed since the data was indexed ({plan.pad_counts} pads "
                            f"expected, {counts} now); rebuild the dataset", hint="")
        ids = self.expand_pads(plan.ids, counts)
        meta["image_paths"] = [str(p) for p in plan.image_paths]
        return PromptItem(prompt_ids=ids, prompt_text=plan.prompt_text, images=images, pixel_values=pixel_values,
                          image_grid_thw=grid, label=raw.label, datasource=raw.datasource, meta=meta)

    def process_images(self, images: list) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Resized images through the image processor: pixel_values float32 (patches, D),
        image_grid_thw int64 (n, 3), and each image's pad count after expansion."""
        out = self.image_processor(images=images, do_resize=False, return_tensors="pt")
        grid = out["image_grid_thw"].to(torch.int64)
        counts = (grid.prod(dim=-1) // self.geometry.merge_size ** 2).tolist()
        return out["pixel_values"].to(torch.float32), grid, counts

    def expand_pads(self, ids: list[int], counts: list[int]) -> list[int]:
        """``ids`` with its k-th image pad repeated counts[k] times."""
        out, k = [], 0
        for t in ids:
            if t == self.image_token_id:
                out.extend([t] * counts[k])
                k += 1
            else:
                out.append(t)
        return out
