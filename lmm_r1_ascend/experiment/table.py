"""The paper-style ablation table: rows are variants, columns text / image accuracy, pass@k and mean
response length, each cell with its delta against the base model (the first row).

It reads the eval summaries through evaluation/compare.py (load_summary) and writes them with its
format_cell(), markdown() and draw_png(), so the cells read like `eval compare`'s: `34.6 (+16.0)`,
percentages for rates, tokens for lengths, the delta being value - base of the unrounded figures.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmm_r1_ascend.evaluation.compare import draw_png, format_cell, load_summary, markdown


def columns(n: int, kinds: list[str]) -> list[tuple[str, str, str, float]]:
    """(header, eval kind, figure, scale) per column: accuracy, pass@n, then length, per kind."""
    out = []
    for figure, name, scale in (("accuracy", "acc (%)", 100.0), (f"pass@{n}", f"pass@{n} (%)", 100.0),
                                ("response_length/mean", "length (tokens)", 1.0)):
        out += [(f"{kind} {name}", kind, figure, scale) for kind in kinds]
    return out


def figures_of(folder: Path, kind: str) -> dict[str, float]:
    """The "all" figures of a variant's eval summary of `kind` (text / image)."""
    _, figures, _ = load_summary(str(folder / f"eval_{kind}"))
    return figures["all"]


def build(rows: list[tuple[str, dict[str, dict[str, float]]]], cols: list[tuple[str, str, str, float]]
          ) -> tuple[list[str], list[list[str]], list[dict]]:
    """(header, cells, raw): rows are (label, {kind: figures}); the first row is the base. raw
    holds the numbers behind each cell ({column: {"value", "delta"}}) for table.json."""
    header = ["variant"] + [c[0] for c in cols]
    base = rows[0][1]
    cells, raw = [], []
    for i, (label, figs) in enumerate(rows):
        line, numbers = [label], {"variant": label}
        for head, kind, figure, scale in cols:
            value = figs.get(kind, {}).get(figure)
            ref = base.get(kind, {}).get(figure) if i > 0 else None
            if value is None:
                line.append("-")
                continue
            line.append(format_cell(value, ref, scale))
            numbers[head] = {"value": scale * value, "delta": None if ref is None else scale * (value - ref)}
        cells.append(line)
        raw.append(numbers)
    return header, cells, raw


def write(rows: list[tuple[str, dict[str, dict[str, float]]]], n: int, kinds: list[str], out: Path,
          title: str, note: str = "") -> tuple[Path, Path, str]:
    """Write out/table.md, out/table.json and out/table.png; returns their paths and the markdown."""
    header, cells, raw = build(rows, columns(n, kinds))
    text = markdown(header, cells)
    md = f"{title}\n\n{text}\n" + (f"\n{note}\n" if note else "")
    (out / "table.md").write_text(md)
    (out / "table.json").write_text(json.dumps({"title": title, "rows": raw}, indent=2) + "\n")
    plain = frozenset(i for i, head in enumerate(header) if "length" in head)  # longer is not better
    png = draw_png(header, cells, out / "table.png", title, plain_columns=plain)
    return out / "table.md", png, md
