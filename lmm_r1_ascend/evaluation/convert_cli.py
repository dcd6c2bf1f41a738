"""`python -m lmm_r1_ascend.eval convert NAME SRC --out FILE.jsonl`: one of the paper's
benchmarks, from its public layout (a saved HF dataset directory, parquet or jsonl; never
downloaded here) to LMM-R1 jsonl (evaluation/converters/: one module per benchmark;
docs/benchmarks.md lists the columns).
`convert sokoban OUT_DIR` builds the held-out Sokoban level set instead."""

from __future__ import annotations

from lmm_r1_ascend.config.cli import CliParser, parse_cli
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from lmm_r1_ascend.evaluation.converters import BENCHMARKS, convert

    names = sorted(BENCHMARKS) + ["sokoban"]
    p = CliParser(prog="python -m lmm_r1_ascend.eval convert", description=__doc__.split("\n\n")[0])
    p.add_argument("name", choices=names)
    p.add_argument("src", help="the dataset (directory, parquet or jsonl); for sokoban: the output directory")
    p.add_argument("--out", default=None, help="the jsonl to write (required except for sokoban)")
    p.add_argument("--on-bad-line", choices=("raise", "skip"), default="raise")
    p.add_argument("--seed", type=int, default=0, help="option shuffling (GPQA) / level generation (sokoban)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--levels", type=int, default=100, help="sokoban: number of held-out levels")
    args = parse_cli(p, argv)
    if args.name == "sokoban":
        from lmm_r1_ascend.evaluation.sokoban_eval import build_sokoban_eval_set, multiturn_name

        out = build_sokoban_eval_set(Path(args.src), n_levels=args.levels, seed=args.seed)
        print(f"wrote {out} (single-shot) and {out.with_name(multiturn_name(out.name))} (step by step: "
              "eval with env.name=sokoban)")
        return 0
    if not args.out:
        p.error("--out FILE.jsonl is required")
    report = convert(args.name, Path(args.src), Path(args.out), on_bad_line=args.on_bad_line, seed=args.seed,
                     limit=args.limit)
    print(f"{args.name}: wrote {report.rows_written} rows to {args.out}; skipped {report.rows_skipped}")
    for line in report.problems[:20]:
        print(f"  skipped: {line}")
    return 0
