"""Fault injection for tests, kept out of the product (issue 30): the trainer and the workers are
wrapped from here, by monkeypatch in-process or by a driver script in a subprocess.

- ``install_pauses(fire)``: calls ``fire(point, step)`` at the trainer's points ``rollout`` (before a
  rollout is drawn), ``update`` (before the PPO update) and ``save`` (inside save_checkpoint, after
  the weights and engine states are written and before state.pt: the moment a kill must not leave a
  checkpoint that counts). Steps are 1-based (the step being made).
- ``pause_from_env(point, step)``: a ``fire`` that parks the process when the environment variable
  PAUSE_ENV is ``point[@step]:seconds`` (comma-separated for several), first creating the file
  named by READY_ENV, so a test knows the process is parked and can kill it there.
- ``plant_nan_loss(monkeypatch, {"actor": {2}})``: the first micro-batch loss of the named roles'
  optimizer steps (1-based, skipped steps included) is multiplied by NaN, through a wrapper engine.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_ENV, READY_ENV = "LMM_R1_TEST_PAUSE", "LMM_R1_TEST_PAUSE_READY"


def pause_from_env(point: str, step: int | None = None) -> None:
    spec = os.environ.get(PAUSE_ENV, "")
    for item in filter(None, (x.strip() for x in spec.split(","))):
        where, _, seconds = item.rpartition(":")
        name, _, at = where.partition("@")
        if name == point and (not at or (step is not None and int(at) == step)):
            ready = os.environ.get(READY_ENV)
            if ready:
                Path(ready).write_text(f"{point}@{step}\n")
            time.sleep(float(seconds))


def install_pauses(fire) -> None:
    """Wrap the trainer's rollout draw, its update and checkpoint writing with ``fire(point, step)``."""
    from lmm_r1_ascend.trainer import checkpoint as ckpt
    from lmm_r1_ascend.trainer import ppo

    draw, update, save = ppo.PPOTrainer._draw, ppo.ppo_update, ckpt.save_checkpoint

    def _draw(self, k, timed):
        fire("rollout", self.step + 1)
        return draw(self, k, timed)

    def _update(cluster, batch, alg, **kw):
        fire("update", kw["step"] + 1)
        return update(cluster, batch, alg, **kw)

    def _save(output_dir, step, state, write_parts, *args, **kw):
        def parts_then_fire(directory):
            write_parts(directory)
            fire("save", step)
        return save(output_dir, step, state, parts_then_fire, *args, **kw)

    ppo.PPOTrainer._draw, ppo.ppo_update, ckpt.save_checkpoint = _draw, _update, _save


class _NaNFirstLoss:
    """A TrainingEngine whose first ``backward`` of this optimizer step gets loss x NaN."""

    def __init__(self, engine):
        self._engine, self._first = engine, True

    def backward(self, loss, *, last: bool = True) -> None:
        if self._first:
            loss, self._first = loss * float("nan"), False
        self._engine.backward(loss, last=last)

    def __getattr__(self, name):
        return getattr(self._engine, name)


def plant_nan_loss(monkeypatch, steps: dict[str, set[int]]) -> None:
    """NaN into the first micro-batch loss of ``steps[role]``'s optimizer steps (in this process)."""
    from lmm_r1_ascend.workers import roles

    train = roles._train_micro_batches

    def _train(engine, micros, n_micro, real, loss_fn, prefix):
        if int(engine.steps) + 1 in steps.get(prefix, ()):
            engine = _NaNFirstLoss(engine)
        return train(engine, micros, n_micro, real, loss_fn, prefix)

    monkeypatch.setattr(roles, "_train_micro_batches", _train)
