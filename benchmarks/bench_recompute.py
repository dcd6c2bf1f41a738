"""Step time of the demo with the old log-probs recomputed by the actor vs taken from the rollout.

    python benchmarks/bench_recompute.py [--steps 6] [--recipe demo_fre] [--device cpu] [key=value ...]

Two trainers on the same recipe and seed, one with algorithm.old_logprobs=recompute (the
default) and one with rollout, are stepped alternately (recompute, rollout, recompute, ...)
so that machine load drifts hit both alike. The first step of each is a warm-up and is not
counted. Prints the median step time of each, the ratio, and the median time of the
recompute forward itself (timing/old_log_probs) as a share of the step. On a recipe whose
rollout gets a single on-policy actor step (demo_fre) the recompute is folded into that step;
demo_dapo (two mini-batches) runs the separate forward.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch


def _trainer(recipe: str, mode: str, out: str, device: str, extra: list[str]):
    from lmm_r1_ascend.config import load_config
    from lmm_r1_ascend.demo.data import prepare_demo_data
    from lmm_r1_ascend.trainer.ppo import PPOTrainer

    cfg = load_config(recipe=recipe, overrides=[f"device={device}", f"output_dir={out}", "trainer.tensorboard=false",
                                                f"algorithm.old_logprobs={mode}", *extra])
    return PPOTrainer(prepare_demo_data(cfg), log=lambda s: None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="measured steps per mode (after one warm-up)")
    parser.add_argument("--recipe", default="demo_fre")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {"recompute": [], "rollout": []}
    old_lp: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {mode: _trainer(args.recipe, mode, f"{tmp}/{mode}", args.device, args.overrides) for mode in times}
        try:
            for k in range(args.steps + 1):
                for mode, trainer in trainers.items():
                    m = trainer.train_step()
                    if k:
                        times[mode].append(m["timing/step"])
                        if mode == "recompute":  # absent when folded into a single on-policy step
                            old_lp.append(m.get("timing/old_log_probs", 0.0))
        finally:
            for trainer in trainers.values():
                trainer.parts.close()
    rec, roll = statistics.median(times["recompute"]), statistics.median(times["rollout"])
    print(f"recipe {args.recipe}, device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.steps} measured steps per mode (alternating, after 1 warm-up)")
    print(f"{'mode':<10} {'median step s':>14} {'min':>8} {'max':>8}")
    for mode, ts in times.items():
        print(f"{mode:<10} {statistics.median(ts):>14.3f} {min(ts):>8.3f} {max(ts):>8.3f}")
    forward = (f"median {statistics.median(old_lp):.3f} s = {statistics.median(old_lp) / rec:.1%} of a recompute step"
               if any(old_lp) else "folded into the update (one on-policy step per rollout: docs/mismatch.md)")
    print(f"recompute / rollout step time: {rec / roll:.3f}x; the recompute forward: {forward}")


if __name__ == "__main__":
    main()
