"""Rows per generate() call of the hf engine: rollout time of one demo batch at several
rollout.micro_rollout_batch_size values.

    python benchmarks/bench_rollout_rows.py [--reps 5] [--sizes 2 4 8 16] [--recipe demo_fre] [key=value ...]

One engine serves the recipe's model; the same rollout_batch_size prompts (the recipe's first
batch) are generated with the same seed at each size in turn (2, 4, 8, 16, 2, 4, ...), so that
machine load drifts hit every size alike. The first pass is a warm-up and is not counted. With
the same seed every size samples the same responses only if the batch shape does not change the
sampling stream, which it does: the median response length is printed beside each time so that
a size is never credited for shorter responses. At small models each decode iteration is mostly
fixed overhead (Python, kernel launches), so fewer, wider calls win until the rows stop fitting
in cache or memory.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="measured passes per size (after one warm-up)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 16],
                        help="rollout.micro_rollout_batch_size values (prompts per generate call)")
    parser.add_argument("--recipe", default="demo_fre")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)

    from lmm_r1_ascend.config import load_config
    from lmm_r1_ascend.demo.data import prepare_demo_data
    from lmm_r1_ascend.rollout.base import SamplingConfig
    from lmm_r1_ascend.rollout.hf_engine import HFRolloutEngine
    from lmm_r1_ascend.trainer.setup import prepare_data

    with tempfile.TemporaryDirectory() as tmp:
        cfg = prepare_demo_data(load_config(recipe=args.recipe, overrides=[f"output_dir={tmp}", *args.overrides]))
        actor_path, _, _, dataset = prepare_data(cfg)
        prompts = []
        for item in dataset:
            prompts.append(item)
            if len(prompts) == cfg.rollout.rollout_batch_size:
                break
        n = cfg.algorithm.n_samples_per_prompt
        sampling = SamplingConfig(n=n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                  top_k=cfg.rollout.top_k, max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.seed)
        dtype = getattr(torch, cfg.model.dtype)
        engine = HFRolloutEngine.from_config(cfg, actor_path, torch.device("cpu"), dtype)
        times: dict[int, list[float]] = {s: [] for s in args.sizes}
        lengths: dict[int, list[int]] = {s: [] for s in args.sizes}
        for rep in range(args.reps + 1):
            for size in args.sizes:
                engine.max_batch_rows = size * n  # what from_config sets from micro_rollout_batch_size
                t0 = time.perf_counter()
                samples = engine.generate(prompts, sampling)
                dt = time.perf_counter() - t0
                if rep:
                    times[size].append(dt)
                    lengths[size].extend(len(s.response_ids) for s in samples)
        engine.close()
    rows = len(prompts) * n
    print(f"recipe {args.recipe}: {len(prompts)} prompts x {n} samples = {rows} rows, max_new_tokens "
          f"{cfg.rollout.max_new_tokens}, {cfg.model.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.reps} measured passes per size (alternating, after 1 warm-up)")
    base = statistics.median(times[args.sizes[0]])
    print(f"{'prompts/call':>12} {'rows/call':>9} {'calls':>5} {'median s':>9} {'min':>7} {'max':>7} "
          f"{'vs first':>8} {'median resp len':>15}")
    for size in args.sizes:
        ts = times[size]
        calls = -(-len(prompts) // size)
        print(f"{size:>12} {size * n:>9} {calls:>5} {statistics.median(ts):>9.3f} {min(ts):>7.3f} {max(ts):>7.3f} "
              f"{statistics.median(ts) / base:>7.2f}x {statistics.median(lengths[size]):>15.1f}")


if __name__ == "__main__":
    main()
