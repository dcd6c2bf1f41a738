"""Weights & Biases: one wandb run per training run, its local files under <output_dir>/wandb/.

WANDB_MODE=offline logs with no network (`wandb sync <output_dir>/wandb/offline-run-*` uploads
later); a resumed run passes the same run id with resume="allow".
"""

from __future__ import annotations

from typing import Sequence
from pathlib import Path

from lmm_r1_ascend.trainer.trackers import RunInfo, Tracker

OFFLINE_HINT = "log in with `wandb login`, or set WANDB_MODE=offline to log locally"


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, info: RunInfo):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=info.project, name=info.name, tags=info.tags or None, config=info.config,
                              dir=str(info.out), id=info.run_id, resume="allow" if info.run_id else None,
                              reinit="create_new", settings=wandb.Settings(save_code=False, quiet=True))  # quiet: no history dump at the end
        self.run_id = self.run.id

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def upload(self, paths: Sequence[Path]) -> None:
        artifact = self.wandb.Artifact(f"{self.run.id}-outputs", type="run-outputs")
        for path in paths:
            if path.is_dir():
                artifact.add_dir(str(path), name=path.name)
            else:
                artifact.add_file(str(path), name=path.name)
        self.run.log_artifact(artifact)

    def close(self) -> None:
        self.run.finish()


def open_run(info: RunInfo) -> Tracker:
    return WandbTracker(info)
