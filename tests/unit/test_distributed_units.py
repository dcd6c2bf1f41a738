"""Pieces of the scale-out path that need no Ray: sharding, metric merging, worker groups,
the distributed config checks and the dead-worker error."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmm_r1_ascend.config import ConfigError, load_config
from lmm_r1_ascend.experience.shard_plan import shard_indices
from lmm_r1_ascend.distributed.worker_group import LocalWorkerGroup, WorkerDiedError
from lmm_r1_ascend.workers.metric_sums import MetricSums, merge_all


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 500), min_size=0, max_size=40), st.integers(1, 6))
def test_shards_are_contiguous_cover_everything_and_leave_no_rank_empty(lengths, world):
    shards = shard_indices(lengths, world)
    assert len(shards) == world
    assert [i for s in shards for i in s] == list(range(len(lengths)))  # contiguous, in order, complete
    if len(lengths) >= world:
        assert all(shards), "every rank gets a sample when there are enough"


def test_shards_balance_tokens():
    lengths = [10] * 8 + [100, 100]
    shards = shard_indices(lengths, 2)
    sums = [sum(lengths[i] for i in s) for s in shards]
    # the contiguous cuts give 80/200 or 180/100: the balanced one has the smaller largest shard
    assert sums == [180, 100]


def _micro_rows(rng: random.Random, n: int) -> list[tuple[dict[str, float], float]]:
    rows = []
    for _ in range(n):
        rows.append(({"loss/policy": rng.uniform(-1, 1), "policy/clip_frac": rng.random(),
                      "policy/ratio_max": rng.uniform(1, 2), "policy/ratio_min": rng.uniform(0, 1)},
                     float(rng.randint(1, 50))))
    return rows


def _sums(rows: list[tuple[dict[str, float], float]]) -> MetricSums:
    out = MetricSums()
    for metrics, weight in rows:
        out.add(metrics, weight)
    return out


def test_metric_sums_follow_their_definitions(rng_seed):
    rng = random.Random(rng_seed)
    rows = _micro_rows(rng, 7)
    res = _sums(rows).result()
    total_w = sum(w for _, w in rows)
    # direct formulas; float64 sums of 7 terms: 1e-12 is generous
    assert res["loss/policy"] == pytest.approx(sum(m["loss/policy"] for m, _ in rows), abs=1e-12)
    assert res["policy/clip_frac"] == pytest.approx(sum(m["policy/clip_frac"] * w for m, w in rows) / total_w, abs=1e-12)
    assert res["policy/ratio_max"] == max(m["policy/ratio_max"] for m, _ in rows)
    assert res["policy/ratio_min"] == min(m["policy/ratio_min"] for m, _ in rows)


def test_metric_sums_do_not_depend_on_how_micro_batches_are_split_across_ranks(rng_seed):
    rng = random.Random(rng_seed)
    rows = _micro_rows(rng, 9)
    whole = _sums(rows)
    merged = merge_all([_sums(chunk) for chunk in (rows[:2], rows[2:7], rows[7:])]).result()
    for key, value in whole.result().items():
        assert merged[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_metric_sums_ignore_nan_extremes_and_keep_rank_scalars():
    a = MetricSums().add({"policy/ratio_max": math.nan}, 0.0)
    b = MetricSums().add({"policy/ratio_max": 1.5}, 3.0)
    b.scalars = {"actor/grad_norm": 2.0}
    out = merge_all([a, b]).result()
    assert out["policy/ratio_max"] == 1.5 and out["actor/grad_norm"] == 2.0


class _Echo:
    def __init__(self, tag):
        self.tag, self.closed = tag, False

    def hello(self, x, *, y=0):
        return (self.tag, x, y)

    def close(self):
        self.closed = True


def test_local_worker_group_calls_in_rank_order_and_closes():
    workers = [_Echo("a"), _Echo("b")]
    group = LocalWorkerGroup(workers)
    assert group.call("hello", 1, y=2) == [("a", 1, 2), ("b", 1, 2)]
    assert group.call_each("hello", [(1,), (5,)]) == [("a", 1, 0), ("b", 5, 0)]
    assert group.call_rank(1, "hello", 9) == ("b", 9, 0)
    with pytest.raises(ValueError, match="argument tuples for 2 ranks"):
        group.call_each("hello", [(1,)])
    group.close()
    assert all(w.closed for w in workers)
    with pytest.raises(ValueError, match="at least one worker"):
        LocalWorkerGroup([])


def test_worker_died_error_names_worker_and_carries_the_hint():
    err = WorkerDiedError("train", 1, "train_actor", "node ab12, pid 42", "The actor died unexpectedly")
    assert "worker 'train' rank 1 (node ab12, pid 42) died during train_actor()" in str(err)
    hinted = err.with_hint("last good checkpoint: out/checkpoints/step_2")
    assert str(hinted).endswith("last good checkpoint: out/checkpoints/step_2")
    assert (hinted.group, hinted.rank, hinted.method) == ("train", 1, "train_actor")


@pytest.mark.parametrize("overrides, message", [
    (["distributed.world_size=2"], "needs distributed.mode=ray"),
    (["distributed.mode=ray", "distributed.world_size=2"], "set distributed.train_engine=deepspeed"),
    (["distributed.train_engine=jax"], "distributed.train_engine: must be one of torch, deepspeed, got 'jax'"),
    (["distributed.zero_stage=4"], "distributed.zero_stage: must be one of 0, 1, 2, 3, got 4"),
    (["distributed.offload_params=true"], "needs distributed.zero_stage=3"),
    (["distributed.rollout_engines=2"], "needs distributed.mode=ray"),
    (["distributed.placement_strategy=RANDOM"], "PACK, SPREAD"),
    (["distributed.colocate_models=false"], "colocate_models=false needs distributed.mode=ray"),
    (["distributed.mode=ray", "distributed.colocate_rollout=true"], "needs distributed.mode=ray and "
                                                                      "distributed.rollout_engines=0"),
    (["distributed.mode=ray", "distributed.rollout_engines=0", "rollout.engine=vllm",
      "rollout.vllm_tensor_parallel_size=2"], "rank 0, which hosts the engine otherwise, has one device"),
    (["distributed.mode=ray", "distributed.world_size=200", "distributed.train_engine=deepspeed"],
     "every rank needs samples"),
])
def test_distributed_config_errors_say_what_to_change(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo_fre", overrides=overrides)


def test_distributed_config_accepts_the_documented_layouts():
    cfg = load_config("demo_fre", overrides=["distributed.mode=ray", "distributed.world_size=2",
                                             "distributed.train_engine=deepspeed", "distributed.zero_stage=3",
                                             "distributed.rollout_engines=0"])
    assert (cfg.distributed.world_size, cfg.distributed.zero_stage, cfg.distributed.rollout_engines) == (2, 3, 0)


def test_both_rollout_clients_implement_the_rollout_client_protocol():
    """RolloutClient is a Protocol the controller types against: each client has every member,
    with the Protocol's parameters (a client drifting from it fails here, not mid-run)."""
    import inspect

    from lmm_r1_ascend.distributed.rollout_client import InProcessRollout, RemoteRollout, RolloutClient

    methods = ["close", "describe", "generate", "metrics", "sync_weights"]
    for cls in (InProcessRollout, RemoteRollout):
        for name in methods:
            want = list(inspect.signature(getattr(RolloutClient, name)).parameters)
            assert list(inspect.signature(getattr(cls, name)).parameters) == want, (cls.__name__, name)
    assert InProcessRollout.version == 0  # a class attribute; RemoteRollout sets it in __init__
    assert "self.version = 0" in inspect.getsource(RemoteRollout.__init__)

    class Partial:  # runtime_checkable: a stand-in missing sync_weights is not a client
        version = 0

        def describe(self): return ""
        def generate(self, prompts, sampling): return []
        def metrics(self): return {}
        def close(self): pass

    assert not isinstance(Partial(), RolloutClient)
    Partial.sync_weights = lambda self: 0
    assert isinstance(Partial(), RolloutClient)
