"""Chat turns from a data row, checked and normalised for a chat template.

Accepted (OpenAI / Qwen style), per turn ``{"role": str, "content": ...}`` where content is a
string or a list of parts:
    {"type": "text", "text": "..."}
    {"type": "image", "image": "file:///abs/a.png" | "/abs/a.png" | "rel/a.png"}
    {"type": "image_url", "image_url": {"url": "..."} | "..."}
A part without "type" is typed by its keys. Keys set to None (Arrow fills absent struct
fields with None in Hugging Face datasets) are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lmm_r1_ascend.data.errors import DataError

SUPPORTED_PART_TYPES = ("text", "image", "image_url")


def _json_kind(value: Any) -> str:
    kinds = {dict: "a JSON object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def parse_turns(value: Any, key: str, source: str) -> list:
    """The list of chat turns held by field ``key``: a JSON string (LMM-R1) or a list (chat)."""
    turns = value
    if isinstance(value, str):
        try:
            turns = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(source, "bad_message",
                            f"field '{key}' is a string but not valid JSON ({exc.msg} at char {exc.pos}); "
                            "it must hold a JSON list of chat turns") from exc
    if not isinstance(turns, list) or not turns:
        got = "an empty list" if isinstance(turns, list) else _json_kind(turns)
        raise DataError(source, "bad_message",
                        f"field '{key}' must be a non-empty JSON list of chat turns "
                        f"[{{\"role\": ..., \"content\": ...}}, ...], got {got}")
    return turns


@dataclass
class Conversation:
    """messages: template-ready turns; image parts reduced to {"type": "image"}.
    image_refs: the image references in order of appearance (one per image part)."""

    messages: list[dict]
    image_refs: list[Any]

    @property
    def has_system(self) -> bool:
        return self.messages[0]["role"] == "system"


def _part_type(part: dict) -> Any:
    kind = part.get("type")
    if kind is None:
        if part.get("image") is not None or part.get("image_url") is not None:
            return "image"
        if part.get("text") is not None:
            return "text"
    return kind


def _image_ref(part: dict) -> Any:
    ref = part.get("image")
    if ref is None:
        ref = part.get("image_url")
        if isinstance(ref, dict):
            ref = ref.get("url")
    return ref


def normalize_turns(turns: list, source: str) -> Conversation:
    """Check each turn and part; raise ``DataError`` saying which turn/part is wrong and why."""
    messages, refs = [], []
    for t, turn in enumerate(turns):
        where = f"turn {t}"
        if not isinstance(turn, dict):
            raise DataError(source, "bad_message", f"{where} must be an object with role and content, "
                                                   f"got {_json_kind(turn)}")
        role, content = turn.get("role"), turn.get("content")
        if not isinstance(role, str) or not role:
            raise DataError(source, "bad_message", f"{where} has no string 'role' (got {role!r})")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise DataError(source, "bad_content", f"{where} ({role}): 'content' must be a string or a list "
                                                   f"of parts, got {_json_kind(content)}")
        parts = []
        for p, part in enumerate(content):
            if not isinstance(part, dict):
                raise DataError(source, "bad_content", f"{where} part {p} must be an object, got {_json_kind(part)}")
            kind = _part_type(part)
            if kind == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise DataError(source, "bad_content", f"{where} part {p}: a text part needs a string "
                                                           f"'text', got {_json_kind(text)}")
                parts.append({"type": "text", "text": text})
            elif kind in ("image", "image_url"):
                refs.append(_image_ref(part))
                parts.append({"type": "image"})
            else:
                raise DataError(source, "bad_content",
                                f"{where} part {p}: unsupported content type {kind!r}; supported: "
                                f"{', '.join(SUPPORTED_PART_TYPES)}")
        messages.append({"role": role, "content": parts})
    return Conversation(messages, refs)
