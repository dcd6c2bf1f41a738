"""Math accuracy with math-verify, run in a pool of killable worker processes.

Rules (RECIPE.md, "Rewards"):
- gold = the label wrapped in ``$...$`` unless it already starts and ends with ``$``;
  parsed with math-verify's default LaTeX extraction (first match).
- prediction = parsed from the whole response, boxed answers first
  (``boxed_match_priority=0``, ``boxed="all"``, units, basic LaTeX; well-formed LaTeX
  required: ``nits`` and ``malformed_operators`` off; no anchor-free extraction).
- accuracy 1.0 when ``verify(gold, prediction)``, else 0.0; any exception is 0.0.

Deliberate difference from the original: a label that cannot be parsed (math-verify
returns nothing, or only its raw-string fallback, e.g. for ``\frac{``), or that is None,
empty or not text, scores 0.0 with status ``bad_label`` and is counted; the original
gave 1.0 (when the parse was empty), which rewards every sample of a broken row and
hides the broken row.

math-verify's own timeouts use ``signal.alarm`` and so only work in a process's main
thread; the work runs in ``pool.KillablePool`` workers (main thread), and the pool's
hard limit also covers code that never yields to a signal handler.

Statuses: correct, wrong, no_answer (nothing parsable in the response), bad_label,
timeout (math-verify's alarm or the pool's kill), error.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from typing import Any

# Kept short: messages of math-verify's exceptions can embed the whole response.
_MAX_DETAIL = 300


def wrap_label(label: str) -> str:
    """The gold string math-verify parses: ``label`` inside ``$...$`` unless already."""
    s = label.strip()
    if len(s) >= 2 and s.startswith("$") and s.endswith("$"):
        return s
    return f"${s}$"


def _configs():
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig

    gold = [LatexExtractionConfig()]
    pred = [
        LatexExtractionConfig(
            normalization_config=NormalizationConfig(
                nits=False, malformed_operators=False, basic_latex=True, boxed="all", units=True
            ),
            boxed_match_priority=0,
            try_extract_without_anchor=False,
        )
    ]
    return gold, pred


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str, timeout: int):
    # Labels repeat n_samples_per_prompt times in a batch: parse each once per worker.
    from math_verify import parse

    return parse(gold, extraction_config=_configs()[0], extraction_mode="first_match",
                 parsing_timeout=timeout, raise_on_error=True)


def _excerpt(x: Any) -> str:
    s = str(x)
    return s if len(s) <= 200 else s[:197] + "..."


def verify_answer(task: tuple[str, str, int]) -> dict[str, Any]:
    """Score one (label, response, alarm_seconds) in the current process.

    Returns {"accuracy": 0.0|1.0, "status": str, "detail": str, "pred": str|None,
    "gold": str|None}. Must run on a main thread when alarm_seconds > 0.
    """
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    label, response, alarm = task
    timeout = alarm if alarm and alarm > 0 and threading.current_thread() is threading.main_thread() else None
    res: dict[str, Any] = {"accuracy": 0.0, "status": "error", "detail": "", "pred": None, "gold": None}
    stage = "parsing the label"
    try:
        gold = _parse_gold(wrap_label(label), timeout)
        if not gold or all(isinstance(g, str) for g in gold):
            # Only a raw-string fallback (or nothing): the label is not math.
            res.update(status="bad_label", detail=f"math-verify cannot parse the label {_excerpt(label)!r}")
            return res
        res["gold"] = _excerpt(gold[0])
        stage = "parsing the response"
        pred = parse(response, extraction_config=_configs()[1], extraction_mode="first_match",
                     parsing_timeout=timeout, raise_on_error=True)
        if not pred:
            res.update(status="no_answer", detail="no boxed or LaTeX answer found in the response")
            return res
        res["pred"] = _excerpt(pred[0])
        stage = "comparing"
        ok = verify(gold, pred, timeout_seconds=timeout, raise_on_error=True)
        res.update(accuracy=1.0 if ok else 0.0, status="correct" if ok else "wrong")
    except TimeoutException:
        res.update(status="timeout", detail=f"math-verify timed out while {stage}")
    except Exception as e:  # noqa: BLE001 - the recipe: any exception scores 0
        res.update(status="error", detail=f"{type(e).__name__} while {stage}: {str(e)[:_MAX_DETAIL]}")
    return res


def init_worker() -> None:
    """Per-worker set-up: quiet math-verify's loggers (they print whole responses on
    timeouts) and warm up the parser so the first task is not slow."""
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    verify_answer(("$\\frac{1}{2}$", "\\boxed{0.5}", 5))


def alarm_seconds(timeout_s: float) -> int:
    """math-verify's per-step alarm (whole seconds): half the hard limit, >= 1. The
    steps (parse label, parse response, compare) can add up past the hard limit; the
    pool's kill then decides."""
    return max(1, int(math.floor(timeout_s / 2)))
