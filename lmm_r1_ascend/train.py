"""`python -m lmm_r1_ascend.train [--stage fre|mgt] [--device D] [--recipe NAME | --config FILE] [key=value ...]`

With no arguments: the built-in CPU demo (FRE on generated arithmetic from a warm-started
tiny model), which shows the accuracy reward rising within minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from lmm_r1_ascend.config import ConfigError, list_recipes, load_config, to_dict

DEMO_RECIPES = {"fre": "demo_fre", "mgt": "demo_mgt"}


def _parser() -> argparse.ArgumentParser:
    recipes = "\n".join(f"  {name:<18} {desc}" for name, desc in list_recipes().items())
    parser = argparse.ArgumentParser(
        prog="python -m lmm_r1_ascend.train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.strip().splitlines()[0],
        epilog=f"recipes (--recipe NAME):\n{recipes}\n\nexamples:\n"
               "  python -m lmm_r1_ascend.train                       # the CPU demo\n"
               "  python -m lmm_r1_ascend.train --stage fre --device npu --recipe fre_text \\\n"
               "      model.pretrain=/models/Qwen2.5-VL-3B-Instruct data.prompt_data=/data/deepscaler_message.jsonl\n"
               "  python -m lmm_r1_ascend.train --stage mgt --recipe mgt_geo model.init_from=outputs/fre_text ...")
    parser.add_argument("--stage", choices=("fre", "mgt"), help="fre (text reasoning) or mgt (multimodal); "
                        "without --recipe/--config it selects that stage's demo")
    parser.add_argument("--device", help="auto (npu, then cuda, then cpu), cpu, cuda, npu, npu-emulated")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--recipe", help="a built-in recipe (listed below)")
    source.add_argument("--config", help="a YAML config file")
    parser.add_argument("--dry-run", action="store_true", help="validate the config and the data, then exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in CI logs)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. trainer.max_steps=10")
    return parser


def resolve_config(args: argparse.Namespace):
    recipe = args.recipe
    if recipe is None and args.config is None:
        recipe = DEMO_RECIPES[args.stage or "fre"]
    overrides = list(args.overrides)
    if args.stage:
        overrides.append(f"stage={args.stage}")
    if args.device:
        overrides.append(f"device={args.device}")
    return load_config(recipe=recipe, config_file=args.config, overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from lmm_r1_ascend.backends import BackendUnavailable
    from lmm_r1_ascend.data import DataError
    from lmm_r1_ascend.distributed.worker_group import WorkerDiedError
    from lmm_r1_ascend.config.errors import SetupError

    try:
        cfg = resolve_config(args)
        print("resolved config:\n" + json.dumps(to_dict(cfg), indent=2), flush=True)
        from lmm_r1_ascend.demo.data import prepare_demo_data

        cfg = prepare_demo_data(cfg)
        if args.dry_run:
            from lmm_r1_ascend.trainer.dry_run import dry_run

            dry_run(cfg)
            return 0
        from lmm_r1_ascend.trainer.ppo import PPOTrainer

        trainer = PPOTrainer(cfg)
        history = trainer.fit(progress=not args.no_progress and sys.stderr.isatty() or os.environ.get("LMM_R1_PROGRESS") == "1")
    except (ConfigError, SetupError, BackendUnavailable, DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WorkerDiedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if history:
        first, last = history[0], history[-1]
        acc = "reward/accuracy"
        summary = f"done: {len(history)} steps; reward/mean {first['reward/mean']:.3f} -> {last['reward/mean']:.3f}"
        if acc in first:
            summary += f"; {acc} {first[acc]:.3f} -> {last[acc]:.3f}"
        val = trainer.validator
        key = "eval/all/accuracy"
        if val is not None and val.first is not None and key in last:
            step0, before = val.first
            summary += f"; held-out {key} {before[key]:.3f} (step {step0}) -> {last[key]:.3f}"
        print(summary + f"; outputs in {cfg.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
