"""Cut the model's response out of a decoded sequence.

The rollout decodes prompt + response (+ padding) into one string. For the Qwen
chatml template the response is the text after the last ``<|im_start|>assistant\\n``
header (the generation prompt is always the last header of a prompt), up to the first
end-of-turn token; remaining end-of-turn / padding tokens are removed and surrounding
whitespace stripped. When the text holds no header it is taken to be the response
itself (end-of-turn tokens still removed), so already-separated responses pass through.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatTemplate:
    """Markers of one chat template: where the response starts and what ends a turn."""

    name: str
    assistant_header: str
    end_tokens: tuple[str, ...]


# Qwen2 / Qwen2.5(-VL) use chatml; the DeepSeek-R1 distills use their own markers.
TEMPLATES: dict[str, ChatTemplate] = {
    "chatml": ChatTemplate("chatml", "<|im_start|>assistant\n", ("<|im_end|>", "<|endoftext|>")),
    "deepseek": ChatTemplate(
        "deepseek", "<｜Assistant｜>", ("<｜end▁of▁sentence｜>", "<|endoftext|>")
    ),
    "plain": ChatTemplate("plain", "", ("<|im_end|>", "<|endoftext|>", "</s>")),
}
TEMPLATES["qwen"] = TEMPLATES["chatml"]


def get_template(name: str) -> ChatTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(
            f"unknown chat template {name!r}: use one of {sorted(TEMPLATES)}"
        ) from None


def extract_response(text: str, template: str | ChatTemplate = "chatml", prompt: str | None = None) -> str:
    """Return the response part of ``text`` (see the module docstring).

    prompt: when given and ``text`` starts with it, the response is exactly what follows
        (the most reliable cut; the header search is the fallback).
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_response expects a str, got {type(text).__name__}")
    tpl = get_template(template) if isinstance(template, str) else template
    if prompt and text.startswith(prompt):
        body = text[len(prompt):]
    elif tpl.assistant_header and tpl.assistant_header in text:
        body = text[text.rindex(tpl.assistant_header) + len(tpl.assistant_header):]
    else:
        body = text
    # Generation stops at the first end-of-turn token; anything after it is padding.
    cut = min((i for i in (body.find(t) for t in tpl.end_tokens) if i >= 0), default=-1)
    if cut >= 0:
        body = body[:cut]
    return body.strip()
