"""The run's checkpoints seen from the loop: resume from the latest one, write this step's,
count the writes that failed (trainer.on_save_error=skip), and say where a failed run can
pick up. The on-disk format (atomic directories, RNG states, pruning) is trainer/checkpoint.py.

A checkpoint holds the run state the trainer hands over (data position, KL coefficient,
the async queue's and the validator's state) plus what this object adds: the failed-save
count, the world size and the run fingerprint (trainer/fingerprint.py) that a resume checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from lmm_r1_ascend.backends import Backend
from lmm_r1_ascend.config import TrainConfig
from lmm_r1_ascend.config.errors import SetupError
from lmm_r1_ascend.distributed.cluster import TrainingCluster
from lmm_r1_ascend.distributed.worker_group import WorkerDiedError
from lmm_r1_ascend.engines.base import NonFiniteError
from lmm_r1_ascend.engines.registry import train_engine_class
from lmm_r1_ascend.trainer import checkpoint as ckpt
from lmm_r1_ascend.trainer import fingerprint as fp


class Checkpointer:
    """Resume and save for one run writing to `out`. failures: the checkpoints this run could
    not write (it travels in the checkpoint, so a resumed run keeps counting)."""

    def __init__(self, cfg: TrainConfig, out: Path, backend: Backend, cluster: TrainingCluster,
                 log: Callable[[str], None]):
        self.cfg, self.out, self.backend, self.cluster, self.log = cfg, out, backend, cluster, log
        self.failures = 0
        self._last_bytes: int | None = None  # the last written checkpoint's size: the next one's expected size
        self._saved_step: int | None = None

    def resume(self, restore: Callable[[dict], None]) -> Path | None:
        """With trainer.resume and a checkpoint in out: check that it belongs to this run, load
        the ranks' weights and optimizer state, hand the run state to `restore` (which sets
        the step), then set the RNG states; returns its path (None: nothing to resume)."""
        path = ckpt.latest_checkpoint(self.out) if self.cfg.trainer.resume else None
        if path is None:
            return None
        state = ckpt.load_checkpoint(path)
        self._check_fingerprint(path, state)
        self._check_world_size(path, int(state.get("world_size", 1)))
        size = ckpt.directory_bytes(path)  # before the load: another world size adds a converted copy to it
        self.cluster.load(path)
        restore(state)
        self.failures = int(state.get("save_failures", 0))
        self._last_bytes, self._saved_step = size, int(state["step"])
        ckpt.set_rng_state(state["rng"], self.backend.rng_device_type())
        return path

    def _check_fingerprint(self, path: Path, state: dict) -> None:
        now = fp.run_fingerprint(self.cfg, fp.model_info(self.cfg))
        if "fingerprint" not in state:
            self.log(f"warning: checkpoint {path} has no run fingerprint (written by an older version): "
                     "resuming without checking that it belongs to this run's model, data and algorithm")
        elif diff := fp.compare_fingerprints(state["fingerprint"], now):
            raise SetupError(fp.mismatch_message(path, state["fingerprint"], now, diff))

    def _check_world_size(self, path: Path, saved_world: int) -> None:
        d, world = self.cfg.distributed, self.cluster.world_size
        if saved_world == world:
            return
        if not train_engine_class(d.train_engine).resumes_on_any_world_size(d):
            raise SetupError(f"checkpoint {path} was written by {saved_world} rank(s), and a ZeRO-0 checkpoint "
                             f"resumes only on as many ranks: set distributed.world_size={saved_world}, or train "
                             "with ZeRO 1-3, whose checkpoints resume on any world size (docs/resume.md)")
        self.log(f"resuming a checkpoint of {saved_world} rank(s) on {world}: the weights and "
                 "optimizer state are re-partitioned (DeepSpeed's universal checkpoint); the next steps equal "
                 "the old world size's up to floating-point reduction order (docs/resume.md)")

    def save(self, step: int, run_state: dict) -> Path | None:
        """Step `step`'s checkpoint. When it cannot be written (too little free space, checked first
        against the last checkpoint's size or an estimate; or any write error), one line names the
        directory, the bytes needed and free: trainer.on_save_error=stop raises CheckpointSaveError,
        skip warns, counts the failure and returns None. NonFiniteError and a dead worker are not
        save errors: they propagate."""
        need = self._last_bytes or self._estimate_bytes()
        state = {**run_state, "save_failures": self.failures, "world_size": self.cluster.world_size,
                 "fingerprint": fp.run_fingerprint(self.cfg, fp.model_info(self.cfg))}
        try:
            path = ckpt.save_checkpoint(self.out, step, state, self.cluster.save, need_bytes=need,
                                        keep=self.cfg.trainer.keep_checkpoints,
                                        device_type=self.backend.rng_device_type())
        except (NonFiniteError, WorkerDiedError):
            raise
        except Exception as err:  # noqa: BLE001 - any write failure (OSError, torch's writer, a rank's error)
            return self._failed(err, need, step)
        self._last_bytes, self._saved_step = ckpt.directory_bytes(path), step
        return path

    def _estimate_bytes(self) -> int | None:
        """Before the first save: the checkpoint's size from the actor's parameter count (safetensors
        headers; None when unknown), for the actor and, when trained, a critic of the same size."""
        from lmm_r1_ascend.models.loading import resolve_dtype
        from lmm_r1_ascend.trainer.model_facts import model_dir, parameter_count

        try:
            n = parameter_count(model_dir(self.cfg))
        except Exception:  # noqa: BLE001 - an estimate only: without it the first save is not checked
            return None
        if n is None:
            return None
        cfg = self.cfg
        dtype = resolve_dtype(None if cfg.model.dtype == "auto" else cfg.model.dtype, self.backend)
        per_param = train_engine_class(cfg.distributed.train_engine).checkpoint_bytes_per_param(dtype.itemsize)
        return ckpt.estimate_bytes(n, per_param, models=1 + int(cfg.algorithm.uses_critic))

    def _failed(self, err: Exception, need: int | None, step: int) -> None:
        root = ckpt.checkpoint_dir(self.out)
        cause = ckpt.first_line(err)
        where = "" if isinstance(err, ckpt.CheckpointSpaceError) else f" ({ckpt.space_line(root, need)})"
        line = f"checkpoint step_{step} not written: {cause}{where}"
        if self.cfg.trainer.on_save_error == "stop":
            raise ckpt.CheckpointSaveError(f"{line}; {self.resume_hint()} (trainer.on_save_error=skip "
                                           "trains on without it)") from None
        self.failures += 1
        self.log(f"warning: {line}; training goes on (trainer.on_save_error=skip; "
                 f"{self.failures} failed so far, checkpoint/save_failures in metrics.jsonl)")
        return None

    def written(self, step: int) -> Path | None:
        """Step `step`'s checkpoint when this run has just written (or resumed from) it, else None."""
        return ckpt.checkpoint_dir(self.out) / f"step_{step}" if self._saved_step == step else None

    def latest(self) -> Path | None:
        return ckpt.latest_checkpoint(self.out)

    def resume_hint(self) -> str:
        """Where a failed run can pick up: the last good checkpoint and how to resume from it."""
        last = self.latest()
        if last is None:
            return "no checkpoint was written yet (trainer.save_steps); the run must start over"
        return f"last good checkpoint: {last} (step {last.name.removeprefix('step_')}); " + (
            "run the same command again to resume from it" if self.cfg.trainer.resume else
            "run again with trainer.resume=true to resume from it")
