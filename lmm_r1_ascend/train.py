"""`python -m lmm_r1_ascend.train [--stage fre|mgt|sft] [--device D] [--recipe NAME | --config FILE] [key=value ...]`

With no arguments: the built-in CPU demo (FRE on generated arithmetic from a warm-started
tiny model), which shows the accuracy reward rising within minutes. `--stage fre` and then
`--stage mgt` run the two-stage demos on one tiny VL model (FRE on the problems as text, MGT on
them as images, from the FRE demo's output); `--stage sft` the SFT demo. Options and key=value
overrides go in any order. The run prints a short header (backend, kernels, model, data,
placement, output directory), a progress bar, and a summary with where its outputs are; the
full resolved config is written to <output_dir>/config.yaml (--print-config also prints it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from lmm_r1_ascend.config import ConfigError, list_recipes, load_config, to_dict
from lmm_r1_ascend.config.cli import CliParser, parse_cli, quiet_library_progress

DEFAULT_DEMO = "demo_fre"  # no arguments: FRE on the text Qwen2 warm-up, the quickest demo that visibly learns
# --stage without --recipe: the two-stage demos on the one VL model (FRE on text, then MGT on images from its
# output: docs/two_stage.md), and SFT on the text warm-up
DEMO_RECIPES = {"fre": "demo_fre_vl", "mgt": "demo_mgt", "sft": "demo_sft"}


def _parser() -> argparse.ArgumentParser:
    recipes = "\n".join(f"  {name:<18} {desc}" for name, desc in list_recipes().items())
    parser = CliParser(
        prog="python -m lmm_r1_ascend.train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.strip().splitlines()[0],
        epilog=f"recipes (--recipe NAME):\n{recipes}\n\nexamples:\n"
               "  python -m lmm_r1_ascend.train                       # the CPU demo\n"
               "  python -m lmm_r1_ascend.train --stage fre --device npu --recipe fre_text \\\n"
               "      model.pretrain=/models/Qwen2.5-VL-3B-Instruct data.prompt_data=/data/deepscaler_message.jsonl\n"
               "  python -m lmm_r1_ascend.train --stage mgt --recipe mgt_geo model.init_from=outputs/fre_text ...\n"
               "  python -m lmm_r1_ascend.train trainer.max_steps=2 --recipe demo_gspo output_dir=/tmp/x   # any order"
               f"\n\n{EXIT_CODES}")
    parser.add_argument("--stage", choices=("fre", "mgt", "sft"), help="fre (text reasoning RL), mgt (multimodal "
                        "RL) or sft (teacher forcing on the rows' reference responses, data.response_key); "
                        "without --recipe/--config it selects that stage's demo: demo_fre_vl, demo_mgt, demo_sft")
    parser.add_argument("--device", help="auto (npu, then cuda, then cpu), cpu, cuda, npu, npu-emulated")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--recipe", help="a built-in recipe (listed below)")
    source.add_argument("--config", help="a YAML config file")
    parser.add_argument("--dry-run", action="store_true", help="validate the config, the data and the reward "
                        "functions (custom files are imported), then exit")
    parser.add_argument("--probe-rewards", action="store_true",
                        help="with --dry-run: also check that each HTTP reward endpoint answers")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in CI logs)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the full resolved config (YAML, as written to <output_dir>/config.yaml) first")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="--print-config, and the libraries' own progress bars (weights loading, saving)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. trainer.max_steps=10")
    return parser


def resolve_config(args: argparse.Namespace):
    recipe = args.recipe
    if recipe is None and args.config is None:
        recipe = DEMO_RECIPES[args.stage] if args.stage else DEFAULT_DEMO
    overrides = list(args.overrides)
    if args.stage:
        overrides.append(f"stage={args.stage}")
    if args.device:
        overrides.append(f"device={args.device}")
    return load_config(recipe=recipe, config_file=args.config, overrides=overrides)


def _placement(cfg) -> str:
    """Where training will run, from the config alone (the dry run starts nothing)."""
    d = cfg.distributed
    from lmm_r1_ascend.engines.registry import train_engine_class

    return f"{d.mode} mode, {d.world_size} rank(s), {train_engine_class(d.train_engine).describe(d)}"


def resume_command(argv: list[str], resume_enabled: bool) -> str:
    """The command that continues this run (the same one; trainer.resume=true added when it was off)."""
    import shlex

    args = list(argv) + ([] if resume_enabled else ["trainer.resume=true"])
    return " ".join(["python -m lmm_r1_ascend.train", *map(shlex.quote, args)])


EXIT_CODES = """exit status: 0 done; 2 a user error (config, data, paths; one line on stderr); 3 a worker process
died; 4 the run stopped on a training fault (non-finite weights or losses, a checkpoint that could not be
written with trainer.on_save_error=stop); 130 / 143 stopped by SIGINT / SIGTERM (128 + the signal): the
first signal finishes the step and writes a checkpoint, a second exits at once; run the same command to resume"""


def main(argv: list[str] | None = None) -> int:
    from lmm_r1_ascend.trainer.stop import Interrupted, exit_code, interrupt_at_once, restore

    previous = interrupt_at_once()  # set-up: Ctrl-C or SIGTERM ends it in one line (the loop stops gracefully)
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except Interrupted as stop:  # outside the run's own handling (parsing the command line, the summary)
        print(f"interrupted by {stop}", file=sys.stderr)
        return exit_code(stop.signum)
    finally:
        restore(previous)


def _main(argv: list[str]) -> int:
    started = time.perf_counter()
    args = parse_cli(_parser(), argv, overrides_dest="overrides")
    quiet_library_progress(verbose=args.verbose)
    from lmm_r1_ascend.backends import BackendUnavailable
    from lmm_r1_ascend.data import DataError
    from lmm_r1_ascend.distributed.worker_group import WorkerDiedError
    from lmm_r1_ascend.config.errors import SetupError
    from lmm_r1_ascend.engines.base import NonFiniteError
    from lmm_r1_ascend.trainer.checkpoint import CheckpointSaveError
    from lmm_r1_ascend.trainer.stop import Interrupted, RunStopped, exit_code

    cfg = None
    try:
        cfg = resolve_config(args)
        if args.print_config or args.verbose:
            import yaml

            print("resolved config:\n" + yaml.safe_dump(to_dict(cfg), sort_keys=False), flush=True)
        from lmm_r1_ascend.demo.data import prepare_demo_data
        from lmm_r1_ascend.trainer.console import run_header, run_summary

        cfg = prepare_demo_data(cfg)
        if args.dry_run:
            from lmm_r1_ascend.backends import get_backend
            from lmm_r1_ascend.trainer.dry_run import dry_run

            checked = dry_run(cfg, log=lambda _: None, probe_http=args.probe_rewards)
            print("\n".join(run_header(cfg, backend=get_backend(cfg.device), counts=checked, placement=_placement(cfg),
                                       rollout=f"{cfg.rollout.engine} engine", title="dry run")))
            rewards = f", {checked['rewards']} custom reward(s)" if checked["rewards"] else ""
            print(f"dry run ok: config, device, model{rewards} and all {checked['data/rows']} data rows checked "
                  f"({checked['prompts']} usable prompts); nothing was trained", flush=True)
            return 0
        from lmm_r1_ascend.trainer.ppo import PPOTrainer
        from lmm_r1_ascend.trainer.sft import SFTTrainer

        trainer = (SFTTrainer if cfg.stage == "sft" else PPOTrainer)(cfg)
        c, val = trainer.parts, trainer.validator
        print("\n".join(run_header(cfg, backend=trainer.backend, counts=c.dataset.counts,
                                   placement=c.cluster.describe(), rollout=c.rollout.describe(),
                                   steps=trainer.total_steps, eval_prompts=len(val.prompts) if val else None)),
              flush=True)
        fit_started = time.perf_counter()
        bar = not args.no_progress and sys.stderr.isatty() or os.environ.get("LMM_R1_PROGRESS") == "1"
        history = trainer.fit(progress=bar, step_lines=not bar)  # no bar (a file, CI): a line per step
    except (ConfigError, SetupError, BackendUnavailable, DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WorkerDiedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (NonFiniteError, CheckpointSaveError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    except RunStopped as stop:
        where = f"checkpoint {stop.checkpoint}" if stop.checkpoint else "no checkpoint yet (the run starts over)"
        resume = resume_command(argv, cfg.trainer.resume)
        print(f"stopped by {Interrupted(stop.signum)} after step {stop.step}: {where}; resume with: {resume}",
              file=sys.stderr, flush=True)
        return exit_code(stop.signum)
    except Interrupted as stop:  # a second signal, or one during set-up: no new checkpoint
        if cfg is None:
            print(f"interrupted by {stop} while reading the config: nothing was written", file=sys.stderr)
        else:
            from lmm_r1_ascend.trainer.checkpoint import latest_checkpoint

            last = latest_checkpoint(cfg.output_dir)
            where = f"last good checkpoint {last}" if last else "no checkpoint yet (the run starts over)"
            print(f"interrupted by {stop} at once: {where}; resume with: {resume_command(argv, cfg.trainer.resume)}",
                  file=sys.stderr, flush=True)
        return exit_code(stop.signum)
    now = time.perf_counter()
    print("\n".join(run_summary(cfg, history, wall_s=now - started, train_s=now - fit_started,
                                first_eval=val.first if val is not None else None)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
