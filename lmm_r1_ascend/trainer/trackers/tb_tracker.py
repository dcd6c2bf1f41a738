"""TensorBoard: event files in <output_dir>/tensorboard/ (torch's SummaryWriter)."""

from __future__ import annotations

import yaml

from lmm_r1_ascend.trainer.trackers import RunInfo, Tracker

OFFLINE_HINT = "TensorBoard only writes local files"


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, info: RunInfo):
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run re-logs the steps after its checkpoint: purge_step hides the first copies
        self.writer = SummaryWriter(str(info.out / "tensorboard"), purge_step=info.resume_step + 1 if info.resume_step else None)
        if not info.resume_step:  # the run's identity and config, once
            self.writer.add_text("run", f"project `{info.project}`, run `{info.name}`, tags: {', '.join(info.tags) or '-'}")
            self.writer.add_text("config", "```\n" + yaml.safe_dump(info.config, sort_keys=False) + "```")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_run(info: RunInfo) -> Tracker:
    return TensorBoardTracker(info)
