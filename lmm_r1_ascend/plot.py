"""`python -m lmm_r1_ascend.plot RUN_DIR [--out FILE.png]`: reward, accuracy, the held-out
evaluation, KL, response lengths, losses and step time over steps, from RUN_DIR/metrics.jsonl,
as one PNG (default RUN_DIR/metrics.png).

A metric that is missing, or the same at every step (KL in a run without a KL term, the
format reward when every answer is well formed), is said in one line in its panel instead of
drawn as a flat line; the run's config.yaml, when there, gives the reason. An MGT or
multi-datasource run also gets response length per datasource (train and held-out): the
length signature the LMM-R1 paper follows per task.
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path
from typing import Any

from lmm_r1_ascend.config.cli import CliParser, parse_cli

PANELS = (  # (title, metric keys drawn in it); the held-out and per-datasource panels are built per run
    ("reward", ("reward/mean", "reward/format")),
    ("accuracy (train samples)", ("reward/accuracy",)),
    ("held-out eval", ()),
    ("KL to reference", ("kl",)),
    ("response length (tokens)", ("response_length/mean", "eval/all/response_length/mean")),
    ("response length per datasource", ()),
    ("losses", ("loss/policy", "loss/value")),
    ("entropy / grad norm", ("entropy", "grad_norm")),
    ("step time (s)", ("timing/step", "timing/rollout")),
)
EVAL_KEY = re.compile(r"^eval/(?P<source>[^/]+)/(?P<figure>accuracy|pass@(?P<k>\d+))$")
TRAIN_LENGTH = re.compile(r"^response_length/(?P<source>[^/]+)/mean$")


def _config(run_dir: Path) -> dict[str, Any]:
    try:
        import yaml

        return yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, ValueError):
        return {}


def why_missing_or_flat(key: str, cfg: dict[str, Any]) -> str:
    """The configuration's reason for a metric that is absent or constant, or ''."""
    alg = cfg.get("algorithm") or {}
    if key == "kl" and alg and not alg.get("init_kl_coef") and not alg.get("use_kl_loss"):
        return "no KL term: algorithm.init_kl_coef=0"
    if key == "loss/value" and alg.get("advantage_estimator") not in (None, "gae"):
        return f"no critic with algorithm.advantage_estimator={alg['advantage_estimator']}"
    if key.startswith("eval/") and not (cfg.get("data") or {}).get("eval_data", True):
        return "no held-out data: data.eval_data is empty"
    return ""


def eval_keys(keys: set[str]) -> list[str]:
    """Per datasource, eval/<source>/accuracy and its largest pass@k, sources in name order with "all"
    last (left out when there is one datasource: it would repeat it)."""
    by_source: dict[str, dict[str, int]] = {}
    for key in keys:
        m = EVAL_KEY.match(key)
        if m:
            by_source.setdefault(m["source"], {})[key] = int(m["k"] or 0)
    if len(by_source) == 2 and "all" in by_source:  # one datasource: "all" repeats it
        del by_source["all"]
    out = []
    for source in sorted(by_source, key=lambda s: (s == "all", s)):
        figures = by_source[source]
        out += [k for k in figures if k.endswith("/accuracy")]
        passes = [k for k in figures if "/pass@" in k]
        if passes:
            out.append(max(passes, key=figures.get))
    return out


def length_keys(keys: set[str], cfg: dict[str, Any]) -> list[str]:
    """Per-datasource response lengths (train, then held-out) for an MGT or multi-datasource run."""
    train = sorted(k for k in keys if TRAIN_LENGTH.match(k))
    held = sorted(k for k in keys if re.match(r"^eval/(?!all/)[^/]+/response_length/mean$", k))
    if cfg.get("stage") == "mgt" or len(train) > 1 or len(held) > 1:
        return train + held
    return []


def _series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw RUN_DIR/metrics.jsonl into `out` (default RUN_DIR/metrics.png); returns the path."""
    import matplotlib.pyplot as plt

    fig = figure(run_dir)
    out = Path(out) if out else Path(run_dir) / "metrics.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def figure(run_dir: str | Path):
    """The matplotlib Figure of a run: one panel per entry of PANELS (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    from lmm_r1_ascend.trainer.metrics import read_metrics

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}/metrics.jsonl has no steps yet")
    cfg = _config(run_dir)
    keys = {k for r in rows for k in r}
    evaluated = any(k.startswith("eval/") for k in keys)
    panels = []
    for title, wanted in PANELS:
        if not evaluated:  # said once, in the held-out panel
            wanted = tuple(k for k in wanted if not k.startswith("eval/"))
        if title == "held-out eval":
            wanted = tuple(eval_keys(keys)) or ("eval/all/accuracy",)
        elif title == "response length per datasource":
            wanted = tuple(length_keys(keys, cfg))
            if not wanted:
                continue
        panels.append((title, wanted))
    ncols = 3
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(15, 3.6 * nrows), constrained_layout=True, squeeze=False)
    for ax, (title, wanted) in zip(axes.flat, panels):
        notes = []
        for key in wanted:
            pts = _series(rows, key)
            reason = why_missing_or_flat(key, cfg)
            if not pts:
                notes.append(f"{key}: not logged" + (f" ({reason})" if reason else ""))
            elif len({v for _, v in pts}) == 1 and (len(pts) > 1 or reason):
                notes.append(f"{key} = {_fmt(pts[0][1])} at every step" + (f" ({reason})" if reason else ""))
            else:
                held_out = key.startswith("eval/")
                ax.plot(*zip(*pts), marker="o", markersize=4 if held_out else 2.5, label=key,
                        linestyle="--" if "/pass@" in key else "-")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        if notes:
            y = 0.5 if not ax.lines else 0.04
            ax.text(0.5, y, "\n".join(textwrap.fill(n, 60) for n in notes), ha="center",
                    va="center" if not ax.lines else "bottom", transform=ax.transAxes, color="dimgray", fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title_of(run_dir, rows))
    return fig


def title_of(run_dir: Path, rows: list[dict]) -> str:
    """'<run>: N training steps' (a step-0 row is the evaluation before training, not a step)
    and the steps the held-out evaluation ran at."""
    trained = sorted({r["step"] for r in rows if r["step"] > 0})
    title = f"{run_dir.resolve().name}: {len(trained)} training step{'s' if len(trained) != 1 else ''}"
    if trained and trained[-1] != len(trained):  # a resumed or partial log
        title += f" (steps {trained[0]}-{trained[-1]})"
    evaluated = sorted({r["step"] for r in rows if any(k.startswith("eval/") for k in r)})
    if evaluated:
        shown = ", ".join(map(str, evaluated)) if len(evaluated) <= 6 else f"{evaluated[0]} ... {evaluated[-1]}"
        title += f"; held-out eval at step{'s' if len(evaluated) > 1 else ''} {shown}"
    return title


def main(argv: list[str] | None = None) -> int:
    parser = CliParser(prog="python -m lmm_r1_ascend.plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--out", help="PNG path (default RUN_DIR/metrics.png)")
    args = parse_cli(parser, argv)
    try:
        print(plot_run(args.run_dir, args.out))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
