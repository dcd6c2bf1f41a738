"""The demo's step time with and without each of the CPU hot-path changes, side by side in one run.

    python benchmarks/bench_demo_step.py [--steps 6] [--recipe demo_fre] [key=value ...]

Trainers on the same recipe and seed, stepped alternately (so that load drifts hit all alike;
the first step of each is a warm-up and is not counted):
  now            the defaults
  per-seq attn   the CPU backend's per-sequence reference attention instead of the
                 length-bucketed batched SDPA (kernels/attention.py)
  64-row calls   rollout.micro_rollout_batch_size=8 (64 rows per generate call, the old default)
                 instead of the recipe's 16 (all 128 rows in one call)
  recompute fwd  the separate old-log-prob forward instead of folding it into the single
                 on-policy step (trainer/ppo_update.py, folds_recompute)
  whole prompts  model.share_prompts=false: every sample packed with its own copy of its prompt
                 instead of one copy per prompt (kernels/shared_prompts.py)
  before         all four reverted: the step as it was before them
Prints the median step time and phase times of each, and each one's ratio to `now`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from contextlib import contextmanager

import torch

VARIANTS = {
    "now": dict(),
    "per-seq attn": dict(attention="reference"),
    "64-row calls": dict(overrides=["rollout.micro_rollout_batch_size=8"]),
    "recompute fwd": dict(fold=False),
    "whole prompts": dict(overrides=["model.share_prompts=false"]),
    "before": dict(attention="reference", overrides=["rollout.micro_rollout_batch_size=8", "model.share_prompts=false"],
                   fold=False),
}


@contextmanager
def _forced_attention(name: str | None):
    """Models built inside get the CPU backend's attention `name` (None: its own choice)."""
    from lmm_r1_ascend.backends import get_backend

    cls = type(get_backend("cpu"))
    real = cls.select_kernels
    if name is not None:
        cls.select_kernels = lambda self, overrides=None, dtype=None: real(
            self, {**(overrides or {}), "attention": name}, dtype)
    try:
        yield
    finally:
        cls.select_kernels = real


@contextmanager
def _fold(enabled: bool):
    from lmm_r1_ascend.trainer import ppo_update

    real = ppo_update.folds_recompute
    if not enabled:
        ppo_update.folds_recompute = lambda *a, **k: False
    try:
        yield
    finally:
        ppo_update.folds_recompute = real


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="measured steps per variant (after one warm-up)")
    parser.add_argument("--recipe", default="demo_fre")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)

    from lmm_r1_ascend.config import load_config
    from lmm_r1_ascend.demo.data import prepare_demo_data
    from lmm_r1_ascend.trainer.ppo import PPOTrainer

    base = ["trainer.eval_before_train=false", "trainer.eval_steps=0", "trainer.save_steps=0",
            "trainer.tensorboard=false", "trainer.resume=false", "device=cpu", *args.overrides]
    times: dict[str, dict[str, list[float]]] = {name: {} for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for i, (name, v) in enumerate(VARIANTS.items()):
            cfg = prepare_demo_data(load_config(recipe=args.recipe, overrides=[
                *base, f"output_dir={tmp}/{i}", *v.get("overrides", [])]))
            with _forced_attention(v.get("attention")):
                trainers[name] = PPOTrainer(cfg, log=lambda s: None)
            impl = trainers[name].parts.cluster.group.workers[0].actor.model.config._attn_implementation
            if v.get("attention") and not impl.endswith(v["attention"]):
                raise RuntimeError(f"variant {name!r}: the actor's attention is {impl}, not {v['attention']}")
        try:
            for k in range(args.steps + 1):
                for name, trainer in trainers.items():
                    with _fold(VARIANTS[name].get("fold", True)):
                        m = trainer.train_step()
                    if k:
                        for key, value in m.items():
                            if key.startswith("timing/"):
                                times[name].setdefault(key.removeprefix("timing/"), []).append(value)
        finally:
            for trainer in trainers.values():
                trainer.parts.close()
    print(f"recipe {args.recipe}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} "
          f"measured steps per variant (alternating, after 1 warm-up); medians in seconds")
    phases = ["rollout", "reward", "old_log_probs", "train_actor", "step"]
    print(f"{'variant':<14}" + "".join(f"{p:>14}" for p in phases) + f"{'step vs now':>12}")
    now = statistics.median(times["now"]["step"])
    for name, t in times.items():
        cells = "".join(f"{statistics.median(t[p]) if p in t else 0.0:>14.3f}" for p in phases)
        print(f"{name:<14}{cells}{statistics.median(t['step']) / now:>11.2f}x")


if __name__ == "__main__":
    main()
