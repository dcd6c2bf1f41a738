"""The asynchronous rollout's queue (trainer/async_rollout.py) against a model of the engine
actors written the obvious way: an engine runs what it is sent in order, so a generation
samples with the weights of the last push sent before it. The bound must hold for every mix
of steps (several draws per step under dynamic sampling, steps without an update), the queue
must never hold draws no step will take, and a checkpoint must name the draw and the dataset
position a resumed run regenerates from. Config errors name what to change."""

from __future__ import annotations

import random

import pytest

from lmm_r1_ascend.config import ConfigError, load_config
from lmm_r1_ascend.distributed.rollout_client import staleness_bound
from lmm_r1_ascend.rollout.base import SamplingConfig
from lmm_r1_ascend.trainer.async_rollout import AsyncRollout, staleness_metrics


class _Sample:
    def __init__(self, version: int, seed: int, prompts: list):
        self.weight_version, self.seed, self.prompts = version, seed, prompts


class _EngineModel:
    """RemoteRollout's contract: submit() and push_weights() return at once; the engine takes
    calls in order, so what is submitted samples with the version pushed last before it."""

    def __init__(self):
        self.version = 0
        self.submitted: list[tuple[int, int]] = []  # (seed, version) in submission order
        self.last_generation_s = 0.5  # each generation's engine time

    def submit(self, prompts, sampling):
        self.submitted.append((sampling.seed, self.version))
        return _Sample(self.version, sampling.seed, prompts)

    def collect(self, pending):
        return [pending]

    def push_weights(self):
        self.version += 1


class _Data:
    """A dataset position: each take hands out the next prompt number."""

    def __init__(self):
        self.index = 0

    def take(self):
        self.index += 1
        return [self.index - 1]

    def state(self):
        return {"index": self.index}


def _pipeline(bound: int, total_steps: int, step: list[int], engine=None, data=None):
    engine, data = engine or _EngineModel(), data or _Data()
    pipe = AsyncRollout(engine, bound=bound, take_prompts=data.take, data_state=data.state,
                        sampling=SamplingConfig(n=2), seed=7, steps_after=lambda: total_steps - step[0] - 1)
    return pipe, engine, data


def _run(pipe, engine, step, total_steps, rng, dynamic: bool):
    """Trainer steps: each takes 1 (or, dynamic, 1-3) draws, updates (mostly), pushes. Returns
    the staleness of every taken sample, per step."""
    lags = []
    while step[0] < total_steps:
        trained_with = engine.version
        taken = [pipe.take()[0] for _ in range(rng.randint(1, 3) if dynamic else 1)]
        lags.append([trained_with - s.weight_version for s in taken])
        pipe.end_step(updated=not dynamic or rng.random() < 0.8)
        step[0] += 1
    return lags


@pytest.mark.parametrize("bound", [1, 2, 3])
@pytest.mark.parametrize("dynamic", [False, True], ids=["one-draw", "dynamic-sampling"])
def test_no_sample_is_staler_than_the_bound(bound, dynamic, rng_seed):
    rng = random.Random(rng_seed)
    step, total = [0], 12
    pipe, engine, _ = _pipeline(bound, total, step)
    lags = _run(pipe, engine, step, total, rng, dynamic)
    assert max(max(x) for x in lags) <= bound, lags
    assert min(min(x) for x in lags) >= 0
    if not dynamic:  # one draw a step: the engines run `bound` versions ahead, from the start
        assert [x[0] for x in lags] == [min(s, bound) for s in range(total)]


def test_one_step_off_trains_each_batch_one_version_late_and_wastes_no_generation():
    step, total = [0], 5
    pipe, engine, _ = _pipeline(1, total, step)
    lags = _run(pipe, engine, step, total, random.Random(0), dynamic=False)
    assert lags == [[0], [1], [1], [1], [1]]
    assert len(engine.submitted) == total and not pipe.queue  # nothing generated for a step that never runs
    assert [seed for seed, _ in engine.submitted] == [7 * 100003 + d for d in range(total)]
    # the engines' time of what was taken (throughput/rollout_tokens_per_s), not the trainer's wait
    assert pipe.pop_generation_s() == pytest.approx(0.5 * total) and pipe.pop_generation_s() == 0.0


def test_generation_overlaps_training_up_to_the_bound():
    """Inside a step, once its batch is taken, the next `bound` draws are already submitted (the
    engines generate them while the ranks train); after the push one more goes out."""
    step = [0]
    pipe, engine, _ = _pipeline(2, 10, step)
    pipe.take()
    assert len(pipe.queue) == 2 and [v for _, v in engine.submitted] == [0, 0, 0]
    pipe.end_step(updated=True)
    assert len(pipe.queue) == 3 and engine.submitted[-1][1] == 1  # sampled with the pushed weights


def test_a_checkpoint_names_the_oldest_unconsumed_draw_and_resume_regenerates_it():
    step, total = [0], 8
    pipe, engine, data = _pipeline(1, total, step)
    for _ in range(3):
        pipe.take()
        pipe.end_step(updated=True)
        step[0] += 1
    state = pipe.resume_state()
    oldest = pipe.queue[0]
    assert state == {"draw": oldest.index, "data": oldest.data_state}
    # A resumed run: the dataset back at the saved position, the draw counter continued.
    data2 = _Data()
    data2.index = state["data"]["index"]
    step2 = [3]
    pipe2, engine2, _ = _pipeline(1, total, step2, data=data2)
    pipe2.load_resume_state(state)
    taken = pipe2.take()[0]
    assert taken.prompts == oldest.pending.prompts and taken.seed == oldest.pending.seed
    assert taken.weight_version == engine2.version  # regenerated from the checkpoint's weights: staleness 0
    with pytest.raises(RuntimeError, match="before the first draw"):
        pipe2.load_resume_state(state)


def test_an_empty_queue_at_the_end_of_a_run_checkpoints_the_next_position():
    step = [0]
    pipe, _, data = _pipeline(1, 1, step)
    pipe.take()
    pipe.end_step(updated=True)
    assert not pipe.queue
    assert pipe.resume_state() == {"draw": 1, "data": {"index": data.index}}


def test_the_bound_must_be_positive():
    with pytest.raises(ValueError, match=">= 1"):
        _pipeline(0, 4, [0])


def test_staleness_metrics_follow_their_definition():
    samples = [_Sample(v, 0, []) for v in (3, 2, 3, 1)]
    assert staleness_metrics(samples, 3) == {"rollout/staleness_mean": 0.75, "rollout/staleness_max": 2.0}
    assert staleness_metrics([], 3) == {}


RAY_ENGINE = ["distributed.mode=ray", "distributed.rollout_engines=1"]


@pytest.mark.parametrize("overrides, message", [
    (["rollout.async_mode=eager"], "must be one of sync, one_step_off, bounded"),
    (["rollout.async_mode=one_step_off"], "engines on devices of their own, but this placement runs them in this process"),
    (["rollout.async_mode=bounded", "distributed.mode=ray", "distributed.rollout_engines=0"],
     "inside the training ranks"),
    (["rollout.async_mode=bounded", "rollout.max_staleness=0", *RAY_ENGINE], "max_staleness: must be an int >= 1"),
    (["rollout.async_mode=one_step_off", "rollout.max_staleness=2", *RAY_ENGINE], "use rollout.async_mode=bounded"),
    (["rollout.async_mode=one_step_off", "algorithm.old_logprobs=rollout", *RAY_ENGINE],
     "set algorithm.old_logprobs=recompute"),
])
def test_async_config_errors_say_what_to_change(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo_fre", overrides=overrides)


@pytest.mark.parametrize("overrides, bound", [
    ([], 0), (["rollout.async_mode=one_step_off", *RAY_ENGINE], 1),
    (["rollout.async_mode=bounded", "rollout.max_staleness=3", *RAY_ENGINE], 3)])
def test_the_documented_async_layouts_load(overrides, bound):
    assert staleness_bound(load_config("demo_fre", overrides=overrides).rollout) == bound


def test_a_sample_from_other_weights_than_its_draw_was_queued_behind_is_an_error():
    """The bound rests on engine actors running calls in order; a draw that comes back sampled
    with other weights (a threaded or async actor) is refused, not trained on."""

    class _OutOfOrder(_EngineModel):
        def collect(self, pending):
            pending.weight_version += 1  # as if a later push had overtaken the generation
            return [pending]

    step = [0]
    pipe, _, _ = _pipeline(1, 4, step, engine=_OutOfOrder())
    with pytest.raises(RuntimeError, match="ran calls out of order"):
        pipe.take()


def test_generation_meter_fractions_follow_their_definition():
    """Two engines from t=0: engine 0 generated [1, 3] and [4, 5] and is idle now (t=10); engine
    1 generated [0, 6] and has a generation in flight, so its window ends at its last return."""
    from lmm_r1_ascend.distributed.rollout_client import GenerationMeter

    meter = GenerationMeter(2)
    meter.begin(now=0.0)
    for rank, begin, end in ((0, 1.0, 3.0), (0, 4.0, 5.0), (1, 0.0, 6.0)):
        meter.record(rank, begin, end)
    meter.wait_s = 2.5
    got = meter.metrics([False, True], now=10.0)
    want_engine = ((1 - 3.0 / 10.0) + (1 - 6.0 / 6.0)) / 2
    assert got["rollout/engine_idle_frac"] == pytest.approx(want_engine)
    assert got["rollout/trainer_idle_frac"] == pytest.approx(2.5 / 10.0)
    assert GenerationMeter(1).metrics([False]) == {}  # nothing generated yet: no figures
