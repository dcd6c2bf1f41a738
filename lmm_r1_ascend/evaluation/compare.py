"""`python -m lmm_r1_ascend.eval compare RUN_A RUN_B ...`: the paper-style side-by-side table.

A RUN is an eval output directory (its summary.json), a summary.json itself, or a training run
directory (its latest validation, eval/step_N_summary.json). Rows are the datasources
(benchmarks) plus "all", columns the runs, each cell the metric (default accuracy) and, from
the second run on, its delta against the first. Printed as markdown; `--png` draws it.
"""

from __future__ import annotations

from lmm_r1_ascend.config.cli import CliParser, parse_cli
import json
import re
from pathlib import Path


def load_summary(run: str) -> tuple[str, dict[str, dict[str, float]]]:
    """(label, {datasource: figures}) of one RUN (see the module docstring)."""
    p = Path(run)
    if p.is_file():
        data = json.loads(p.read_text())
        return p.parent.name, data.get("figures", data)
    if (p / "summary.json").exists():
        data = json.loads((p / "summary.json").read_text())
        return p.name, data.get("figures", data)
    steps = sorted((p / "eval").glob("step_*_summary.json"),
                   key=lambda f: int(re.search(r"step_(\d+)_", f.name).group(1))) if (p / "eval").is_dir() else []
    if steps:
        step = re.search(r"step_(\d+)_", steps[-1].name).group(1)
        return f"{p.name}@{step}", json.loads(steps[-1].read_text())
    raise FileNotFoundError(f"{run}: no summary.json and no eval/step_*_summary.json (is it an eval output "
                            "or a training run with trainer.eval_steps?)")


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
            if value is None:
                cells.append("-")
            elif i == 0 or base is None:
                cells.append(f"{100 * value:.1f}")
            else:
                cells.append(f"{100 * value:.1f} ({100 * (value - base):+.1f})")
        rows.append(cells)
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def draw_png(header: list[str], rows: list[list[str]], path: Path, title: str) -> Path:
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
        text = cell.get_text().get_text()
        if "(+" in text:
            cell.set_facecolor("#e3f4e3")
        elif "(-" in text:
            cell.set_facecolor("#f8e1e1")
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
    p.add_argument("--png", default=None, help="also draw the table into this PNG")
    args = parse_cli(p, argv)
    runs = [load_summary(r) for r in args.runs]
    if not any(args.metric in fig for _, f in runs for fig in f.values()):
        raise ValueError(f"no run reports {args.metric!r}; they report e.g. {', '.join(sorted(next(iter(runs[0][1].values()))))}")
    header, rows = table_rows(runs, args.metric)
    print(f"{args.metric} (%), deltas against {runs[0][0]}:\n")
    print(markdown(header, rows))
    if args.png:
        print(f"wrote {draw_png(header, rows, Path(args.png), f'{args.metric} (%), deltas against {runs[0][0]}')}")
    return 0
