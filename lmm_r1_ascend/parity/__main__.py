"""`python -m lmm_r1_ascend.parity` (also `lmm-r1-parity`): record, run, compare.

    record   --out ROLLOUT.pt [--steps N] [--seed S]        once, on CPU
    run      --device DEV --out FILE.json [--rollout R.pt] [--dtype D] [--attention IMPL] [--plant P]
    compare  A.json B.json [--rtol R] [--atol A] [--metric-tol NAME=RTOL,ATOL ...]

Exit status: 0 success / within tolerance; 1 a tolerance violation (compare); 2 unusable
input (a missing or foreign file, different rollouts or step counts, an unusable device).
See docs/parity.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmm_r1_ascend.config.cli import CliParser, parse_cli

REPO_ROLLOUT = Path(__file__).resolve().parents[2] / "tests" / "golden" / "parity-rollout.pt"
DTYPE_CHOICES = ("float32", "bfloat16")  # replay.DTYPES' names; kept here so --help needs no torch


def _default_rollout() -> str:
    local = Path("tests/golden/parity-rollout.pt")
    return str(local if local.is_file() else REPO_ROLLOUT)


def _parser() -> argparse.ArgumentParser:
    from lmm_r1_ascend.parity.plants import PLANTS

    p = CliParser(prog="python -m lmm_r1_ascend.parity",
                                description="Backend parity: replay one recorded rollout on each backend and "
                                            "compare the per-step training metrics (docs/parity.md).")
    sub = p.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="record the rollout once, on CPU (a short seeded PPO run on the demo model)")
    rec.add_argument("--out", required=True, help="where to write the rollout (.pt)")
    rec.add_argument("--steps", type=int, default=3, help="training steps to record (default 3)")
    rec.add_argument("--seed", type=int, default=42, help="seed of the recording run (default 42)")

    run = sub.add_parser("run", help="replay the rollout's training on one backend; write per-step metrics (JSON)")
    run.add_argument("--device", required=True, help="cpu, cuda, npu, npu-emulated or auto")
    run.add_argument("--out", required=True, help="the result file (.json)")
    run.add_argument("--rollout", default=None, help="recorded rollout (default tests/golden/parity-rollout.pt)")
    run.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES, help="model dtype (default float32)")
    run.add_argument("--attention", default=None,
                     help="force the backend's attention implementation (e.g. reference, npu_fusion)")
    run.add_argument("--plant", default=None, choices=list(PLANTS),
                     help="a deliberate attention bug, to check that compare catches it: "
                          + "; ".join(f"{k}: {v}" for k, v in PLANTS.items()))
    run.add_argument("--threads", type=int, default=1,
                     help="torch CPU threads during the run (default 1: CPU results independent of the core count)")

    cmp = sub.add_parser("compare", help="compare two results; exit 1 on a violation, 2 on unusable input",
                         description="Violation: |A - B| > atol + rtol * |A| (A is the reference, e.g. a golden). "
                                     "Defaults: rtol 1e-3 / atol 1e-4 when both files are float32, rtol 0.02 / "
                                     "atol 0.01 when either is bfloat16.")
    cmp.add_argument("a", help="reference result (e.g. tests/golden/parity-cpu.json)")
    cmp.add_argument("b", help="result to check")
    cmp.add_argument("--rtol", type=float, default=None, help="relative tolerance for every metric")
    cmp.add_argument("--atol", type=float, default=None, help="absolute tolerance for every metric")
    cmp.add_argument("--metric-tol", action="append", default=[], metavar="NAME=RTOL,ATOL",
                     help="tolerance for one metric (repeatable), e.g. kl=0.05,0.001")
    return p


def _record(args) -> int:
    from lmm_r1_ascend.parity.record import record_rollout
    from lmm_r1_ascend.parity.rollout_file import ParityInputError

    try:
        record_rollout(args.out, steps=args.steps, seed=args.seed)
    except ParityInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _run(args) -> int:
    from lmm_r1_ascend.backends import BackendUnavailable
    from lmm_r1_ascend.parity.rollout_file import ParityInputError
    from lmm_r1_ascend.parity.replay import run_parity

    rollout = args.rollout or _default_rollout()
    try:
        result = run_parity(rollout, device=args.device, dtype=args.dtype, attention=args.attention,
                            plant=args.plant, threads=args.threads, log=print)
    except (FileNotFoundError, BackendUnavailable, ParityInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    env = result["environment"]
    print(f"wrote {out}: {len(result['steps'])} steps on {env['backend']} ({env['dtype']}, attention "
          f"{env['kernels']['attention']['name']}{', plant ' + env['plant'] if env['plant'] else ''})")
    return 0


def _compare(args) -> int:
    from lmm_r1_ascend.parity.compare import (
        UnusableInput, compare_results, format_report, load_result, parse_metric_tol,
    )

    try:
        a, b = load_result(args.a), load_result(args.b)
        report = compare_results(a, b, rtol=args.rtol, atol=args.atol, metric_tol=parse_metric_tol(args.metric_tol),
                                 names=(args.a, args.b))
    except UnusableInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_cli(_parser(), argv)
    return {"record": _record, "run": _run, "compare": _compare}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
