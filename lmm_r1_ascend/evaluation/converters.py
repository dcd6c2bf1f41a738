"""The paper's evaluation benchmarks, from their public layouts into LMM-R1 jsonl.

    report = convert("mathvista_testmini", Path("MathVista"), Path("mathvista_testmini.jsonl"))

A source (``load_rows``) is a saved HF dataset directory (``save_to_disk``), a ``.parquet``
file or a directory of them (a Hub snapshot), or a ``.jsonl`` / ``.json`` / ``.csv`` file;
nothing is downloaded. Each output row is
``{"message": json.dumps([system, user]), "answer": "$\\boxed{...}$", "datasource": NAME,
"question": ..., "id": ..., "info": {...}}``; the system turn is the project's
``MATH_SYSTEM_PROMPT``; multiple-choice answers are the option letter (``$\\boxed{B}$``),
which the math reward judges as a letter (``rewards/multiple_choice.py``). Images (PIL
images, ``{"bytes", "path"}`` dicts as HF stores them, bytes, data URIs or paths) are
re-encoded as PNG under ``image_dir`` and referenced by absolute ``file://`` URIs.

Column names follow the dataset cards (docs/benchmarks.md); they were checked against
fixtures written from those cards, never against the downloaded datasets. A bad row
(missing column, answer not among the choices, missing or undecodable image) raises a
``DataError`` (a ValueError) naming ``file[row i]`` and the column under
``on_bad_line="raise"``, or is counted in ``rows_skipped`` with its problem under "skip".
"""

from __future__ import annotations

import ast
import base64
import csv
import io
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse
from urllib.request import url2pathname

from lmm_r1_ascend.data.errors import DataError
from lmm_r1_ascend.data.readers import FieldMap, parse_row
from lmm_r1_ascend.data.templating import MATH_SYSTEM_PROMPT
from lmm_r1_ascend.rewards.multiple_choice import option_letter

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MC_INSTRUCTION = "Answer with the letter of the correct option."
_SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}")
_DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")


# ----------------------------------------------------------------------------- reading
def _split_key(path: Path, root: Path) -> str:
    """Hub layouts name a split by file (data/testmini-00000-of-00001-x.parquet, testmini.parquet)
    or by folder (CONFIG/train/0000.parquet): the key keeps the folders, e.g. "data/testmini"."""
    parts = list(path.relative_to(root).parent.parts)
    m = _SHARD.match(path.stem)
    if m:
        parts.append(m.group("split"))
    elif not path.stem.isdigit():
        parts.append(path.stem)
    return "/".join(parts) or path.stem


def _choose(src: Path, names: list[str], split: str | None, fallbacks: tuple[str, ...]) -> str:
    """One of `names` (splits or split keys): `split` exactly (or as a path component), else
    the only one, else the one holding a fallback as a path component; else a ValueError."""
    if split is not None:
        hits = [n for n in names if n == split] or [n for n in names if split in n.split("/")]
        if len(hits) == 1:
            return hits[0]
        raise ValueError(f"{src}: split {split!r} {'is ambiguous' if hits else 'not found'}; it holds {names}")
    if len(names) == 1:
        return names[0]
    for fallback in fallbacks:
        hits = [n for n in names if fallback in n.split("/")]
        if len(hits) == 1:
            return hits[0]
    raise ValueError(f"{src} holds several splits {names}: pass split=NAME, or point at one split's file")


@dataclass(frozen=True)
class _Invalid:
    """A line of a JSON-lines file that is not JSON: a bad row, not the end of the file."""

    detail: str


def _lines(path: Path, text: str) -> Iterator[dict | _Invalid]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                yield _Invalid(f"invalid JSON on line {lineno} ({exc.msg})")


def _json_rows(path: Path) -> Iterator[dict | _Invalid]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        yield from _lines(path, text)
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError:  # JSON lines under a .json name
        yield from _lines(path, text)
        return
    if isinstance(data, list):
        yield from data
    elif isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        yield from data.values()  # {"1": {...}, "2": {...}} (MathVista's own testmini.json)
    elif isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        keys = list(data)
        for values in zip(*(data[k] for k in keys)):  # columnar {"col": [...]}
            yield dict(zip(keys, values))
    elif isinstance(data, dict):
        yield data
    else:
        raise ValueError(f"{path}: expected JSON rows (objects), got {type(data).__name__}")


def _file_rows(path: Path) -> Iterator[dict]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
            yield from batch.to_pylist()
    elif suffix in (".jsonl", ".json"):
        yield from _json_rows(path)
    elif suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            yield from csv.DictReader(f)
    else:
        raise ValueError(f"{path}: cannot read '{suffix}' files; use a saved dataset directory or "
                         f"one of {list(_DATA_SUFFIXES)}")


def _rows(src: Path, split: str | None, fallbacks: tuple[str, ...]) -> Iterator[dict]:
    src = Path(src).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"benchmark source not found: {src}")
    if src.is_file():
        yield from _file_rows(src)
        return
    if (src / "dataset_dict.json").is_file() or (src / "state.json").is_file():
        import datasets

        ds = datasets.load_from_disk(str(src))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[_choose(src, sorted(ds), split, fallbacks)]
        for col, feature in ds.features.items():  # images as {"bytes", "path"}: decoded per row, here
            if isinstance(feature, datasets.Image) and feature.decode:
                ds = ds.cast_column(col, datasets.Image(decode=False))
        yield from ds
        return
    for suffix in _DATA_SUFFIXES:  # parquet first: a Hub snapshot may also hold .json copies
        files = sorted(p for p in src.rglob(f"*{suffix}")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(src).parts))
        if not files:
            continue
        groups: dict[str, list[Path]] = {}
        for p in files:
            groups.setdefault(_split_key(p, src), []).append(p)
        for p in groups[_choose(src, sorted(groups), split, fallbacks)]:
            yield from _file_rows(p)
        return
    raise ValueError(f"{src}: no saved dataset (dataset_dict.json / state.json) and no "
                     f"{'/'.join(_DATA_SUFFIXES)} files in it")


def load_rows(src: Path, split: str | None = None) -> Iterator[dict]:
    """The rows of a benchmark source as dicts (see the module docstring). A source holding
    several splits (a DatasetDict, a snapshot with testmini and test files) needs `split`;
    without it a ValueError names the splits. Reads local files only."""
    for i, row in enumerate(_rows(Path(src), split, ())):
        if isinstance(row, _Invalid):
            raise ValueError(f"{src}[row {i}]: {row.detail}")
        yield row


# ----------------------------------------------------------------------------- rows
class BadRow(Exception):
    """A row that cannot be converted: reason (a DataError kind) and what is wrong."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass
class ConvertReport:
    rows_written: int = 0
    rows_skipped: int = 0
    problems: list[str] = field(default_factory=list)  # one line per skipped row


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
            raise BadRow("corrupt_image", f"cannot decode the image in column '{column}': {exc}") from exc
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
            raise BadRow("corrupt_image", f"bad base64 image in column '{column}': {exc}") from None
    elif isinstance(value, str) and value.strip():
        path = value
    if not data and not path:
        raise BadRow("missing_image", f"no image in column '{column}' (got {type(value).__name__})")
    if not data:
        p = Path(url2pathname(urlparse(path).path) if path.startswith("file://") else path).expanduser()
        p = p if p.is_absolute() else base_dir / p
        if not p.is_file():
            raise BadRow("missing_image", f"image file of column '{column}' not found: {p}")
        data = p.read_bytes()
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as exc:  # PIL raises many kinds on corrupt data
        raise BadRow("corrupt_image", f"cannot decode the image in column '{column}': {exc}") from exc
    return img


def _present(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return value is not None and not (isinstance(value, (list, tuple)) and not value)


def _need(row: dict, *columns: str) -> tuple[str, Any]:
    """(column, value) of the first present column; BadRow naming them all if none is."""
    for col in columns:
        if _present(row.get(col)):
            return col, row[col]
    names = " or ".join(f"'{c}'" for c in columns)
    raise BadRow("missing_field", f"missing column {names} (the row has {sorted(row)})")


def _text(row: dict, *columns: str) -> str:
    col, value = _need(row, *columns)
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise BadRow("bad_field", f"column '{col}' must be text, got {type(value).__name__}")
    return str(value).strip()


def _list(row: dict, column: str) -> list:
    value = row.get(column)
    if isinstance(value, str) and value.strip().startswith("["):  # a list stored as text (CSV)
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError) as exc:
            raise BadRow("bad_field", f"column '{column}' is not a list: {exc}") from None
    if value is None or value == "":
        return []
    if not isinstance(value, (list, tuple)):
        raise BadRow("bad_field", f"column '{column}' must be a list, got {type(value).__name__}")
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


def _strip_math(ans: str) -> str:
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
    return f"$\\boxed{{{_strip_math(answer)}}}$"


def _options_text(options: list[str]) -> str:
    return "\n".join(f"({LETTERS[i]}) {opt}" for i, opt in enumerate(options))


def _choice_letter(answer: str, options: list[str], column: str, *, letter_first: bool) -> str:
    """The letter of `answer` among `options`: the answer is a letter, or one option's text
    (`letter_first`: which reading wins when both apply)."""
    stripped = [o.strip() for o in options]
    letter = option_letter(answer)
    as_letter = letter if letter is not None and LETTERS.index(letter) < len(options) else None
    as_text = LETTERS[stripped.index(answer.strip())] if answer.strip() in stripped else None
    found = (as_letter or as_text) if letter_first else (as_text or as_letter)
    if found is not None:
        return found
    raise BadRow("bad_field", f"column '{column}' ({answer!r}) is neither an option letter nor one of the "
                              f"{len(options)} options")


def _turns(text: str, images: list[str]) -> list[dict]:
    user: Any = text if not images else [*({"type": "image", "image": uri} for uri in images),
                                        {"type": "text", "text": text}]
    return [{"role": "system", "content": MATH_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _out(text: str, images: list[str], answer: str, question: str, rid: Any, **info: Any) -> dict:
    keep = {k: v for k, v in info.items() if v is not None and not (isinstance(v, float) and v != v)}  # no NaN
    return {"turns": _turns(text, images), "answer": answer, "question": question,
            "id": None if rid is None else str(rid), "info": keep}


# ----------------------------------------------------------------------------- converters
def math500(row: dict, ctx: RowContext) -> dict:
    """MATH-500 (HuggingFaceH4/MATH-500, split test; test.jsonl): reads problem, answer,
    unique_id (id), subject, level (solution is not used). Prompt: the problem; label: boxed answer."""
    problem = _text(row, "problem")
    return _out(problem, [], boxed(_text(row, "answer")), problem, row.get("unique_id"),
                subject=row.get("subject"), level=row.get("level"))


def gpqa_diamond(row: dict, ctx: RowContext) -> dict:
    """GPQA-diamond (Idavidrein/gpqa, config gpqa_diamond, split train; gpqa_diamond.csv, gated):
    reads Question, Correct Answer, Incorrect Answer 1-3, Record ID (id), High-level domain,
    Subdomain. The four answers are shuffled with random.Random(seed + row index) into options
    A-D listed under the question; the label is the correct answer's letter."""
    question = _text(row, "Question")
    correct = _text(row, "Correct Answer")
    options = [correct] + [_text(row, f"Incorrect Answer {k}") for k in (1, 2, 3)]
    random.Random(ctx.seed + ctx.index).shuffle(options)
    letter = LETTERS[options.index(correct)]
    text = f"{question}\n\n{_options_text(options)}\n\n{MC_INSTRUCTION}"
    return _out(text, [], boxed(letter), question, row.get("Record ID"),
                domain=row.get("High-level domain"), subdomain=row.get("Subdomain"))


def olympiadbench(row: dict, ctx: RowContext) -> dict:
    """OlympiadBench (Hothan/OlympiadBench, the text-only English maths subset
    OE_TO_maths_en_COMP, split train): reads question, final_answer (a list of LaTeX strings,
    joined with ", " when several), context (prepended when present), image_1..image_5 (used
    when present, so the OE_MM subsets convert too), id, answer_type, unit, subfield,
    is_multiple_answer. The unit is not added to the prompt or the label."""
    question = _text(row, "question")
    answers = _list(row, "final_answer")
    if not answers:
        raise BadRow("missing_field", "missing column 'final_answer' (empty: a proof problem has none)")
    context = row.get("context")
    text = f"{context.strip()}\n\n{question}" if isinstance(context, str) and context.strip() else question
    images = [ctx.image(row[f"image_{k}"], f"image_{k}") for k in range(1, 6) if _present(row.get(f"image_{k}"))]
    return _out(text, images, boxed(", ".join(_strip_math(a) for a in answers)), question, row.get("id"),
                answer_type=row.get("answer_type"), unit=row.get("unit") or None, subfield=row.get("subfield"),
                is_multiple_answer=row.get("is_multiple_answer"))


def mathvista_testmini(row: dict, ctx: RowContext) -> dict:
    """MathVista testmini (AI4Math/MathVista, split testmini): reads pid (id), query (the
    benchmark's own prompt with its hint; question plus the choices when query is absent),
    decoded_image (else image, a path relative to the source), answer, choices,
    question_type (multi_choice: the label is the letter of the answer among choices; else the
    boxed answer), answer_type, precision, unit, metadata.category/task."""
    question = _text(row, "question")
    choices = _list(row, "choices")
    multi = row.get("question_type") == "multi_choice"
    if multi and not choices:
        raise BadRow("missing_field", "missing column 'choices' (question_type is multi_choice)")
    if _present(row.get("query")):
        text = _text(row, "query")
    else:
        text = f"{question}\n\nChoices:\n{_options_text(choices)}\n\n{MC_INSTRUCTION}" if multi else question
    answer = _text(row, "answer")
    label = boxed(_choice_letter(answer, choices, "answer", letter_first=False)) if multi else boxed(answer)
    col, image = _need(row, "decoded_image", "image")
    uri = ctx.image(image, col)
    meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
    return _out(text, [uri], label, question, row.get("pid"), question_type=row.get("question_type"),
                answer_type=row.get("answer_type"), precision=row.get("precision"), unit=row.get("unit") or None,
                category=meta.get("category"), task=meta.get("task"))


def mathverse_testmini(row: dict, ctx: RowContext) -> dict:
    """MathVerse testmini (AI4Math/MathVerse, config/split testmini; testmini.parquet): reads
    sample_index (id), problem_index, problem_version, question, query_cot (the CoT prompt;
    else query_wo, else question), image, answer, question_type (multi-choice: the label is the
    option letter in answer; free-form: the boxed answer), metadata.subject/subfield. Vision-only
    versions have the question inside the image, so the query is required, not the question."""
    text = _text(row, "query_cot", "query_wo", "question")
    question = str(row.get("question") or "").strip()
    answer = _text(row, "answer")
    if str(row.get("question_type", "")).replace("_", "-") == "multi-choice":
        letter = option_letter(answer, case_sensitive=False)
        if letter is None:
            raise BadRow("bad_field", f"column 'answer' ({answer!r}) is not an option letter (multi-choice)")
        label = boxed(letter)
    else:
        label = boxed(answer)
    images = []
    if row.get("problem_version") != "Text Only" or _present(row.get("image")):
        images.append(ctx.image(_need(row, "image")[1], "image"))
    meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
    return _out(text, images, label, question, row.get("sample_index"), problem_index=row.get("problem_index"),
                problem_version=row.get("problem_version"), question_type=row.get("question_type"),
                subject=meta.get("subject"), subfield=meta.get("subfield"))


def mathvision_test(row: dict, ctx: RowContext) -> dict:
    """MATH-Vision test (MathLLMs/MathVision, split test): reads id, question (kept with its
    <image1> marker), options (a list; empty for free-form questions), decoded_image (else
    image, a path), answer (an option letter when options exist), level, subject. Options are
    listed as (A) ... under the question; the label is the letter or the boxed answer."""
    question = _text(row, "question")
    options = _list(row, "options")
    answer = _text(row, "answer")
    if options:
        text = f"{question}\n\nChoices:\n{_options_text(options)}\n\n{MC_INSTRUCTION}"
        label = boxed(_choice_letter(answer, options, "answer", letter_first=True))
    else:
        text, label = question, boxed(answer)
    col, image = _need(row, "decoded_image", "image")
    return _out(text, [ctx.image(image, col)], label, question, row.get("id"),
                level=row.get("level"), subject=row.get("subject"))


def mmstar(row: dict, ctx: RowContext) -> dict:
    """MMStar (Lin-Chen/MMStar, split val; mmstar.parquet): reads index (id), question (the
    options are written inside it), image, answer (an option letter), category, l2_category."""
    question = _text(row, "question")
    answer = _text(row, "answer")
    letter = option_letter(answer, case_sensitive=False)
    if letter is None:
        raise BadRow("bad_field", f"column 'answer' ({answer!r}) is not an option letter")
    uri = ctx.image(_need(row, "image")[1], "image")
    return _out(f"{question}\n{MC_INSTRUCTION}", [uri], boxed(letter), question, row.get("index"),
                category=row.get("category"), l2_category=row.get("l2_category"))


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


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("math500", "HuggingFaceH4/MATH-500", ("test",), math500),
    Benchmark("gpqa_diamond", "Idavidrein/gpqa (gpqa_diamond)", ("gpqa_diamond", "train"), gpqa_diamond),
    Benchmark("olympiadbench", "Hothan/OlympiadBench (OE_TO_maths_en_COMP)", ("OE_TO_maths_en_COMP",),
              olympiadbench),
    Benchmark("mathvista_testmini", "AI4Math/MathVista", ("testmini",), mathvista_testmini),
    Benchmark("mathverse_testmini", "AI4Math/MathVerse", ("testmini",), mathverse_testmini),
    Benchmark("mathvision_test", "MathLLMs/MathVision", ("test",), mathvision_test),
    Benchmark("mmstar", "Lin-Chen/MMStar", ("val",), mmstar),
)}


# ----------------------------------------------------------------------------- convert
def convert(name: str, src: Path, out_path: Path, *, on_bad_line: str = "raise", seed: int = 0,
            limit: int | None = None, image_dir: Path | None = None, split: str | None = None) -> ConvertReport:
    """Convert benchmark `name` from `src` into LMM-R1 jsonl at `out_path`.

    on_bad_line: "raise" (DataError naming file[row i] and the column) or "skip" (counted).
    seed: GPQA's option shuffle (row i uses random.Random(seed + i)).
    limit: stop after this many rows written. image_dir: default out_path.parent /
    f"{out_path.stem}_images". split: for sources holding several splits (by default the
    benchmark's own split, e.g. testmini, is taken when present). The file is written
    atomically: a failed conversion leaves no partial jsonl (images already saved remain).
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}")
    if on_bad_line not in ("raise", "skip"):
        raise ValueError(f"on_bad_line must be 'raise' or 'skip', got {on_bad_line!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    bench, src, out_path = BENCHMARKS[name], Path(src).expanduser(), Path(out_path).expanduser()
    image_dir = Path(image_dir) if image_dir is not None else out_path.parent / f"{out_path.stem}_images"
    base_dir = src if src.is_dir() else src.parent
    report = ConvertReport()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for i, row in enumerate(_rows(src, split, bench.splits)):
                source = f"{src}[row {i}]"
                try:
                    if isinstance(row, _Invalid):
                        raise BadRow("invalid_json", row.detail)
                    if not isinstance(row, dict):
                        raise BadRow("bad_field", f"a row must be an object, got {type(row).__name__}")
                    built = bench(row, RowContext(i, seed, base_dir, image_dir))
                    line = {"message": json.dumps(built["turns"], ensure_ascii=False), "answer": built["answer"],
                            "datasource": name, "question": built["question"], "id": built["id"],
                            "info": built["info"]}
                    parse_row(line, FieldMap(), source)  # the training reader accepts it
                except (BadRow, DataError) as exc:
                    if on_bad_line == "raise":
                        raise DataError(source, exc.reason, f"{name}: {exc.detail}") from None
                    report.rows_skipped += 1
                    report.problems.append(f"{source}: {exc.detail}")
                    continue
                f.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
                report.rows_written += 1
                if limit is not None and report.rows_written >= limit:
                    break
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return report
