"""SwanLab: one experiment per training run, its local files under <output_dir>/swanlog/.

SWANLAB_MODE=offline (or local) logs with no network (`swanlab sync <output_dir>/swanlog/run-*`
uploads later); a resumed run passes the same experiment id with resume="allow".
"""

from __future__ import annotations

from typing import Sequence
from pathlib import Path

from lmm_r1_ascend.trainer.trackers import RunInfo, Tracker

OFFLINE_HINT = "log in with `swanlab login`, or set SWANLAB_MODE=offline to log locally"


class SwanLabTracker(Tracker):
    name = "swanlab"

    def __init__(self, info: RunInfo):
        import swanlab

        self.run = swanlab.init(project=info.project, name=info.name, tags=info.tags or None, config=info.config,
                                log_dir=str(info.out / "swanlog"), id=info.run_id,
                                resume="allow" if info.run_id else None, reinit=True)
        self.run_id = self.run.id

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def upload(self, paths: Sequence[Path]) -> None:
        for path in paths:
            if path.is_dir():
                self.run.save(str(path / "**" / "*"), base_path=str(path.parent), policy="now")
            else:
                self.run.save(str(path), base_path=str(path.parent), policy="now")

    def close(self) -> None:
        self.run.finish()


def open_run(info: RunInfo) -> Tracker:
    return SwanLabTracker(info)
