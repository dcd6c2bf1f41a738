"""The benchmark registry and `convert`: one of the paper's evaluation benchmarks, from its
public layout into LMM-R1 jsonl.

    report = convert("mathvista_testmini", Path("MathVista"), Path("mathvista_testmini.jsonl"))

A source is read by data/readers.source_rows (a saved HF dataset directory, parquet files, or
a jsonl / json / csv file; nothing is downloaded). Each output row is
``{"message": json.dumps([system, user]), "answer": "$\\boxed{...}$", "datasource": NAME,
"question": ..., "id": ..., "info": {...}}``; multiple-choice answers are the option letter
(``$\\boxed{B}$``), which the math reward judges as a letter (rewards/multiple_choice.py).
Images are re-encoded as PNG under ``image_dir``. Column names follow the dataset cards
(docs/benchmarks.md); they were checked against fixtures written from those cards, never
against the downloaded datasets. A bad row (missing column, answer not among the choices,
missing or undecodable image, a line that is not JSON) raises a ``DataError`` naming
``file[row i]`` and the column under ``on_bad_line="raise"``, or is counted in
``rows_skipped`` with its problem under "skip".

Each benchmark is a module of this package exposing ``BENCHMARK`` (common.Benchmark);
``register_benchmark`` adds one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from lmm_r1_ascend.data.errors import DataError
from lmm_r1_ascend.data.readers import FieldMap, parse_row, source_rows
from lmm_r1_ascend.evaluation.converters.common import Benchmark, RowContext
from lmm_r1_ascend.evaluation.converters.gpqa_diamond import BENCHMARK as GPQA_DIAMOND
from lmm_r1_ascend.evaluation.converters.math500 import BENCHMARK as MATH500
from lmm_r1_ascend.evaluation.converters.mathverse import BENCHMARK as MATHVERSE
from lmm_r1_ascend.evaluation.converters.mathvision import BENCHMARK as MATHVISION
from lmm_r1_ascend.evaluation.converters.mathvista import BENCHMARK as MATHVISTA
from lmm_r1_ascend.evaluation.converters.mmstar import BENCHMARK as MMSTAR
from lmm_r1_ascend.evaluation.converters.olympiadbench import BENCHMARK as OLYMPIADBENCH

BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(bench: Benchmark) -> Benchmark:
    """Make `bench` convertible by its name (a name registered twice is an error)."""
    if bench.name in BENCHMARKS:
        raise ValueError(f"benchmark {bench.name!r} is already registered")
    BENCHMARKS[bench.name] = bench
    return bench


for _bench in (MATH500, GPQA_DIAMOND, OLYMPIADBENCH, MATHVISTA, MATHVERSE, MATHVISION, MMSTAR):
    register_benchmark(_bench)


@dataclass
class ConvertReport:
    rows_written: int = 0
    rows_skipped: int = 0
    problems: list[str] = field(default_factory=list)  # one line per skipped row


def load_rows(src: Path, split: str | None = None) -> Iterator[dict]:
    """The rows of a benchmark source as dicts (data/readers.source_rows). A source holding
    several splits needs `split`; without it a ValueError names the splits. A row that cannot
    be read is a DataError naming ``src[row i]``."""
    for i, row in enumerate(source_rows(src, split)):
        if isinstance(row, DataError):
            raise DataError(f"{src}[row {i}]", row.reason, row.detail, hint="")
        yield row


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
            for i, row in enumerate(source_rows(src, split, bench.splits)):
                source = f"{src}[row {i}]"
                try:
                    if isinstance(row, DataError):  # a line the reader could not take (its file:line kept)
                        raise DataError(source, row.reason, f"{row.detail} ({row.source})")
                    if not isinstance(row, dict):
                        raise DataError(source, "bad_field", f"a row must be an object, got {type(row).__name__}")
                    built = bench(row, RowContext(i, seed, base_dir, image_dir))
                    line = {"message": json.dumps(built["turns"], ensure_ascii=False), "answer": built["answer"],
                            "datasource": name, "question": built["question"], "id": built["id"],
                            "info": built["info"]}
                    parse_row(line, FieldMap(), source)  # the training reader accepts it
                except DataError as exc:
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
