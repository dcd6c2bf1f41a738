"""`python -m lmm_r1_ascend.experiment two-stage --out DIR`: the paper's two-stage ablation in one command.

    python -m lmm_r1_ascend.experiment two-stage --out DIR [--variants base fre_text ...] [--steps N]
    python -m lmm_r1_ascend.experiment two-stage --out DIR --scale paper --devices 8 [--model PATH --text-data F ...]

Demo scale (the default): every variant (base, FRE-Text, FRE-Multi, SFT-Text, MGT from base, MGT
after FRE-Text, MGT after SFT-Text) is a training run of the tiny demo VL model with the same step
budget, then every variant and the base model are evaluated on the held-out text and image sets with
the same n, temperature and seed; DIR/table.md and DIR/table.png hold the paper-style table. A rerun
skips the variants already finished and resumes a stopped one (docs/two_stage.md, "The ablation in
one command"). Paper scale writes DIR/plan.md (recipes, data, the memory planner's verdicts) and,
given --model and every data path, runs it.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from lmm_r1_ascend.config.cli import OVERRIDE, CliParser, parse_cli

EXIT = ("exit status: 0 every variant finished; 1 a variant failed (its exit code and one line are printed, the "
        "others still run and are tabled); 2 a user error; 130 / 143 stopped by SIGINT / SIGTERM: rerun the same "
        "command to resume")
DATA_OPTIONS = {"text": "--text-data", "multi": "--multi-data", "mgt": "--mgt-data", "sft": "--sft-data"}


def _parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m lmm_r1_ascend.experiment", description=__doc__.strip().splitlines()[0],
                  formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("two-stage", help="the paper's ablation: base, FRE-Text, FRE-Multi, SFT-Text, MGT variants",
                       description=__doc__.strip().split("\n\n")[2], epilog=EXIT)
    t.add_argument("--out", required=True, help="the experiment's directory (one folder per variant, the table)")
    t.add_argument("--scale", choices=("demo", "paper"), default="demo")
    t.add_argument("--variants", nargs="+", metavar="NAME", help="a subset (base is always included; a variant "
                   "that starts from another needs it too). Default: all")
    t.add_argument("--list", action="store_true", help="list the variants of --scale and exit")
    t.add_argument("--steps", type=int, default=None, help="training steps of every trained variant (default: "
                   "60 at demo scale, the FRE demo's; the recipes' own at paper scale)")
    t.add_argument("--model", help="the base model (default: the demo VL model; at paper scale a local "
                   "Qwen2.5-VL-3B-Instruct directory, needed to run)")
    t.add_argument("--device", help="train and eval device (default cpu at demo scale, auto at paper scale)")
    t.add_argument("--set", action="append", default=[], metavar="[VARIANT:]KEY=VALUE", dest="sets",
                   help="a training override for every variant, or for one (fre_text:optim.actor_lr=1e-4); repeatable")
    ev = t.add_argument_group("evaluation (the same for every variant)")
    ev.add_argument("--n", type=int, default=None, help="samples per prompt (pass@n); default 4 (demo), 8 (paper)")
    ev.add_argument("--temperature", type=float, default=1.0)
    ev.add_argument("--seed", type=int, default=42)
    ev.add_argument("--limit", type=int, default=None, help="prompts per eval set (default 64 of the demo's 97; all at paper scale)")
    ev.add_argument("--max-new-tokens", type=int, default=None, help="default 40 (demo), 4096 (paper)")
    ev.add_argument("--eval-engine", default=None, help="hf or vllm (default hf at demo scale, vllm at paper scale)")
    pa = t.add_argument_group("paper scale")
    pa.add_argument("--devices", type=int, default=8, help="devices per training run (default 8)")
    pa.add_argument("--device-memory", type=float, default=64.0, help="GB per device (64: Ascend 910B; 80: A100/H100)")
    pa.add_argument("--backend", default="npu", help="whose device facts the planner counts (npu, cuda, cpu)")
    for key, opt in DATA_OPTIONS.items():
        pa.add_argument(opt, help=f"training data: {key}")
    pa.add_argument("--text-bench", help="held-out text benchmark jsonl (e.g. MATH500)")
    pa.add_argument("--image-bench", help="held-out multimodal benchmark jsonl (e.g. MathVerse testmini)")
    t.add_argument("--in-process", action="store_true", help="run the commands in this process (faster start, "
                   "no isolation; for short runs)")
    return p


class UserError(ValueError):
    """Bad input to the experiment itself: one line, exit 2."""


def _sets(items: list[str], names: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        head, sep, rest = item.partition(":")
        if sep and not OVERRIDE.match(item) and OVERRIDE.match(rest):
            if head not in names:
                raise UserError(f"--set {item}: unknown variant {head!r} (choose from {', '.join(names)})")
            out.setdefault(head, []).append(rest)
        elif OVERRIDE.match(item):
            out.setdefault("*", []).append(item)
        else:
            raise UserError(f"--set {item}: expected [VARIANT:]key=value, e.g. optim.actor_lr=1e-4")
    return out


def _writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_probe"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"--out {out}: cannot write there ({err.strerror or err})") from None


def _demo_eval_files(folder: Path, limit: int | None) -> dict[str, str]:
    """The demo's held-out text and image sets, written once under `folder`: the first `limit`
    problems of the held-out split (the same problems, in the same order, as its whole files)."""
    from lmm_r1_ascend.demo.arithmetic import write_demo_dataset
    from lmm_r1_ascend.demo.data import materialise_eval
    from lmm_r1_ascend.experiment.variants import DEMO_EVAL

    if limit is None:
        return dict(zip(DEMO_EVAL, materialise_eval(list(DEMO_EVAL.values()), folder)))
    where = folder / f"eval_first_{limit}"
    if not (where / ".complete").exists():
        try:
            write_demo_dataset(where, n_train=0, n_eval=limit, images=True)
        except ValueError as err:  # more prompts than the held-out split holds
            raise UserError(f"--limit {limit}: {err}") from None
        (where / ".complete").touch()
    return {"text": str(where / "eval.jsonl"), "image": str(where / "eval_images.jsonl")}


def _plan(args, out: Path):
    """(runs, table settings, missing inputs) of the chosen scale."""
    from lmm_r1_ascend.experiment import variants as V

    paper = args.scale == "paper"
    table = V.PAPER_VARIANTS if paper else V.DEMO_VARIANTS
    names = V.select(table, args.variants)
    sets = _sets(args.sets, list(table))
    n = args.n or (8 if paper else 4)
    if n < 1 or (args.steps is not None and args.steps < 1) or (args.limit is not None and args.limit < 1):
        raise UserError("--n, --steps and --limit must be >= 1")
    max_new = args.max_new_tokens or (4096 if paper else 40)
    limit = args.limit if args.limit is not None else (None if paper else 64)
    device = args.device or ("auto" if paper else "cpu")
    eval_args = ["--n", str(n), "--temperature", str(args.temperature), "--seed", str(args.seed),
                 "--max-new-tokens", str(max_new), "--engine", args.eval_engine or ("vllm" if paper else "hf"), "--device", device]
    eval_args += ["--limit", str(limit)] if limit else []
    common = [f"device={device}", "trainer.resume=true", "trainer.eval_steps=0", "trainer.eval_before_train=false",
              "trainer.save_hf=true"]
    missing: list[str] = []
    if paper:
        if args.devices < 1 or not args.device_memory > 0:
            raise UserError("--devices must be >= 1 and --device-memory > 0")
        model = args.model or V.PAPER_MODEL
        if not args.model:
            missing.append("--model PATH")
        common += [*V.PAPER_PLACEMENT, f"distributed.world_size={args.devices}"]
        used = {table[nm].data for nm in names} - {None}
        data = {}
        for key, opt in DATA_OPTIONS.items():
            value = getattr(args, opt[2:].replace("-", "_"))
            data[key] = value or f"${key.upper()}_DATA"
            if key in used and not value:
                missing.append(f"{opt} FILE")
        evals = {"text": args.text_bench or "$TEXT_BENCH", "image": args.image_bench or "$IMAGE_BENCH"}
        missing += [f"--{k}-bench FILE" for k in ("text", "image") if not getattr(args, f"{k}_bench")]
        eval_args.append("data.max_prompt_len=4096")  # the paper's prompt length (RECIPE.md)
        steps = args.steps
    else:
        model = args.model or V.DEMO_MODEL
        data = {}
        evals = dict(V.DEMO_EVAL) if args.list else _demo_eval_files(out / "data", limit)
        eval_args += list(V.DEMO_EVAL_OVERRIDES)
        steps = args.steps if args.steps is not None else 60
    runs = V.resolve(table, names, out, model=model, steps=steps, train_common=common,
                     sets=sets, data=data, eval_data=evals, eval_args=eval_args)
    settings = {"model": model, "steps": steps, "n": n, "temperature": args.temperature, "seed": args.seed,
                "limit": limit, "max_new_tokens": max_new, "device": device}
    return runs, settings, missing, {k: v for k, v in data.items() if not v.startswith("$")}


def _table(runs, settings, out: Path, scale: str) -> str | None:
    from lmm_r1_ascend.experiment import table
    from lmm_r1_ascend.experiment.runner import is_done

    rows = [(r.variant.label, {k: table.figures_of(r.folder, k) for k in r.eval_argvs}) for r in runs if is_done(r)]
    if not rows:
        return None
    s = settings
    steps = f"{s['steps']} training steps" if s["steps"] else "the recipes' own steps"
    prompts = f"{s['limit']} prompts" if s["limit"] else "all prompts"
    title = (f"Two-stage ablation ({scale} scale): {Path(s['model']).name}, {steps} per variant; "
             f"held-out {prompts} x {s['n']} samples, T={s['temperature']:g}, seed {s['seed']}")
    base = "" if runs[0].name == "base" and is_done(runs[0]) else f" (base missing: deltas against {rows[0][0]})"
    note = f"Deltas in parentheses: value - {rows[0][0]}{base}; lengths in tokens, rates in %."
    _, png, md = table.write(rows, s["n"], list(runs[0].eval_argvs), out, title, note)
    return md + f"\nwrote {out / 'table.md'}, {png}, {out / 'table.json'}"


def two_stage(args) -> int:
    from lmm_r1_ascend.experiment.runner import Executor, InProcessExecutor, run_all
    from lmm_r1_ascend.trainer.stop import exit_code

    out = Path(args.out).resolve()
    _writable(out)
    runs, settings, missing, given = _plan(args, out)
    if args.list:
        for r in runs:
            v = r.variant
            start = f", from {v.init_from}" if v.init_from else ""
            print(f"{r.name:<14} {v.label:<24} " + (f"{v.stage} ({v.recipe}{start})" if v.stage else "not trained"))
        return 0
    if args.scale == "paper":
        from lmm_r1_ascend.experiment.paper import plan_markdown, verdict

        verdicts = {r.name: verdict(r, devices=args.devices, device_memory_gb=args.device_memory,
                                    backend=args.backend) for r in runs if r.train_argv}
        md = plan_markdown(runs, verdicts, model=settings["model"], devices=args.devices,
                           device_memory_gb=args.device_memory, backend=args.backend, data=given, missing=missing)
        (out / "plan.md").write_text(md)
        print(md + f"\nwrote {out / 'plan.md'}")
        if missing:
            return 0
    executor = InProcessExecutor() if args.in_process else Executor()
    outcome = run_all(runs, out, executor)
    shown = _table(runs, settings, out, args.scale)
    if shown:
        print("\n" + shown)
    if outcome.stopped is not None:
        print(f"stopped by {signal.Signals(outcome.stopped).name}: rerun the same command to resume",
              file=sys.stderr)
        return exit_code(outcome.stopped)
    for name, (rc, line) in outcome.failures.items():
        print(f"error: variant {name} failed (exit {rc}): {line}", file=sys.stderr)
    return 1 if outcome.failures or any(s == "blocked" for s in outcome.status.values()) else 0


def main(argv: list[str] | None = None) -> int:
    from lmm_r1_ascend.config import ConfigError
    from lmm_r1_ascend.experiment.variants import VariantError

    args = parse_cli(_parser(), list(sys.argv[1:] if argv is None else argv))
    try:
        return two_stage(args)
    except (UserError, VariantError, ConfigError, FileNotFoundError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
