"""The ablation at paper scale, as a plan: Qwen2.5-VL-3B on N devices, the paper's recipes in order,
their data, and the memory planner's verdict (plan.py) for each training run.

`plan_markdown(runs, ...)` renders DIR/plan.md: one table row per variant (stage, recipe, what it
starts from, data, the planner's per-device estimate and verdict, with the smallest change that
fits when it does not), then every command in the order the experiment runs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmm_r1_ascend.config.cli import OVERRIDE
from lmm_r1_ascend.experiment.runner import command_line
from lmm_r1_ascend.experiment.variants import PAPER_DATA, VariantRun

if TYPE_CHECKING:
    from lmm_r1_ascend.plan import Estimate


def _verdict_text(est: Estimate) -> str:
    if est.fits:
        return f"fits ({est.total_gb:.1f} of {est.device_memory_gb:g} GB)"
    return f"does NOT fit ({est.total_gb:.1f} of {est.device_memory_gb:g} GB): {est.change}"


def verdict(run: VariantRun, *, devices: int, device_memory_gb: float, backend: str) -> Estimate:
    """The planner's estimate for the training run of `run` (plan.py's estimate and smallest_change,
    as `python -m lmm_r1_ascend.plan` computes them; `change` set when it does not fit)."""
    from lmm_r1_ascend.config import load_config
    from lmm_r1_ascend.plan import plan_run

    argv = run.train_argv
    overrides = [f"stage={argv[argv.index('--stage') + 1]}"] + [a for a in argv if OVERRIDE.match(a)]
    cfg = load_config(argv[argv.index("--recipe") + 1], overrides=overrides)
    return plan_run(cfg, devices=devices, device_memory_gb=device_memory_gb, backend=backend)[1]


def plan_markdown(runs: list[VariantRun], verdicts: dict[str, Estimate], *, model: str, devices: int,
                  device_memory_gb: float, backend: str, data: dict[str, str], missing: list[str]) -> str:
    lines = [f"# The two-stage ablation at paper scale: {model} on {devices} x {device_memory_gb:g} GB ({backend})",
             "", "Variants in the order they run; memory is the planner's per-device peak estimate "
             "(`python -m lmm_r1_ascend.plan`, within ~25 % of measured peaks).", "",
             "| # | variant | stage | recipe | starts from | data | memory per device | verdict |", "|---|" + "---|" * 7]
    for k, run in enumerate(runs, 1):
        v = run.variant
        if v.stage is None:
            lines.append(f"| {k} | {run.name} ({v.label}) | - | - | - | - | - | evaluated as is |")
            continue
        start = {None: "base model", "pretrain": "base model"}.get(v.init_from, v.init_from)
        source = data.get(v.data) or f"`{PAPER_DATA.get(v.data, 'the recipe')}` (not given)"
        verd = verdicts[run.name]
        lines.append(f"| {k} | {run.name} ({v.label}) | {v.stage} | {v.recipe} | {start} | {source} | "
                     f"{verd.total_gb:.1f} GB | {_verdict_text(verd)} |")
    lines += ["", "## Commands", "", "```bash"]
    for run in runs:  # placeholders ($TEXT_DATA, ...) in double quotes, so that a shell expands them
        cmds = ([command_line("train", run.train_argv)] if run.train_argv else [])
        cmds += [command_line("eval", argv) for argv in run.eval_argvs.values()]
        lines += [c.replace("'", '"') if "'$" in c or "[$" in c else c for c in cmds]
    lines += ["```", ""]
    if missing:
        lines.append("Not run: give " + ", ".join(missing) + " to run this plan (the same command, with them).")
    else:
        lines.append("All inputs given: `experiment two-stage --scale paper` runs these commands in this order.")
    return "\n".join(lines) + "\n"
