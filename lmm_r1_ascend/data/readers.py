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
Bad bytes are bad rows: jsonl is read in binary and decoded line by line, so a line that is not
UTF-8 (``invalid_utf8``), holds a NUL byte (``nul_byte``) or is over ``MAX_LINE_BYTES``
(``line_too_long``) is a DataError naming ``file:line`` like any other bad row (a UTF-8 byte-order
mark at the start of the file is allowed). A string with a NUL character (a ``\\u0000`` escape, or a
NUL in a HF dataset's column) is ``nul_byte`` too. Files the "hf" loader reads are checked for
UTF-8 and NUL bytes first; it reads a file whole, so such a line stops it under either policy.
Field names can be remapped with ``FieldMap``. Relative image paths are resolved against
the data file's folder (the dataset directory for saved datasets) unless ``image_root`` is set.

Benchmark sources (``source_rows``, read by evaluation/converters): a saved HF dataset directory,
a ``.parquet`` file or a directory of them (a Hub snapshot, its split chosen by file or folder
name), or a ``.jsonl`` / ``.json`` (rows, ``{"id": {...}}`` or columnar) / ``.csv`` file. A bad
row is a DataError in the stream, like ``open_rows``'; nothing is downloaded.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lmm_r1_ascend.data.errors import DataError
from lmm_r1_ascend.data.messages import Conversation, normalize_turns, parse_turns

LOADERS = ("auto", "jsonl", "hf")
_HF_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
# The longest jsonl line read (in bytes, newline excluded); a longer line is a bad row
# (``line_too_long``) and is never held in memory whole. Rows hold text and image paths, not pixels.
MAX_LINE_BYTES = 16 * 1024 * 1024
_CHUNK = 1024 * 1024
_BOM = codecs.BOM_UTF8
_SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}")
SOURCE_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")  # in this order: a snapshot may hold .json copies


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
        with open(path, "rb") as f:  # bytes: a bad byte here is reported per line later, not here
            head = f.read(4096).removeprefix(_BOM).lstrip()
        return "hf" if head.startswith(b"[") else "jsonl"
    if suffix in _HF_BUILDERS and suffix != ".jsonl":
        return "hf"
    return "jsonl"


def _read_lines(f) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, the line's bytes without the newline or None when over MAX_LINE_BYTES,
    the line's length in bytes) for each line of a binary file; memory stays under
    MAX_LINE_BYTES + one chunk whatever the line lengths."""
    lineno = 0
    while True:
        piece = f.readline(MAX_LINE_BYTES + 1)
        if not piece:
            return
        lineno += 1
        size = len(piece)
        if piece.endswith(b"\n"):
            yield lineno, piece[:-1], size - 1
            continue
        if size <= MAX_LINE_BYTES:  # the last line, without a newline
            yield lineno, piece, size
            continue
        while not piece.endswith(b"\n"):  # over the limit: read past the rest of the line
            piece = f.readline(_CHUNK)
            if not piece:
                break
            size += len(piece)
        yield lineno, None, size - piece.endswith(b"\n")


def _decode_line(raw: bytes, source: str) -> str:
    """The line as text; DataError ``nul_byte`` / ``invalid_utf8`` saying where in the line."""
    nul = raw.find(b"\0")
    if nul >= 0:
        raise DataError(source, "nul_byte", f"the line holds a NUL byte (0x00) at byte {nul + 1} "
                        "(a binary or corrupted file?); JSON text never contains one")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start:exc.end].hex(" ")
        raise DataError(source, "invalid_utf8",
                        f"the line is not valid UTF-8 (bytes {bad} at byte {exc.start + 1}: {exc.reason}); "
                        "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict | DataError]]:
    with open(path, "rb") as f:
        for lineno, raw, size in _read_lines(f):
            source = f"{path}:{lineno}"
            if raw is None:
                yield source, DataError(source, "line_too_long",
                                        f"the line is {size} bytes, over the limit of {MAX_LINE_BYTES} bytes "
                                        f"({MAX_LINE_BYTES // 2**20} MiB, readers.MAX_LINE_BYTES); a row holds "
                                        "text and image paths, not image data (a missing newline?)")
                continue
            if lineno == 1:
                raw = raw.removeprefix(_BOM)
            if not raw.strip():
                continue
            try:
                line = _decode_line(raw, source)
            except DataError as exc:
                yield source, exc
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield source, DataError(source, "invalid_json", f"invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            except RecursionError:
                yield source, DataError(source, "invalid_json", "invalid JSON (nested too deeply to parse)")
                continue
            if not isinstance(row, dict):
                yield source, DataError(source, "invalid_json", f"a row must be a JSON object, got {type(row).__name__}")
                continue
            yield source, row


_HF_HINT = ("the 'hf' loader reads a file whole, so a bad line cannot be skipped: fix the file, or read "
            "a jsonl file with loader 'jsonl', which skips bad lines under on_bad_line='skip'")


def _check_text_file(path: Path) -> None:
    """Before the "hf" loader reads a json / jsonl / csv file whole: its first line that holds a
    NUL byte or is not UTF-8, as a DataError naming file:line (no line length limit here: a JSON
    array may be one long line)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as f:
        lineno, piece = 1, f.readline(_CHUNK).removeprefix(_BOM)
        while True:
            source = f"{path}:{lineno}"
            if b"\0" in piece:
                raise DataError(source, "nul_byte", "the line holds a NUL byte (0x00); JSON and CSV text never "
                                "contain one", hint=_HF_HINT)
            try:
                decoder.decode(piece, final=not piece or piece.endswith(b"\n"))
            except UnicodeDecodeError as exc:
                raise DataError(source, "invalid_utf8", f"the line is not valid UTF-8 ({exc.reason}); re-encode "
                                "the file as UTF-8", hint=_HF_HINT) from None
            if not piece:
                return
            if piece.endswith(b"\n"):
                lineno += 1
            piece = f.readline(_CHUNK)


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
        if builder in ("json", "csv"):
            _check_text_file(path)
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


def _json_file_rows(path: Path) -> Iterator[dict | DataError]:
    """A .json file's rows: a list, {"id": row} (MathVista's testmini.json), columnar {"col": [...]},
    one object, or JSON lines under a .json name."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        yield from (row for _, row in _jsonl_rows(path))
        return
    if isinstance(data, list):
        yield from data
    elif isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        yield from data.values()
    elif isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        keys = list(data)
        for values in zip(*(data[k] for k in keys)):
            yield dict(zip(keys, values))
    elif isinstance(data, dict):
        yield data
    else:
        raise ValueError(f"{path}: expected JSON rows (objects), got {type(data).__name__}")


def _source_file_rows(path: Path) -> Iterator[dict | DataError]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
            yield from batch.to_pylist()
    elif suffix == ".jsonl":
        yield from (row for _, row in _jsonl_rows(path))
    elif suffix == ".json":
        yield from _json_file_rows(path)
    elif suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            yield from csv.DictReader(f)
    else:
        raise ValueError(f"{path}: cannot read '{suffix}' files; use a saved dataset directory or "
                         f"one of {list(SOURCE_SUFFIXES)}")


def source_rows(src: str | Path, split: str | None = None, fallbacks: tuple[str, ...] = ()) -> Iterator[dict | DataError]:
    """Every row of a benchmark source (module docstring), or the DataError of a row that cannot
    be read. A source holding several splits (a DatasetDict, a snapshot with testmini and test
    files) takes `split`, else its only split, else the one named by a `fallbacks` entry; else a
    ValueError names the splits. Saved datasets hand images over undecoded ({"bytes", "path"})."""
    src = Path(src).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"benchmark source not found: {src}")
    if src.is_file():
        yield from _source_file_rows(src)
        return
    if (src / "dataset_dict.json").is_file() or (src / "state.json").is_file():
        import datasets

        ds = datasets.load_from_disk(str(src))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[_choose(src, sorted(ds), split, fallbacks)]
        for col, feature in ds.features.items():  # images as {"bytes", "path"}: decoded per row, by the reader
            if isinstance(feature, datasets.Image) and feature.decode:
                ds = ds.cast_column(col, datasets.Image(decode=False))
        yield from ds
        return
    for suffix in SOURCE_SUFFIXES:
        files = sorted(p for p in src.rglob(f"*{suffix}")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(src).parts))
        if not files:
            continue
        groups: dict[str, list[Path]] = {}
        for p in files:
            groups.setdefault(_split_key(p, src), []).append(p)
        for p in groups[_choose(src, sorted(groups), split, fallbacks)]:
            yield from _source_file_rows(p)
        return
    raise ValueError(f"{src}: no saved dataset (dataset_dict.json / state.json) and no "
                     f"{'/'.join(SOURCE_SUFFIXES)} files in it")


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


def _has_nul(value: Any, depth: int = 0) -> bool:
    """Whether a string anywhere in ``value`` (nested lists / dicts, keys too) holds U+0000."""
    if isinstance(value, str):
        return "\0" in value
    if depth > 32:
        return False
    if isinstance(value, dict):
        return any(_has_nul(k, depth + 1) or _has_nul(v, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_nul(v, depth + 1) for v in value)
    return False


def _check_no_nul(row: dict, source: str) -> None:
    for key, value in row.items():
        if _has_nul(key) or _has_nul(value):
            raise DataError(source, "nul_byte", f"field {key!r} holds a NUL character (U+0000, e.g. a \\u0000 "
                            "escape); prompt text never should (a binary or corrupted source?)")


def parse_row(row: dict, fields: FieldMap, source: str) -> RawPrompt:
    """Check one row and turn it into a RawPrompt; raise DataError saying what is wrong."""
    _check_no_nul(row, source)
    msg_key = _pick_key(row, fields.message_key, ("message", "messages"), "the chat turns", "message_key", source)
    label_key = _pick_key(row, fields.label_key, ("answer", "label"), "the reference answer", "label_key", source)
    try:
        turns = parse_turns(row[msg_key], msg_key, source)
    except RecursionError:
        raise DataError(source, "bad_message", f"field '{msg_key}' is nested too deeply to parse") from None
    if _has_nul(turns):  # a "\\u0000" escape inside the stringified LMM-R1 message
        raise DataError(source, "nul_byte", f"field '{msg_key}' holds a NUL character (U+0000) in its chat turns; "
                        "prompt text never should (a binary or corrupted source?)")
    conversation = normalize_turns(turns, source)
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
