"""`python -m lmm_r1_ascend.plot RUN_DIR [--out FILE.png]`: reward, accuracy, KL, response length
and losses over steps, from RUN_DIR/metrics.jsonl, as one PNG (default RUN_DIR/metrics.png)."""

from __future__ import annotations

from lmm_r1_ascend.config.cli import CliParser, parse_cli
import sys
from pathlib import Path

PANELS = (  # (title, metric keys drawn in it)
    ("reward", ("reward/mean", "reward/format")),
    ("accuracy", ("reward/accuracy",)),
    ("KL to reference", ("kl",)),
    ("response length", ("response_length/mean",)),
    ("losses", ("loss/policy", "loss/value")),
    ("entropy / grad norm", ("entropy", "grad_norm")),
)


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    from lmm_r1_ascend.trainer.metrics import read_metrics

    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}/metrics.jsonl has no steps yet")
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5), constrained_layout=True)
    for ax, (title, keys) in zip(axes.flat, PANELS):
        drawn = False
        for key in keys:
            pts = [(s, r[key]) for s, r in zip(steps, rows) if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=2.5, label=key)
                drawn = True
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged in this run", ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.suptitle(f"{Path(run_dir).resolve().name}: {len(rows)} steps")
    out = Path(out) if out else Path(run_dir) / "metrics.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


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
