"""What every benchmark converter shares: the row context (index, seed, images saved as PNG),
column readers that raise a DataError naming the column, labels (``boxed``), multiple-choice
options and the LMM-R1 output row (system turn ``MATH_SYSTEM_PROMPT``, then the user turn with
its images as absolute ``file://`` URIs).

A converter is ``fn(row: dict, ctx: RowContext) -> dict`` with "turns", "answer", "question",
"id" and "info"; a row it cannot take raises ``bad(reason, detail)`` (a DataError of kind
``reason``: missing_field, bad_field, missing_image, corrupt_image), which ``convert`` names
with ``file[row i]`` and the benchmark.
"""

from __future__ import annotations

import ast
import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse
from urllib.request import url2pathname

from lmm_r1_ascend.data.errors import DataError
from lmm_r1_ascend.data.templating import MATH_SYSTEM_PROMPT
from lmm_r1_ascend.rewards.multiple_choice import option_letter

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MC_INSTRUCTION = "Answer with the letter of the correct option."


def bad(reason: str, detail: str) -> DataError:
    """A row the converter cannot take: a DataError of kind `reason` (convert() adds where)."""
    return DataError("", reason, detail, hint="")


@dataclass
class RowContext:
    """What a converter gets besides the row: its 0-based index, the seed, and `image()`."""

    index: int
    seed: int
    base_dir: Path
    image_dir: Path
    n_images: int = 0

    def image(self, value: Any, column: str) -> str:
        """Save one image value as PNG; its absolute file:// URI."""
        img = _open_image(value, column, self.base_dir)
        self.image_dir.mkdir(parents=True, exist_ok=True)
        path = self.image_dir / f"{self.index:06d}_{self.n_images}.png"
        try:
            if img.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
                img = img.convert("RGB")
            img.save(path, format="PNG")
        except Exception as exc:  # a lazily decoded PIL image (saved datasets) fails only here
            path.unlink(missing_ok=True)
            raise bad("corrupt_image", f"cannot decode the image in column '{column}': {exc}") from exc
        self.n_images += 1
        return path.resolve().as_uri()


def _open_image(value: Any, column: str, base_dir: Path):
    from PIL import Image

    data, path = None, None
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):  # HF's stored form: {"bytes": b"...", "path": "x.png"}
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data = value
    elif isinstance(value, str) and value.startswith("data:image/") and "," in value:
        try:
            data = base64.b64decode(value.split(",", 1)[1], validate=True)
        except ValueError as exc:  # binascii.Error
            raise bad("corrupt_image", f"bad base64 image in column '{column}': {exc}") from None
    elif isinstance(value, str) and value.strip():
        path = value
    if not data and not path:
        raise bad("missing_image", f"no image in column '{column}' (got {type(value).__name__})")
    if not data:
        p = Path(url2pathname(urlparse(path).path) if path.startswith("file://") else path).expanduser()
        p = p if p.is_absolute() else base_dir / p
        if not p.is_file():
            raise bad("missing_image", f"image file of column '{column}' not found: {p}")
        data = p.read_bytes()
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as exc:  # PIL raises many kinds on corrupt data
        raise bad("corrupt_image", f"cannot decode the image in column '{column}': {exc}") from exc
    return img


def present(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return value is not None and not (isinstance(value, (list, tuple)) and not value)


def need(row: dict, *columns: str) -> tuple[str, Any]:
    """(column, value) of the first present column; a missing_field error naming them all if none is."""
    for col in columns:
        if present(row.get(col)):
            return col, row[col]
    names = " or ".join(f"'{c}'" for c in columns)
    raise bad("missing_field", f"missing column {names} (the row has {sorted(row)})")


def field_text(row: dict, *columns: str) -> str:
    col, value = need(row, *columns)
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise bad("bad_field", f"column '{col}' must be text, got {type(value).__name__}")
    return str(value).strip()


def field_list(row: dict, column: str) -> list:
    value = row.get(column)
    if isinstance(value, str) and value.strip().startswith("["):  # a list stored as text (CSV)
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError) as exc:
            raise bad("bad_field", f"column '{column}' is not a list: {exc}") from None
    if value is None or value == "":
        return []
    if not isinstance(value, (list, tuple)):
        raise bad("bad_field", f"column '{column}' must be a list, got {type(value).__name__}")
    return [str(v).strip() for v in value]


def _wrapped(s: str, head: str) -> bool:
    """`s` is `head{...}` with the brace opened by head closing at the very end."""
    if not (s.startswith(head + "{") and s.endswith("}")):
        return False
    depth = 0
    for j in range(len(head), len(s)):
        depth += {"{": 1, "}": -1}.get(s[j], 0)
        if depth == 0:
            return j == len(s) - 1
    return False


def strip_math(ans: str) -> str:
    """Drop outer $...$, \\(...\\) and \\boxed{...} around a whole answer ("$a$ and $b$" stays)."""
    s = ans.strip()
    for _ in range(4):
        if len(s) >= 2 and s[0] == "$" and s[-1] == "$" and "$" not in s.strip("$"):
            s = s.strip("$").strip()
        elif s.startswith("\\(") and s.endswith("\\)") and "\\(" not in s[2:]:
            s = s[2:-2].strip()
        elif _wrapped(s, "\\boxed"):
            s = s[len("\\boxed{"):-1].strip()
        else:
            break
    return s


def boxed(answer: str) -> str:
    """The LMM-R1 label for an answer: ``$\\boxed{answer}$`` (outer $ / \\boxed removed first)."""
    return f"$\\boxed{{{strip_math(answer)}}}$"


def options_text(options: list[str]) -> str:
    return "\n".join(f"({LETTERS[i]}) {opt}" for i, opt in enumerate(options))


def choice_letter(answer: str, options: list[str], column: str, *, letter_first: bool) -> str:
    """The letter of `answer` among `options`: the answer is a letter, or one option's text
    (`letter_first`: which reading wins when both apply)."""
    stripped = [o.strip() for o in options]
    letter = option_letter(answer)
    as_letter = letter if letter is not None and LETTERS.index(letter) < len(options) else None
    as_text = LETTERS[stripped.index(answer.strip())] if answer.strip() in stripped else None
    found = (as_letter or as_text) if letter_first else (as_text or as_letter)
    if found is not None:
        return found
    raise bad("bad_field", f"column '{column}' ({answer!r}) is neither an option letter nor one of the "
                              f"{len(options)} options")


def _turns(text: str, images: list[str]) -> list[dict]:
    user: Any = text if not images else [*({"type": "image", "image": uri} for uri in images),
                                        {"type": "text", "text": text}]
    return [{"role": "system", "content": MATH_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def output(text: str, images: list[str], answer: str, question: str, rid: Any, **info: Any) -> dict:
    keep = {k: v for k, v in info.items() if v is not None and not (isinstance(v, float) and v != v)}  # no NaN
    return {"turns": _turns(text, images), "answer": answer, "question": question,
            "id": None if rid is None else str(rid), "info": keep}


@dataclass(frozen=True)
class Benchmark:
    """One converter: the HF dataset id, the split names it was written for (taken from a
    source holding several splits: a DatasetDict's split, or a Hub file / folder name), and
    the row function."""

    name: str
    hf_id: str
    splits: tuple[str, ...]
    fn: Callable[[dict, RowContext], dict]

    def __call__(self, row: dict, ctx: RowContext) -> dict:
        return self.fn(row, ctx)
