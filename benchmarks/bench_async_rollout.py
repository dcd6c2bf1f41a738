"""Synchronous against asynchronous rollout (rollout.async_mode), side by side in one run.

    python benchmarks/bench_async_rollout.py [--runs 2] [--steps 8] [--modes local sync one_step_off]
    python benchmarks/bench_async_rollout.py --runs 1 --steps 0 --eval   # the whole demo: does it learn?

The workload is the CPU demo's (recipe demo_fre: 16 prompts x 8 samples, 40 new tokens, one
optimizer step per rollout) with algorithm.rollout_correction=[token_tis] in every mode (in
sync mode its weights are 1 up to rounding). Modes:
  sync          distributed.mode=ray: one rollout engine actor and one training rank (torch
                engine), one CPU core each, generating then training in turn.
  sync_2cpu     sync with distributed.cpus_per_rank=2: each actor gets both cores (Ray sets its
                OMP_NUM_THREADS), as they take turns: the strongest synchronous Ray baseline here.
  one_step_off  the sync placement; the engine generates the next batch while the rank trains.
  bounded2      the same, rollout.async_mode=bounded with max_staleness=2.
  local         the demo's own placement, for reference: one process (2 threads), the engine
                inside it (the fastest synchronous layout on this machine).

Each (mode, run) is a fresh subprocess (`--worker`, its own Ray instance), alternated mode by
mode --runs times so that load drifts hit every mode alike. Reported per mode: the median step
wall time over steps 2.. (the first pays start-up), the trainer's and the engine's idle
fractions over the run (rollout/trainer_idle_frac, rollout/engine_idle_frac at the last step),
staleness, train accuracy at the first and last step and, with --eval, the held-out accuracy
before and after training. The ratio is each mode's step time over sync's. On 2 cores the
bound is max(generation, training) / (generation + training) of the sync step: the engine and
the rank each have one core, and the controller (rewards, batching) shares them.

--steps 0 runs the recipe's full step count.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {
    "local": [],
    "sync": ["distributed.mode=ray", "distributed.rollout_engines=1"],
    "sync_2cpu": ["distributed.mode=ray", "distributed.rollout_engines=1", "distributed.cpus_per_rank=2"],
    "one_step_off": ["distributed.mode=ray", "distributed.rollout_engines=1", "rollout.async_mode=one_step_off"],
    "bounded2": ["distributed.mode=ray", "distributed.rollout_engines=1", "rollout.async_mode=bounded",
                 "rollout.max_staleness=2"],
}


def worker(mode: str, steps: int, evaluate: bool) -> dict:
    from lmm_r1_ascend.config import load_config
    from lmm_r1_ascend.demo.data import prepare_demo_data
    from lmm_r1_ascend.trainer.ppo import PPOTrainer

    with tempfile.TemporaryDirectory() as tmp:
        over = [f"output_dir={tmp}", "trainer.save_steps=0", "trainer.save_hf=false", "trainer.tensorboard=false",
                "algorithm.rollout_correction=[token_tis]", *MODES[mode]]
        if steps:
            over.append(f"trainer.max_steps={steps}")
        if not evaluate:
            over += ["trainer.eval_before_train=false", "trainer.eval_steps=0"]
        if mode != "local":
            from lmm_r1_ascend.distributed.ray_group import ray_init

            ray_init("", num_cpus=4)
        cfg = prepare_demo_data(load_config("demo_fre", overrides=over))
        start = time.perf_counter()
        history = PPOTrainer(cfg, log=lambda _: None).fit(progress=False)
        wall = time.perf_counter() - start
        evals = sorted((int(json.loads(line)["step"]), json.loads(line)) for line in
                       (Path(tmp) / "metrics.jsonl").read_text().splitlines()
                       if "eval/all/accuracy" in json.loads(line))
    last = history[-1]
    return {
        "mode": mode, "steps": len(history), "wall_s": wall,
        "step_s": statistics.median(h["timing/step"] for h in history[1:]),
        "rollout_s": statistics.median(h["timing/rollout"] for h in history[1:]),
        "trainer_idle": last.get("rollout/trainer_idle_frac"), "engine_idle": last.get("rollout/engine_idle_frac"),
        "staleness_mean": statistics.mean(h.get("rollout/staleness_mean", 0.0) for h in history),
        "staleness_max": max(h.get("rollout/staleness_max", 0.0) for h in history),
        "acc_first": history[0]["reward/accuracy"], "acc_last": history[-1]["reward/accuracy"],
        "acc_first5": statistics.mean(h["reward/accuracy"] for h in history[:5]),
        "acc_last5": statistics.mean(h["reward/accuracy"] for h in history[-5:]),
        "eval_first": evals[0][1]["eval/all/accuracy"] if evals else None,
        "eval_last": evals[-1][1]["eval/all/accuracy"] if evals else None,
    }


def _fmt(x, spec=".3f") -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8, help="steps per run (0: the recipe's)")
    ap.add_argument("--modes", nargs="+", default=["local", "sync", "sync_2cpu", "one_step_off"], choices=sorted(MODES))
    ap.add_argument("--eval", action="store_true", help="keep the recipe's held-out evaluation")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.steps, args.eval)), flush=True)
        return
    results: dict[str, list[dict]] = {m: [] for m in args.modes}
    for run in range(args.runs):
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--worker", mode, "--steps", str(args.steps)] + (["--eval"] * args.eval)
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{mode} run {run} failed:\n{out.stderr[-3000:]}")
            results[mode].append(json.loads(line[7:]))
            print(f"run {run} {mode}: step {results[mode][-1]['step_s']:.3f} s", file=sys.stderr, flush=True)
    print(f"# bench_async_rollout {time.strftime('%Y-%m-%d')} {platform.node()} {platform.processor() or ''}; "
          f"runs={args.runs} steps={args.steps or 'recipe'}; command: python benchmarks/bench_async_rollout.py "
          + " ".join(sys.argv[1:]))
    sync_step = statistics.median(r["step_s"] for r in results["sync"]) if "sync" in results else None
    print("| mode | step s (median) | / sync | rollout wait s | trainer idle | engine idle | staleness mean/max "
          "| train acc first->last (5-step means) | held-out first->last |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, rows in results.items():
        step = statistics.median(r["step_s"] for r in rows)
        med = lambda k: statistics.median(r[k] for r in rows) if rows[0][k] is not None else None  # noqa: E731
        ratio = _fmt(step / sync_step) if sync_step else "-"
        print(f"| {mode} | {step:.3f} | {ratio} | {med('rollout_s'):.3f} | {_fmt(med('trainer_idle'))} | "
              f"{_fmt(med('engine_idle'))} | {med('staleness_mean'):.2f}/{max(r['staleness_max'] for r in rows):.0f} | "
              f"{rows[0]['acc_first']:.3f}->{rows[0]['acc_last']:.3f} ({rows[0]['acc_first5']:.3f}->"
              f"{rows[0]['acc_last5']:.3f}) | {_fmt(rows[0]['eval_first'])}->{_fmt(rows[0]['eval_last'])} |")


if __name__ == "__main__":
    main()
