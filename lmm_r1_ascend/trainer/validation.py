"""Validation during training: every trainer.eval_steps steps (and after the last, and before
the first with trainer.eval_before_train) the current policy is evaluated on data.eval_data
through the run's own rollout engine and reward router (evaluation/runner.py), its figures go
into that step's metrics as eval/<datasource>/<figure> (plus timing/eval), and with
trainer.best_metric the best policy so far is kept in <output_dir>/best in HF format.

Eval sampling has a fixed seed, so the same weights give the same eval rows: a resumed run
logs exactly what an uninterrupted one does. The best value travels in the checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from lmm_r1_ascend.config import TrainConfig
from lmm_r1_ascend.evaluation.runner import EvalResult, evaluate
from lmm_r1_ascend.rollout.base import SamplingConfig
from lmm_r1_ascend.trainer.setup import Components, prompt_dataset

EVAL_SEED_OFFSET = 7_777_777  # eval seeds never equal a training draw's (those are seed * 100003 + step + ...)


def eval_sources(metrics: dict[str, float]) -> list[str]:
    """The datasources a validation row reports (eval/<source>/accuracy), 'all' excluded, sorted."""
    return sorted({k.split("/")[1] for k in metrics if k.startswith("eval/") and k.endswith("/accuracy")} - {"all"})


def eval_line(step: int, metrics: dict[str, float], prompts: int, n: int) -> str:
    """One console line per evaluation (the run's progress bar keeps the screen): the overall
    accuracy, pass@n and format rate, and each datasource's accuracy when there are several (all of
    each datasource's figures in <output_dir>/eval/step_<N>_summary.json)."""
    figures = [f"{name} {metrics[f'eval/all/{k}']:.3f}"
               for name, k in (("accuracy", "accuracy"), (f"pass@{n}", f"pass@{n}"), ("format", "format_rate"))
               if f"eval/all/{k}" in metrics]
    apart = [f"{s} {metrics[f'eval/{s}/accuracy']:.3f}" for s in eval_sources(metrics)]
    line = f"held-out eval at step {step} ({prompts} prompts x {n}): {', '.join(figures)}"
    return line + (f" (accuracy per set: {', '.join(apart)})" if len(apart) > 1 else "")


class Validator:
    def __init__(self, cfg: TrainConfig, parts: Components, out: Path, log: Callable[[str], None] = print):
        self.cfg, self.parts, self.out, self.log = cfg, parts, out, log
        e = cfg.eval
        dataset = prompt_dataset(cfg, list(cfg.data.eval_data), parts.tokenizer, parts.image_processor, shuffle=False)
        self.prompts = []
        for item in dataset:
            self.prompts.append(item)
            if e.limit and len(self.prompts) >= e.limit:
                break
        if not self.prompts:
            raise ValueError(f"data.eval_data {cfg.data.eval_data} holds no usable prompt")
        self.sampling = SamplingConfig(n=e.n_samples, temperature=e.temperature,
                                       top_p=cfg.rollout.top_p if e.temperature > 0 else 1.0,
                                       max_new_tokens=e.max_new_tokens or cfg.rollout.max_new_tokens,
                                       seed=cfg.seed + EVAL_SEED_OFFSET)
        self.best: float | None = None
        self.best_step: int | None = None
        self.first: tuple[int, dict[str, float]] | None = None  # this process's first evaluation (step, metrics)

    def due(self, step: int, total_steps: int) -> bool:
        every = self.cfg.trainer.eval_steps
        return bool(every) and (step % every == 0 or step == total_steps)

    def run(self, step: int) -> dict[str, float]:
        """Evaluate now; returns the eval/* metrics (and timing/eval, best/*); may update best/."""
        start = time.perf_counter()
        result = evaluate(self.prompts, generate=self.parts.rollout.generate, reward=self.parts.reward,
                          tokenizer=self.parts.tokenizer, sampling=self.sampling,
                          batch_prompts=self.cfg.eval.batch_prompts)
        metrics = {**result.metrics(), "timing/eval": time.perf_counter() - start}
        if self.first is None:
            self.first = (step, metrics)
        self._write(step, result)
        self.log(eval_line(step, metrics, len(self.prompts), self.sampling.n))
        key = self.cfg.trainer.best_metric
        if key:
            if key not in metrics:
                raise ValueError(f"trainer.best_metric {key!r} is not an eval metric of this run; it has "
                                 f"{', '.join(sorted(k for k in metrics if k.startswith('eval/all/')))}, ...")
            if self.best is None or metrics[key] > self.best:
                self.best, self.best_step = metrics[key], step
                self.parts.export_hf(self.out / "best")
                (self.out / "best" / "best.json").write_text(json.dumps({"metric": key, "value": self.best,
                                                                         "step": step}) + "\n")
                self.log(f"best {key} = {self.best:.4f} at step {step}: saved {self.out / 'best'}")
            metrics["best/value"], metrics["best/step"] = float(self.best), float(self.best_step)
        return metrics

    def _write(self, step: int, result: EvalResult) -> None:
        d = self.out / "eval"
        d.mkdir(parents=True, exist_ok=True)
        with open(d / f"step_{step}_samples.jsonl", "w") as f:
            for rec in result.records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        (d / f"step_{step}_summary.json").write_text(json.dumps(result.summary, indent=2) + "\n")

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step = state.get("best"), state.get("best_step")
