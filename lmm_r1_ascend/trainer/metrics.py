"""Run outputs: `metrics.jsonl` (one JSON object per step), mirrored to the experiment trackers."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence


def _clean(value: Any) -> Any:
    """JSON-safe scalars: tensors to floats, NaN/inf to None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def length_by_source(samples: Sequence[Any]) -> dict[str, float]:
    """response_length/<datasource>/mean and .../clip_ratio per datasource of a step's samples
    (RolloutSample: .prompt.datasource, .response_ids (T,) int64, .finish_reason): the
    length signature the LMM-R1 paper follows per task during MGT."""
    by: dict[str, list[Any]] = {}
    for s in samples:
        by.setdefault(s.prompt.datasource, []).append(s)
    out: dict[str, float] = {}
    for source, group in sorted(by.items()):
        out[f"response_length/{source}/mean"] = sum(int(s.response_ids.numel()) for s in group) / len(group)
        out[f"response_length/{source}/clip_ratio"] = sum(s.finish_reason == "length" for s in group) / len(group)
    return out


class MetricsWriter:
    """Appends one JSON line per step to <output_dir>/metrics.jsonl and hands the row's numbers,
    under the same names, to the run's experiment trackers (trainer.loggers: TensorBoard,
    wandb, SwanLab, MLflow; lmm_r1_ascend/trainer/trackers)."""

    def __init__(self, output_dir: str | os.PathLike, *, trackers: Sequence[Any] = (), truncate_after: int | None = None):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after is not None:
            self._truncate(truncate_after)
        self.trackers = list(trackers)

    def _truncate(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint's step (they will be logged again)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, metrics: dict[str, Any]) -> dict:
        from lmm_r1_ascend.trainer.trackers import scalars_of

        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        scalars = scalars_of(row)
        for tracker in self.trackers:
            tracker.log(step, scalars)
        return row

    def upload(self, paths: Sequence[Path]) -> None:
        """trainer.log_artifacts: hand the run's files (those that exist) to every tracker."""
        present = [Path(p) for p in paths if Path(p).exists()]
        for tracker in self.trackers:
            tracker.upload(present)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}: is it a run directory?")
    text = path.read_text()
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as exc:
            if number == len(lines) and not text.endswith("\n"):
                break  # the last row of a live run, still being written
            raise ValueError(f"{path}:{number}: not a JSON metrics row ({exc})") from None
    return rows
