"""The math reward: total = format + accuracy (RECIPE.md), batch API with diagnostics.

``MathReward(samples) -> list[RewardOutput]`` with components ``format`` (0 or
``format_weight``) and ``accuracy`` (0 or ``accuracy_weight``) and ``info`` holding
``pred``, ``gold`` and ``seconds``. Accuracy runs in a ``KillablePool`` (see
``math_accuracy``); multiple-choice labels are judged in-process. Bad input never
raises: a non-string response scores 0 (status ``bad_input``), a missing or
unparsable label scores 0 for accuracy (status ``bad_label``), a hung answer scores 0
(status ``timeout``). ``counts`` accumulates statuses for metrics.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Sequence

from lmm_r1_ascend.rewards.format import format_reward
from lmm_r1_ascend.rewards.math_accuracy import alarm_seconds, init_worker, verify_answer
from lmm_r1_ascend.rewards.multiple_choice import judge_choice, option_letter
from lmm_r1_ascend.rewards.pool import KillablePool
from lmm_r1_ascend.rewards.types import RewardInput, RewardOutput, short


def label_text(label: Any) -> str | None:
    """The label as text, or None when it cannot be a label (None, bool, containers).
    Numbers are accepted and written out (``60`` -> ``"60"``)."""
    if isinstance(label, str):
        return label if label.strip() else None
    if isinstance(label, bool) or not isinstance(label, (int, float)):
        return None
    return repr(label) if isinstance(label, float) else str(label)


class MathReward:
    """Format + accuracy for math answers.

    format_weight: reward for a well-formed response (0.5 in the recipe);
    use_format: False drops the format term (always 0).
    accuracy_weight: reward for a correct answer (1.0).
    timeout_s: hard wall-clock limit per answer (the worker is killed past it).
    workers: pool size; 0 scores in this process (no hard limit; math-verify's alarm
        works only when called from the main thread).
    """

    name = "math"

    def __init__(
        self,
        *,
        format_weight: float = 0.5,
        use_format: bool = True,
        accuracy_weight: float = 1.0,
        timeout_s: float = 10.0,
        workers: int = 2,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.format_weight, self.use_format = float(format_weight), bool(use_format)
        self.accuracy_weight, self.timeout_s, self.workers = float(accuracy_weight), float(timeout_s), workers
        self._pool: KillablePool | None = None
        self.counts: Counter[str] = Counter()

    @property
    def pool(self) -> KillablePool:
        if self._pool is None:
            self._pool = KillablePool(
                verify_answer, workers=self.workers, timeout_s=self.timeout_s, init=init_worker,
            )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> "MathReward":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def score_one(self, label: Any, response: Any) -> RewardOutput:
        return self([RewardInput(response=response, label=label)])[0]

    def __call__(self, samples: Sequence[RewardInput]) -> list[RewardOutput]:
        outs: list[RewardOutput | None] = [None] * len(samples)
        jobs: list[tuple[int, float, tuple[str, str, int]]] = []
        alarm = alarm_seconds(self.timeout_s)
        for i, s in enumerate(samples):
            resp = s.response
            if not isinstance(resp, str):
                outs[i] = self._finish(0.0, 0.0, "bad_input",
                                       f"the response must be a str, got {type(resp).__name__}")
                continue
            fmt = format_reward(resp, self.format_weight, self.use_format)
            label = label_text(s.label)
            if label is None:
                outs[i] = self._finish(fmt, 0.0, "bad_label", f"unusable label {short(s.label, 60)}")
                continue
            letter = option_letter(label)
            if letter is not None:
                acc, status, pred = judge_choice(letter, resp)
                outs[i] = self._finish(fmt, acc, status, "", pred=pred, gold=letter)
                continue
            jobs.append((i, fmt, (label, resp, alarm)))
        if jobs:
            if self.workers == 0:
                results = [self._in_process(task) for _, _, task in jobs]
            else:
                results = [self._from_outcome(o) for o in self.pool.map([task for _, _, task in jobs])]
            for (i, fmt, _), r in zip(jobs, results):
                outs[i] = self._finish(fmt, r["accuracy"], r["status"], r["detail"], pred=r["pred"],
                                       gold=r["gold"], seconds=r["seconds"])
        return outs  # type: ignore[return-value]

    @staticmethod
    def _in_process(task) -> dict[str, Any]:
        t = time.monotonic()
        r = verify_answer(task)
        r["seconds"] = time.monotonic() - t
        return r

    def _from_outcome(self, o) -> dict[str, Any]:
        if o.ok:
            return {**o.value, "seconds": o.seconds}
        status = "timeout" if o.timed_out else "error"
        return {"accuracy": 0.0, "status": status, "detail": o.error or "", "pred": None, "gold": None,
                "seconds": o.seconds}

    def _finish(self, fmt: float, acc: float, status: str, detail: str, **info) -> RewardOutput:
        self.counts[status] += 1
        acc = self.accuracy_weight * acc
        info = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in info.items()}
        return RewardOutput(total=fmt + acc, components={"format": fmt, "accuracy": acc},
                            status=status, detail=detail, info=info)
