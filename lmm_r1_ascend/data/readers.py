"""Rows from disk, and one row into a checked prompt record.

Sources (``loader``):
    "jsonl": a JSON-lines file read line by line (errors name ``file:line``);
    "hf":    a Hugging Face ``datasets`` source: a saved dataset directory
             (``Dataset.save_to_disk``, or a ``DatasetDict`` with ``split``), or a local
             json / jsonl / parquet / csv file (errors name ``file[row i]``, 0-based);
    "auto":  a directory -> hf; ``.jsonl`` -> jsonl; ``.json`` -> jsonl unless it holds one JSON
             array (then hf); ``.parquet`` / ``.csv`` / ``.arrow`` -> hf.
Row formats (both accepted in one file, told apart per row):
    LMM-R1: ``message`` is a STRING holding a JSON list of chat turns; label in ``answer``.
    chat:   ``messages`` is a list of chat turns; label in ``answer`` or ``label``.
Field names can be remapped with ``FieldMap``. Relative image paths are resolved against
the data file's folder (the dataset directory for saved datasets) unless ``image_root`` is set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lmm_r1_ascend.data.errors import DataError
from lmm_r1_ascend.data.messages import Conversation, normalize_turns, parse_turns

LOADERS = ("auto", "jsonl", "hf")
_HF_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


@dataclass(frozen=True)
class FieldMap:
    """Which row fields hold what.

    message_key: the chat turns; None tries "message" (LMM-R1) then "messages" (chat).
    label_key: the reference answer; None tries "answer" then "label".
    datasource_key: the metric / reward group; rows without it get ``default_datasource``.
    """

    message_key: str | None = None
    label_key: str | None = None
    datasource_key: str = "datasource"
    default_datasource: str = "default"


@dataclass
class RawPrompt:
    """One checked row, before templating: conversation (normalised turns and image refs),
    label, datasource, meta (the row's other fields plus "source"), source (where it came from)."""

    conversation: Conversation
    label: str
    datasource: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


def _pick_loader(path: Path) -> str:
    if path.is_dir():
        return "hf"
    suffix = path.suffix.lower()
    if suffix == ".json":
        with open(path, encoding="utf-8") as f:
            head = f.read(4096).lstrip()
        return "hf" if head.startswith("[") else "jsonl"
    if suffix in _HF_BUILDERS and suffix != ".jsonl":
        return "hf"
    return "jsonl"


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict | DataError]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            source = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield source, DataError(source, "invalid_json", f"invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(row, dict):
                yield source, DataError(source, "invalid_json", f"a row must be a JSON object, got {type(row).__name__}")
                continue
            yield source, row


def _hf_rows(path: Path, split: str, cache_dir: str | None) -> Iterator[tuple[str, dict]]:
    import datasets

    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{path}: no split '{split}' in the saved dataset (it has {sorted(ds)}); set split")
            ds = ds[split]
    else:
        builder = _HF_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"{path}: cannot load '{path.suffix}' files with datasets; use one of "
                             f"{sorted(_HF_BUILDERS)} or a saved dataset directory")
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache_dir)
    for i, row in enumerate(ds):
        yield f"{path}[row {i}]", row


def open_rows(path: str | Path, loader: str = "auto", split: str = "train",
              hf_cache_dir: str | None = None) -> tuple[Path, Iterator[tuple[str, dict | DataError]]]:
    """(base folder for relative image paths, iterator of (source, row or the row's DataError))."""
    path = Path(path).expanduser()
    if loader not in LOADERS:
        raise ValueError(f"unknown data loader '{loader}'; choose one of {list(LOADERS)}")
    if not path.exists():
        raise FileNotFoundError(f"data path not found: {path}; check the data path in the config")
    loader = _pick_loader(path) if loader == "auto" else loader
    base_dir = path if path.is_dir() else path.parent
    if loader == "hf":
        return base_dir, _hf_rows(path, split, hf_cache_dir)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; loader 'jsonl' needs a file (use loader 'hf' for a saved dataset)")
    return base_dir, _jsonl_rows(path)


def _pick_key(row: dict, wanted: str | None, defaults: tuple[str, ...], what: str, option: str,
              source: str) -> str:
    candidates = (wanted,) if wanted else defaults
    for key in candidates:
        if key in row and row[key] is not None:
            return key
    names = " or ".join(f"'{k}'" for k in candidates)
    raise DataError(source, "missing_field",
                    f"missing field {names} ({what}); the row has {sorted(row)}. If the field has "
                    f"another name, set {option}")


def parse_row(row: dict, fields: FieldMap, source: str) -> RawPrompt:
    """Check one row and turn it into a RawPrompt; raise DataError saying what is wrong."""
    msg_key = _pick_key(row, fields.message_key, ("message", "messages"), "the chat turns", "message_key", source)
    label_key = _pick_key(row, fields.label_key, ("answer", "label"), "the reference answer", "label_key", source)
    conversation = normalize_turns(parse_turns(row[msg_key], msg_key, source), source)
    label = row[label_key]
    if isinstance(label, (int, float)) and not isinstance(label, bool):
        label = str(label)
    if not isinstance(label, str):
        raise DataError(source, "bad_field", f"field '{label_key}' must be a string, got {type(label).__name__}")
    datasource = row.get(fields.datasource_key)
    if datasource is None:
        datasource = fields.default_datasource
    if not isinstance(datasource, str):
        raise DataError(source, "bad_field",
                        f"field '{fields.datasource_key}' must be a string, got {type(datasource).__name__}")
    meta = {k: v for k, v in row.items() if k not in (msg_key, label_key, fields.datasource_key)}
    meta["source"] = source
    return RawPrompt(conversation, label, datasource, source, meta)
