"""`python -m lmm_r1_ascend.eval compare RUN_A RUN_B ...`: the paper-style side-by-side table.

A RUN is an eval output directory (its summary.json), a summary.json itself, a training run's
eval/step_N_summary.json, or a training run directory (its latest validation). Columns are
labelled by the run's folder name and, for validations during training, the step
(`demo_fre@0`, `demo_fre@60`); `--label A B ...` names them instead; labels that would be
equal are made distinct (a more specific name, else " (2)"). Rows are the datasources
(benchmarks) plus "all", columns the runs, each cell the metric (default accuracy) and, from
the second run on, its delta against the first. Printed as markdown; `--png` draws it.
"""

from __future__ import annotations

from lmm_r1_ascend.config.cli import CliParser, parse_cli
import json
import re
from pathlib import Path


STEP_FILE = re.compile(r"^step_(\d+)_summary\.json$")


def _figures(data: dict) -> dict[str, dict[str, float]]:
    return data.get("figures", data)


def _stamp_label(data: dict) -> str | None:
    """A label from an eval summary's own stamp: the model's folder and the date (UTC)."""
    stamp = data.get("stamp") or {}
    model = Path(str(stamp.get("model", ""))).name
    date = str(stamp.get("date_utc", ""))[:16].replace("T", " ")
    return " ".join(part for part in (model, date) if part) or None


def load_summary(run: str) -> tuple[str, dict[str, dict[str, float]], list[str]]:
    """(label, {datasource: figures}, fallback labels) of one RUN (see the module docstring).

    The label names the run and, for a validation during training, the step: `demo_fre@60` for
    RUN/eval/step_60_summary.json or for a training run RUN (its latest); an eval output's folder
    name (`after`) for OUT/summary.json or OUT. The fallbacks, more specific, break ties."""
    p = Path(run)
    if p.is_file():
        data = json.loads(p.read_text())
        step = STEP_FILE.match(p.name)
        if step and p.parent.name == "eval":  # a training run's validation: RUN/eval/step_N_summary.json
            return (f"{p.parent.parent.resolve().name}@{step.group(1)}", _figures(data),
                    [f"{p.parent.parent}@{step.group(1)}"])
        folder = p.parent.resolve().name
        label = folder if p.name == "summary.json" else f"{folder}/{p.stem}"
        return label, _figures(data), [x for x in (_stamp_label(data), str(p.parent)) if x]
    if (p / "summary.json").exists():
        data = json.loads((p / "summary.json").read_text())
        return p.resolve().name, _figures(data), [x for x in (_stamp_label(data), str(p)) if x]
    steps = sorted((f for f in (p / "eval").glob("step_*_summary.json") if STEP_FILE.match(f.name)),
                   key=lambda f: int(STEP_FILE.match(f.name).group(1))) if (p / "eval").is_dir() else []
    if steps:
        step = STEP_FILE.match(steps[-1].name).group(1)
        return f"{p.resolve().name}@{step}", json.loads(steps[-1].read_text()), [f"{p}@{step}"]
    raise FileNotFoundError(f"{run}: no summary.json and no eval/step_*_summary.json (is it an eval output "
                            "or a training run with trainer.eval_steps?)")


def unique_labels(candidates: list[list[str]]) -> list[str]:
    """One label per run, all distinct: each run's first label; where several share one, each of
    them takes its next, more specific candidate (when that separates them); labels still equal
    get " (2)", " (3)", ... in order. candidates: per run, its labels from the most readable on."""
    labels = [c[0] for c in candidates]
    for depth in range(1, max(len(c) for c in candidates)):
        clash = [i for i, lab in enumerate(labels) if labels.count(lab) > 1]
        if not clash:
            break
        for lab in {labels[i] for i in clash}:
            group = [i for i in clash if labels[i] == lab]
            finer = [candidates[i][depth] if depth < len(candidates[i]) else labels[i] for i in group]
            if len(set(finer)) > 1:
                for i, f in zip(group, finer):
                    labels[i] = f
    out: list[str] = []
    for lab in labels:
        new, k = lab, 1
        while new in out or (new != lab and new in labels):  # a suffix never takes another run's own label
            k += 1
            new = f"{lab} ({k})"
        out.append(new)
    return out


def format_cell(value: float, base: float | None, scale: float = 100.0) -> str:
    """One cell: `scale * value` to one decimal and, given a base, its delta `scale * (value - base)`
    in parentheses (`34.6 (+16.0)`), the delta taken from the unrounded figures."""
    text = f"{scale * value:.1f}"
    return text if base is None else f"{text} ({scale * (value - base):+.1f})"


def table_rows(runs: list[tuple[str, dict]], metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison; a missing cell is '-'."""
    sources = sorted({s for _, fig in runs for s in fig}, key=lambda s: (s == "all", s))
    header = ["benchmark"] + [label for label, _ in runs]
    rows = []
    for source in sources:
        base = runs[0][1].get(source, {}).get(metric)
        cells = [source]
        for i, (_, fig) in enumerate(runs):
            value = fig.get(source, {}).get(metric)
            cells.append("-" if value is None else format_cell(value, None if i == 0 else base))
        rows.append(cells)
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def delta_colour(cell: str) -> str | None:
    """A cell's background: green for a positive delta `(+1.2)`, red for a negative one, none for
    a zero delta `(+0.0)` or a cell without one."""
    if re.search(r"\([+-]0(\.0*)?\)", cell):
        return None
    return "#e3f4e3" if "(+" in cell else "#f8e1e1" if "(-" in cell else None


def draw_png(header: list[str], rows: list[list[str]], path: Path, title: str,
             plain_columns: frozenset[int] = frozenset()) -> Path:
    """Draw the table into `path`: a positive delta's cell green, a negative one's red, a zero
    delta's and those of `plain_columns` (indices into header, e.g. lengths, where more is not
    better) uncoloured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 2.0 * (len(header) - 1), 0.6 + 0.42 * (len(rows) + 1)))
    ax.axis("off")
    tab = ax.table(cellText=rows, colLabels=header, loc="center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(10)
    tab.scale(1, 1.4)
    for (r, c), cell in tab.get_celld().items():
        if r == 0:
            cell.set_text_props(weight="bold")
        colour = None if c in plain_columns else delta_colour(cell.get_text().get_text())
        if colour:
            cell.set_facecolor(colour)
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m lmm_r1_ascend.eval compare", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="eval output dirs, summary.json files, or training run dirs")
    p.add_argument("--metric", default="accuracy", help="accuracy, pass@8, maj@8, format_rate, ... (default accuracy)")
    p.add_argument("--label", nargs="+", default=None, metavar="LABEL",
                   help="one column label per RUN, in order (default: the run's name and step, or its stamp)")
    p.add_argument("--png", default=None, help="also draw the table into this PNG")
    args = parse_cli(p, argv)
    loaded = [load_summary(r) for r in args.runs]
    if args.label is not None and len(args.label) != len(loaded):
        raise ValueError(f"--label gives {len(args.label)} label(s) for {len(loaded)} run(s): give one per run, in order")
    candidates = [[lab] for lab in args.label] if args.label is not None else [[lab, *more] for lab, _, more in loaded]
    runs = list(zip(unique_labels(candidates), (fig for _, fig, _ in loaded)))
    if not any(args.metric in fig for _, f in runs for fig in f.values()):
        raise ValueError(f"no run reports {args.metric!r}; they report e.g. {', '.join(sorted(next(iter(runs[0][1].values()))))}")
    header, rows = table_rows(runs, args.metric)
    print(f"{args.metric} (%), deltas against {runs[0][0]}:\n")
    print(markdown(header, rows))
    if args.png:
        print(f"wrote {draw_png(header, rows, Path(args.png), f'{args.metric} (%), deltas against {runs[0][0]}')}")
    return 0
