"""What a run prints: a short header before the first step and a summary after the last.

The header names what a user must check at a glance (stage and recipe, backend and kernels,
model and its size, data with row counts, rollout placement, output directory); the full
resolved config is in <output_dir>/config.yaml (`train --print-config` prints it). The
summary says what happened (steps, first / last reward and accuracy, held-out figures,
wall time) and where everything is, with the commands that plot and evaluate the run.
"""

from __future__ import annotations

import os
import shlex
import statistics
from pathlib import Path
from typing import Sequence

from lmm_r1_ascend.backends import Backend
from lmm_r1_ascend.config import TrainConfig
from lmm_r1_ascend.trainer import checkpoint as ckpt
from lmm_r1_ascend.trainer.model_facts import model_dir, parameter_count
from lmm_r1_ascend.trainer.validation import eval_sources

LABEL = 11  # width of the header's left column


def human_count(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit} parameters"
    return f"{n} parameters"


def _rel(path: str | os.PathLike) -> str:
    """A path relative to the working directory when it lies below it (shorter lines)."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _line(label: str, text: str) -> str:
    return f"  {label:<{LABEL}}{text}"


def data_counts(counts: dict[str, int]) -> str:
    """675 rows: 675 kept, 0 skipped (bad), 0 too long (+ skip reasons when there are some)."""
    text = (f"{counts.get('data/rows', 0)} rows: {counts.get('data/kept', 0)} kept, "
            f"{counts.get('data/skipped_bad', 0)} skipped (bad), {counts.get('data/filtered_too_long', 0)} too long")
    reasons = {k.removeprefix("data/skipped_bad/"): v for k, v in counts.items() if k.startswith("data/skipped_bad/") and v}
    if reasons:
        text += " (" + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) + ")"
    return text


def run_header(cfg: TrainConfig, *, backend: Backend, counts: dict[str, int], placement: str, rollout: str = "",
               steps: int | None = None, eval_prompts: int | None = None, title: str = "train") -> list[str]:
    """The run's header lines (at most ~10, so it fits on a first screen with what follows).

    backend: the chosen Backend (its kernel choices are listed); counts: the prompt dataset's
    row counts; placement / rollout: where training and rollout run (the cluster's and the rollout
    client's descriptions, or the configured ones for a dry run); steps: the planned step count;
    eval_prompts: held-out prompts (None: not loaded yet)."""
    picked = ", ".join(f"{k.op}={k.name}" for k in backend.select_kernels())
    name = cfg.model.init_from if cfg.stage == "mgt" and cfg.model.init_from not in (None, "pretrain") \
        else cfg.model.pretrain
    path = model_dir(cfg)
    dtype = str(backend.default_dtype).replace("torch.", "") if cfg.model.dtype == "auto" else cfg.model.dtype
    where = name if _rel(path) == name else f"{name} = {_rel(path)}"
    lines = [f"lmm-r1-ascend {title}: stage {cfg.stage}, recipe {cfg.recipe or '(config file)'}",
             _line("device", f"{backend.name} (device={cfg.device}); kernels {picked}"),
             _line("model", f"{where} ({human_count(parameter_count(path))}, {dtype})"),
             _line("data", f"{', '.join(_rel(p) for p in cfg.data.prompt_data)}: {data_counts(counts)}")]
    t = cfg.trainer
    if cfg.data.eval_data and (t.eval_steps or t.eval_before_train):
        when = ("at step 0 and " if t.eval_before_train else "") + (
            f"every {t.eval_steps} steps" if t.eval_steps else "not during training")
        size = f"{eval_prompts} prompts x {cfg.eval.n_samples} samples" if eval_prompts is not None \
            else f"{cfg.eval.n_samples} samples per prompt"
        lines.append(_line("held-out", f"{', '.join(_rel(p) for p in cfg.data.eval_data)}: {size}, {when}"))
    lines.append(_line("placement", placement))
    if rollout:
        lines.append(_line("rollout", rollout))
    if steps is not None:
        alg = cfg.algorithm
        save = f"checkpoint every {t.save_steps} steps" if t.save_steps else "checkpoint at the end"
        lines.append(_line("plan", f"{steps} steps x {cfg.rollout.rollout_batch_size} prompts x "
                                   f"{alg.n_samples_per_prompt} samples, {alg.advantage_estimator}; {save}"))
    out = _rel(cfg.output_dir)
    written = "not written by a dry run" if title == "dry run" else f"full config: {out}/config.yaml"
    lines.append(_line("output", f"{out}/ ({written}; --print-config prints it)"))
    return lines


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _pair(first: dict, last: dict, key: str) -> str | None:
    if first.get(key) is None or last.get(key) is None:
        return None
    return f"{first[key]:.3f} -> {last[key]:.3f}"


def _held_out(before: dict, last: dict, source: str) -> str:
    """'accuracy 0.143 -> 0.286; pass@8 0.619 -> 0.670' of one eval datasource ('all': every set)."""
    prefix = f"eval/{source}/"
    passes = sorted((int(k.rpartition("@")[2]), k) for k in last if k.startswith(prefix + "pass@"))
    return "; ".join(f"{k.removeprefix(prefix)} {before[k]:.3f} -> {last[k]:.3f}"
                     for k in (prefix + "accuracy", *[k for _, k in passes[-1:]])
                     if before.get(k) is not None and last.get(k) is not None)


def run_summary(cfg: TrainConfig, history: Sequence[dict], *, wall_s: float, train_s: float | None = None,
                first_eval: tuple[int, dict] | None = None) -> list[str]:
    """The end-of-run lines: what happened and where its outputs are. history: this process's
    metrics rows (one per step); first_eval: (step, metrics) of the first held-out evaluation."""
    out = Path(cfg.output_dir)
    o = _rel(out)
    if not history:
        return [f"done: nothing to train (the run in {o} had already reached its last step); outputs in {o}/"]
    first, last = history[0], history[-1]
    steps = [r.get("timing/step") for r in history if r.get("timing/step") is not None]
    median = statistics.median(steps) if steps else None
    n = len(history)
    head = f"done: {n} step{'s' if n != 1 else ''} (to step {last['step']}) in {_duration(wall_s)}"
    if train_s is not None:
        head += f" (setup {_duration(wall_s - train_s)})"
    if median is not None:
        head += f", median step {median:.1f} s"
    lines = [head]
    figures = [f"{name} {pair}" for name, key in (("reward", "reward/mean"), ("accuracy", "reward/accuracy"),
                                                       ("SFT loss", "loss/sft"))
               if (pair := _pair(first, last, key))]
    lines.append(_line("train", "; ".join(figures) + f" (step {first['step']} -> {last['step']})"))
    if first_eval is not None and last.get("eval/all/accuracy") is not None:
        step0, before = first_eval
        lines.append(_line("held-out", _held_out(before, last, "all")
                           + f" (step {step0} -> {last['step']}; tables in {o}/eval/)"))
        sources = eval_sources(last)
        if len(sources) > 1:  # e.g. the two-stage demos' text and image sets: the gain of each, apart
            lines += [_line("", f"{source}: {_held_out(before, last, source)}") for source in sources
                      if before.get(f"eval/{source}/accuracy") is not None]
    saved = ckpt.list_checkpoints(out)
    if saved:
        lines.append(_line("checkpoint", f"{_rel(saved[-1])} (kept: {', '.join(p.name for p in saved)})"))
    if cfg.trainer.save_hf and (out / "hf").is_dir():
        lines.append(_line("HF model", f"{o}/hf/"))
    if (out / "best").is_dir():
        lines.append(_line("best", f"{o}/best/ ({cfg.trainer.best_metric})"))
    metrics = f"{o}/metrics.jsonl"
    if cfg.trainer.tensorboard and (out / "tensorboard").is_dir():
        metrics += f", TensorBoard {o}/tensorboard/"
    lines.append(_line("metrics", metrics))
    lines.append(_line("plot", f"python -m lmm_r1_ascend.plot {shlex.quote(o)}   (writes {o}/metrics.png)"))
    if (out / "hf").is_dir():
        data = cfg.data.eval_data or cfg.data.prompt_data
        lines.append(_line("evaluate", f"python -m lmm_r1_ascend.eval --model {shlex.quote(o + '/hf')} --data "
                                       + " ".join(shlex.quote(_rel(p)) for p in data)
                                       + f" --out {shlex.quote(o + '/eval_hf')}"))
    return lines
