"""Token ids for the turns a multi-turn rollout adds between sampled turns, from the tokenizer's
own chat template (never by re-tokenising what the policy sampled).

An observation becomes a user message: its images first (``{"type": "image"}`` parts), then its
text. Its ids are the template's rendering of that message appended to a conversation,
taken as a text difference:

    prefix = render([user "Q", assistant "A"])                          (no generation prompt)
    full   = render([user "Q", assistant "A", user <observation>], add_generation_prompt=True)
    delta  = full[len(prefix):]    # "<|im_start|>user\\n<|vision_start|><|image_pad|>...<|im_start|>assistant\\n"

and what the template writes after an assistant message's content ("<|im_end|>\\n" for ChatML)
closes the sampled turn: the part of it the policy did not sample itself (after a stop token
"<|im_end|>": "\\n"; after a turn cut at the token limit: all of it) goes before ``delta``.
The text is tokenised once, and each ``<|image_pad|>`` is repeated to its image's merged patch
count, as the data pipeline does for prompts (data/templating.py). A template whose rendering
of the earlier turns changes when a turn is added (one that rewrites history) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmm_r1_ascend.data.templating import IMAGE_PAD, PromptTemplate
from lmm_r1_ascend.envs.base import Observation

_Q, _A = "QUESTIONPLACEHOLDER", "ANSWERPLACEHOLDER"


@dataclass
class TurnIds:
    """One observation turn: ids (N,) int64 list with pads expanded; images (resized PIL), their
    pixel_values float32 (patches, D) and image_grid_thw int64 (n, 3), or None without images."""

    ids: list[int]
    images: list
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None


class TurnTemplate:
    """tokenizer: the policy's (its chat template renders the turns). image_processor: a Qwen2-VL
    image processor, or None for a text-only model. min_pixels / max_pixels: the data section's
    resize bounds (observations are resized like prompt images)."""

    def __init__(self, tokenizer, image_processor=None, min_pixels: int | None = None,
                 max_pixels: int | None = None):
        self.tokenizer = tokenizer
        # the data pipeline's own image handling (resize bounds, image processor, pad expansion)
        self.prompt_template = PromptTemplate(tokenizer, image_processor, min_pixels=min_pixels, max_pixels=max_pixels)
        self.geometry, self.image_token_id = self.prompt_template.geometry, self.prompt_template.image_token_id
        history = [{"role": "user", "content": _Q}, {"role": "assistant", "content": _A}]
        self._history = history
        prefix = self._render(history, generation_prompt=False)
        if prefix.count(_A) != 1:
            raise ValueError("the chat template does not render an assistant message's content verbatim; "
                             "multi-turn rollout needs a template that does")
        self._prefix = prefix
        self._closing = prefix[prefix.index(_A) + len(_A):]  # what follows an assistant message's content
        probe = self._render([{"role": "user", "content": _Q}], generation_prompt=True)
        self._generation_prompt = probe[len(self._render([{"role": "user", "content": _Q}], False)):]

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def generation_prompt_ids(self) -> list[int]:
        """The ids the template appends to open the assistant's turn ("<|im_start|>assistant\\n")."""
        return self.tokenizer(self._generation_prompt, add_special_tokens=False)["input_ids"]

    def closing_text(self, last_sampled_id: int | None) -> str:
        """The part of the template's end-of-assistant-message text the policy did not sample:
        after a turn that ended with the stop token the template writes there, what follows it;
        otherwise (cut at the token limit) all of it. None: no assistant turn precedes (a prompt)."""
        if last_sampled_id is None:
            return ""
        last = self.tokenizer.decode([last_sampled_id], skip_special_tokens=False)
        if last and self._closing.startswith(last):
            return self._closing[len(last):]
        return self._closing

    def observation(self, obs: Observation, last_sampled_id: int | None, where: str = "observation") -> TurnIds:
        """The ids of `obs` as the next user turn, after a sampled turn ending with `last_sampled_id`
        (None: right after the prompt, whose generation prompt was removed)."""
        if not isinstance(obs, Observation):
            raise TypeError(f"{where}: the environment returned a {type(obs).__name__}, not an Observation")
        if obs.images and self.geometry is None:
            raise ValueError(f"{where}: the observation has {len(obs.images)} image(s) but the model has no image "
                             "processor (a text-only model?); use a vision-language model")
        content = [{"type": "image"} for _ in obs.images]
        if obs.text:
            content.append({"type": "text", "text": obs.text})
        full = self._render([*self._history, {"role": "user", "content": content}], generation_prompt=True)
        if not full.startswith(self._prefix):
            raise ValueError("the chat template renders earlier turns differently once a turn is added; "
                             "multi-turn rollout needs a template that only appends")
        text = self.closing_text(last_sampled_id) + full[len(self._prefix):]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        n_pads = sum(1 for t in ids if t == self.image_token_id) if self.image_token_id is not None else 0
        if n_pads != len(obs.images):
            raise ValueError(f"{where}: the chat template rendered {n_pads} {IMAGE_PAD} for {len(obs.images)} "
                             f"image(s) (a literal {IMAGE_PAD} in the observation text?)")
        if not obs.images:
            return TurnIds(ids, [], None, None)
        images = [self.geometry.resize(im.convert("RGB"), where) for im in obs.images]
        pixel_values, grid, counts = self.prompt_template.process_images(images)
        return TurnIds(self.prompt_template.expand_pads(ids, counts), images, pixel_values, grid)
