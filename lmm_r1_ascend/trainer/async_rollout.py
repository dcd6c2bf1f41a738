"""Asynchronous rollout (rollout.async_mode one_step_off | bounded; docs/async_rollout.md): the
engine actors generate the next prompt batches while the training ranks learn on this one.

The controller keeps a queue of *draws* (one prompt batch of rollout_batch_size, sampled n
times) submitted to the engine actors and not consumed yet. An engine actor runs its calls in
the order they were submitted, so a draw samples with the weights of the last push submitted
before it; `RemoteRollout.push_weights` stages the new weights on the ranks and queues their
receipt on the engines without waiting, so training never waits for an engine to finish the
generation it is running, and an engine stops generating only for the broadcast itself.

The staleness bound. A draw submitted now samples with version v (the trainer's latest: every
push is queued at once). It is consumed after the q draws ahead of it in the queue; every step
consumes at least one draw and pushes at most once, so at most q more pushes happen before it
is consumed, plus one when the current step's update is still to come. A draw is therefore
submitted only while q (+1 inside a step) <= rollout.max_staleness, which bounds every sample's
staleness (trainer version when trained on - the version it was sampled with) whether the
trainer or the engines are the slower side. A step that needs a draw and finds the queue empty
submits one regardless (staleness 0). one_step_off is the bound 1: each step trains on the batch
generated during the previous step.

Determinism and checkpoints: draw d takes the next rollout_batch_size prompts of the dataset and
samples with seed `seed * 100003 + d`. A checkpoint records the dataset position before the
oldest unconsumed draw and that draw's index, so a resumed run drops what was in flight and
regenerates the same prompts with the same seeds, from the checkpoint's weights (fresher than
the uninterrupted run's: its first steps have staleness 0).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from lmm_r1_ascend.distributed.rollout_client import PendingGeneration, RemoteRollout
from lmm_r1_ascend.rollout.base import RolloutSample, SamplingConfig


@dataclass
class Draw:
    """index: the run's draw counter (its seed); data_state: the dataset's position before its
    prompts; version: the weight version it samples with; pending: the engines' work."""

    index: int
    data_state: dict[str, Any]
    version: int
    pending: PendingGeneration


class AsyncRollout:
    """rollout: the engine actors. bound: the staleness bound (>= 1). take_prompts(): the next
    prompt batch from the dataset (advancing it); data_state(): the dataset's position now.
    sampling: the run's SamplingConfig (the seed is set per draw). steps_after(): training steps
    still to run after the current one (no draw is submitted for a step that will not run)."""

    def __init__(self, rollout: RemoteRollout, *, bound: int, take_prompts: Callable[[], list],
                 data_state: Callable[[], dict], sampling: SamplingConfig, seed: int,
                 steps_after: Callable[[], int]):
        if bound < 1:
            raise ValueError(f"an asynchronous rollout needs a staleness bound >= 1, got {bound}")
        self.rollout, self.bound, self.sampling, self.seed = rollout, bound, sampling, seed
        self._take_prompts, self._data_state, self._steps_after = take_prompts, data_state, steps_after
        self.queue: list[Draw] = []
        self.next_index = 0
        self.generation_s = 0.0  # engine time of the draws taken since the last pop_generation_s

    # ------------------------------------------------------------------ the queue
    def _submit(self) -> None:
        state = dict(self._data_state())
        prompts = self._take_prompts()
        sampling = dataclasses.replace(self.sampling, seed=self.seed * 100003 + self.next_index)
        self.queue.append(Draw(self.next_index, state, self.rollout.version, self.rollout.submit(prompts, sampling)))
        self.next_index += 1

    def _top_up(self, update_pending: bool) -> None:
        """Submit draws while the bound allows (and a step will consume them)."""
        while len(self.queue) + int(update_pending) <= self.bound and len(self.queue) < self._steps_after():
            self._submit()

    def take(self) -> list[RolloutSample]:
        """The oldest draw's samples, for the step running now (its update still to come)."""
        if not self.queue:  # needed now: sampled with the latest weights
            self._submit()
        draw = self.queue.pop(0)
        self._top_up(update_pending=True)  # keep the engines busy while this step trains
        samples = self.rollout.collect(draw.pending)
        self.generation_s += self.rollout.last_generation_s
        wrong = sorted({s.weight_version for s in samples} - {draw.version})
        if wrong:  # the bound's premise: an engine actor runs its calls in the order they were sent
            raise RuntimeError(f"draw {draw.index} was submitted after weight version {draw.version} but sampled "
                               f"with version(s) {wrong}: the engine actors ran calls out of order (threaded or "
                               "async Ray actors break rollout.async_mode's staleness bound)")
        return samples

    def pop_generation_s(self) -> float:
        """Engine seconds of the draws taken since the last call (their slowest engine each)."""
        out, self.generation_s = self.generation_s, 0.0
        return out

    def end_step(self, updated: bool) -> None:
        """After the step's update (when there was one): push the new weights, then queue what
        the bound allows with them."""
        if updated:
            self.rollout.push_weights()
        self._top_up(update_pending=False)

    # ------------------------------------------------------------------ checkpoints
    def resume_state(self) -> dict[str, Any]:
        """{"draw", "data"}: the oldest unconsumed draw's index and the dataset position before it
        (in-flight draws are dropped at a checkpoint and regenerated on resume)."""
        if self.queue:
            return {"draw": self.queue[0].index, "data": self.queue[0].data_state}
        return {"draw": self.next_index, "data": dict(self._data_state())}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        """Continue the draw counter (the dataset position is restored by the trainer)."""
        if self.queue:
            raise RuntimeError("load_resume_state must come before the first draw")
        self.next_index = int(state["draw"])


def staleness_metrics(samples: list[RolloutSample], version: int) -> dict[str, float]:
    """rollout/staleness_mean, _max: weight versions between the weights that sampled each
    trained sample and the weights `version` it is trained with (0 in sync mode)."""
    if not samples:
        return {}
    lags = [version - s.weight_version for s in samples]
    return {"rollout/staleness_mean": sum(lags) / len(lags), "rollout/staleness_max": float(max(lags))}
