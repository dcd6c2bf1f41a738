"""Experiment trackers behind one interface (trainer.loggers; docs/trackers.md).

A run opens each named tracker once, in the driver process only (the controller: Ray ranks
never log), gives it the run's identity (project, name, tags, the full resolved config),
then every `metrics.jsonl` row's numbers under the same names, and closes it. Each tracker
is one small module that imports its library lazily: a tracker whose library is missing
stops the run before any model is built, with one line naming the pyproject extra.

A resumed run (one that continued from a checkpoint) continues the same tracker run where
the tracker allows it: the ids are kept in <output_dir>/trackers.json.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lmm_r1_ascend.config.errors import SetupError
from lmm_r1_ascend.config.schema import LOGGERS, TrainConfig, TrainerConfig

# name -> (module in this package, Python package it needs, pyproject extra that installs it)
TRACKERS = {
    "tensorboard": ("tb_tracker", "tensorboard", "tensorboard is a core dependency"),
    "wandb": ("wandb_tracker", "wandb", "wandb"),
    "swanlab": ("swanlab_tracker", "swanlab", "swanlab"),
    "mlflow": ("mlflow_tracker", "mlflow", "mlflow"),
}
assert tuple(TRACKERS) == LOGGERS, "config.schema.LOGGERS and the tracker modules must name the same trackers"
IDS_FILE = "trackers.json"


@dataclass
class RunInfo:
    """What every tracker is told once. run_id: the id this tracker gave the run before an
    interruption (resume), None for a new tracker run. resume_step: the checkpoint's step the
    run continues from (0: a fresh run)."""

    project: str
    name: str
    tags: list[str]
    config: dict[str, Any]
    out: Path
    run_id: str | None = None
    resume_step: int = 0


class Tracker:
    """One experiment tracker's run. Subclasses set `run_id` (None where the tracker has no
    resumable run) and implement log / close; upload is optional (trainer.log_artifacts)."""

    name = ""
    run_id: str | None = None

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """scalars: finite floats/ints keyed like metrics.jsonl (`reward/mean`, `eval/all/pass@8`)."""
        raise NotImplementedError

    def upload(self, paths: Sequence[Path]) -> None:
        """Upload files or folders as the run's artifacts (only called with trainer.log_artifacts)."""

    def close(self) -> None:
        raise NotImplementedError


def enabled_loggers(trainer_cfg: TrainerConfig) -> list[str]:
    """trainer.loggers in order without repeats, less tensorboard when trainer.tensorboard=false."""
    names = list(dict.fromkeys(trainer_cfg.loggers))
    return [n for n in names if n != "tensorboard" or trainer_cfg.tensorboard]


def check_loggers(trainer_cfg: TrainerConfig) -> list[str]:
    """The enabled trackers, after checking each is known and its library installed: one
    SetupError line naming the extra otherwise (before any model is loaded)."""
    names = enabled_loggers(trainer_cfg)
    for name in names:
        if name not in TRACKERS:
            raise SetupError(f"trainer.loggers: unknown tracker '{name}'; choose from {', '.join(TRACKERS)}")
        _, package, extra = TRACKERS[name]
        if importlib.util.find_spec(package) is None:
            raise SetupError(f"trainer.loggers: {name} is not installed: pip install 'lmm-r1-ascend[{extra}]' "
                             f"(or drop {name} from trainer.loggers)")
    return names


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"trainer": {"max_steps": 2}} -> {"trainer.max_steps": 2} (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _read_ids(out: Path) -> dict[str, str]:
    try:
        return json.loads((out / IDS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def open_trackers(cfg: TrainConfig, config: dict[str, Any], out: Path, resume_step: int) -> list[Tracker]:
    """Open trainer.loggers for a run writing to `out`; resume_step > 0 continues the tracker
    runs recorded in out/trackers.json. A tracker that cannot start (no login, no network in
    online mode) stops with one line saying how to run it offline."""
    t = cfg.trainer
    names = check_loggers(t)
    known = _read_ids(out) if resume_step > 0 else {}
    trackers: list[Tracker] = []
    try:
        for name in names:
            module = importlib.import_module(f"{__name__}.{TRACKERS[name][0]}")
            info = RunInfo(project=t.project, name=t.run_name or Path(out).resolve().name, tags=list(t.tags),
                           config=config, out=Path(out), run_id=known.get(name), resume_step=resume_step)
            try:
                trackers.append(module.open_run(info))
            except SetupError:
                raise
            except Exception as exc:  # the libraries raise their own types (UsageError, RuntimeError, ...)
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise SetupError(f"trainer.loggers: {name} could not start a run: {first} "
                                 f"({module.OFFLINE_HINT})") from None
    except BaseException:
        for tracker in trackers:
            tracker.close()
        raise
    ids = {tr.name: tr.run_id for tr in trackers if tr.run_id}
    if ids:
        (Path(out) / IDS_FILE).write_text(json.dumps({**known, **ids}, indent=1) + "\n")
    return trackers


def scalars_of(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics row that trackers take: ints and floats, not bools, not None."""
    return {k: v for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
