"""Evaluate a policy on prompts: sample n responses each, score them with the training
reward router through training's own scoring path (rewards/scoring.py, one non-finite
policy), and summarise per datasource (accuracy, pass@k, maj@k, lengths, statuses).

The runner never builds a model: ``generate(prompts, sampling) -> list[RolloutSample]`` is
any rollout engine or the trainer's rollout client (so evaluation runs on the same engine
actors or ranks as training), ``reward`` is a RewardRouter. Used by
``python -m lmm_r1_ascend.eval`` and by validation during training (trainer.eval_steps).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lmm_r1_ascend.evaluation.metrics import answer_classes, summarise
from lmm_r1_ascend.rewards.multiple_choice import last_boxed
from lmm_r1_ascend.rewards.scoring import score_samples

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
CORRECT_STATUSES = ("correct", "solved")  # math / multiple choice, Sokoban


@dataclass
class EvalResult:
    """records: one JSON-ready dict per sample (samples.jsonl). summary: {datasource | "all":
    {figure: value}} (metrics.summarise). seconds: wall time of generation and scoring."""

    records: list[dict[str, Any]]
    summary: dict[str, dict[str, float]]
    seconds: float

    def metrics(self, prefix: str = "eval/") -> dict[str, float]:
        """Flat `eval/<datasource>/<figure>` floats for metrics.jsonl / TensorBoard; response
        length mean is also logged as `eval/<datasource>/response_length`."""
        out = {}
        for source, figures in self.summary.items():
            for key, value in figures.items():
                out[f"{prefix}{source}/{key}"] = float(value)
            out[f"{prefix}{source}/response_length"] = float(figures["response_length/mean"])
        return out


def extracted_answer(response: str, info: dict[str, Any]) -> str | None:
    """The answer a response commits to, for majority voting: the reward's parsed prediction
    when it reports one (math-verify's, or the option letter), else the last \\boxed{}, else
    the last <answer> part; None when there is none."""
    pred = info.get("pred")
    if pred not in (None, ""):
        return str(pred)
    boxed = last_boxed(response)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    parts = _ANSWER.findall(response)
    return parts[-1].strip() if parts and parts[-1].strip() else None


def _normalise(answer: str) -> str:
    return re.sub(r"\s+", "", answer.strip().strip("$")).lower()


def math_equivalent(a: str, b: str, timeout_s: int = 2) -> bool:
    """Two extracted answers are one vote when their normalised text is equal or math-verify
    calls them equal (e.g. 0.5 and 1/2); any math-verify error or timeout counts as different."""
    if _normalise(a) == _normalise(b):
        return True
    import threading

    from math_verify import parse, verify

    timeout = timeout_s if threading.current_thread() is threading.main_thread() else None
    try:
        pa = parse(f"${a}$", parsing_timeout=timeout)
        pb = parse(f"${b}$", parsing_timeout=timeout)
        return bool(pa and pb and verify(pa, pb, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - an unparseable answer is simply its own vote
        return False


def evaluate(prompts: Sequence[Any], *, generate: Callable, reward: Callable, tokenizer: Any, sampling: Any,
             batch_prompts: int = 64, progress: Callable[[int], None] | None = None,
             same: Callable[[str, str], bool] | None = math_equivalent) -> EvalResult:
    """Sample ``sampling.n`` responses for each of ``prompts`` (PromptItems), ``batch_prompts``
    at a time, score and summarise. ``progress(k)`` is called with the prompts done per batch."""
    if not prompts:
        raise ValueError("nothing to evaluate: the eval data has no prompts")
    if batch_prompts < 1:
        raise ValueError(f"batch_prompts must be >= 1, got {batch_prompts}")
    start = time.perf_counter()
    records: list[dict[str, Any]] = []
    for lo in range(0, len(prompts), batch_prompts):
        chunk = list(prompts[lo:lo + batch_prompts])
        seed = None if sampling.seed is None else sampling.seed + lo
        samples = generate(chunk, dataclasses.replace(sampling, seed=seed))
        samples = sorted(samples, key=lambda s: (s.prompt_index, s.sample_index))
        scored = score_samples(samples, reward, tokenizer)  # non-finite rewards: 0, status nonfinite_reward
        by_prompt: dict[int, list[dict[str, Any]]] = {}
        for s, out, inp in zip(samples, scored.outputs, scored.inputs):
            rec = {
                "prompt_id": lo + s.prompt_index, "sample_index": s.sample_index, "datasource": s.prompt.datasource,
                "source": s.prompt.meta.get("source", ""), "prompt": inp.prompt, "response": inp.response,
                "label": s.prompt.label, "answer": extracted_answer(inp.response, out.info),
                "correct": out.status in CORRECT_STATUSES, "reward": out.total,
                "format": float(out.components.get("format", 0.0) > 0), "status": out.status, "detail": out.detail,
                "response_length": int(s.response_ids.numel()), "finish_reason": s.finish_reason,
            }
            by_prompt.setdefault(rec["prompt_id"], []).append(rec)
        for group in by_prompt.values():
            classes = answer_classes([r["answer"] for r in group], same)
            for r, c in zip(group, classes):
                r["answer_class"] = c
            records.extend(group)
        if progress is not None:
            progress(len(chunk))
    summary = summarise(records, n=sampling.n, max_new_tokens=sampling.max_new_tokens)
    return EvalResult(records, summary, time.perf_counter() - start)


def format_table(summary: dict[str, dict[str, float]]) -> str:
    """A plain-text table: datasources as rows; accuracy, pass@k, maj@k, format, length, cut."""
    keys = ["accuracy"] + sorted((k for k in summary["all"] if k.startswith(("pass@", "maj@"))),
                                 key=lambda k: (k.split("@")[0], int(k.split("@")[1])))
    keys += ["format_rate", "reward_mean", "response_length/mean", "cut_frac", "n_prompts"]
    names = {"response_length/mean": "length", "format_rate": "format", "n_prompts": "prompts", "reward_mean": "reward"}
    width = max(len(s) for s in summary) + 2
    head = f"{'datasource':<{width}}" + "".join(f"{names.get(k, k):>9}" for k in keys)
    rows = [head]
    for source in sorted(summary, key=lambda s: (s == "all", s)):
        f = summary[source]
        cells = "".join(f"{f.get(k, float('nan')):>9.0f}" if k == "n_prompts" else
                        f"{f.get(k, float('nan')):>9.1f}" if k == "response_length/mean" else
                        f"{f.get(k, float('nan')):>9.3f}" for k in keys)
        rows.append(f"{source:<{width}}" + cells)
    return "\n".join(rows)
