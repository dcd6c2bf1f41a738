"""distributed.sequence_parallel_size / sequence_parallel_mode: validation with clear errors,
and the controller feeding every rank of an SP group the same shard."""

from __future__ import annotations

import pytest

from lmm_r1_ascend.config import ConfigError, load_config

RAY2 = ["distributed.mode=ray", "distributed.world_size=2", "distributed.train_engine=deepspeed"]


@pytest.mark.parametrize("overrides, message", [
    (["distributed.sequence_parallel_size=0"], "sequence_parallel_size: must be an int >= 1, got 0"),
    (["distributed.sequence_parallel_size=2"], "sequence_parallel_size=2 must divide distributed.world_size=1"),
    ([*RAY2, "distributed.sequence_parallel_size=4"], "sequence_parallel_size=4 must divide distributed.world_size=2"),
    ([*RAY2, "distributed.sequence_parallel_size=2", "distributed.sequence_parallel_mode=tree"],
     "sequence_parallel_mode: must be one of ring, ulysses, got 'tree'"),
    (["distributed.mode=ray", "distributed.world_size=4", "distributed.train_engine=deepspeed",
      "distributed.sequence_parallel_size=2", "trainer.train_batch_size=1"],
     r"data-parallel replicas \(distributed.world_size / sequence_parallel_size = 2\)"),
])
def test_sequence_parallel_config_errors_name_the_keys(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo_fre", overrides=overrides)


def test_sequence_parallel_layouts_are_accepted():
    cfg = load_config("demo_fre", overrides=[*RAY2, "distributed.sequence_parallel_size=2",
                                             "distributed.sequence_parallel_mode=ulysses"])
    assert (cfg.distributed.sequence_parallel_size, cfg.distributed.sequence_parallel_mode) == (2, "ulysses")
    assert load_config("demo_fre").distributed.sequence_parallel_size == 1


class _Group:
    """Records the per-rank arguments of call_each and answers with the rank number."""

    def __init__(self, world):
        self.world_size, self.calls = world, []

    def call_each(self, method, args):
        assert len(args) == self.world_size
        self.calls.append(args)
        return [[f"rank{r}"] * len(a[0]) for r, a in enumerate(args)]


def test_ranks_of_one_sp_group_get_the_same_shard_and_one_reports():
    import torch

    from lmm_r1_ascend.distributed.cluster import TrainingCluster
    from lmm_r1_ascend.experience import ExperienceBatch

    cfg = load_config("demo_fre", overrides=["distributed.mode=ray", "distributed.world_size=4",
                                             "distributed.train_engine=deepspeed",
                                             "distributed.sequence_parallel_size=2"])
    group = _Group(4)
    cluster = TrainingCluster(group, cfg)
    assert cluster.replicas == 2 and "sequence parallel 2 (ring)" in cluster.describe()
    n = 6
    batch = ExperienceBatch(prompt_ids=[torch.arange(3 + i) for i in range(n)],
                            response_ids=[torch.arange(2) for _ in range(n)],
                            action_mask=[torch.ones(2, dtype=torch.bool) for _ in range(n)],
                            log_probs=[torch.zeros(2) for _ in range(n)], rewards=torch.zeros(n),
                            group_ids=torch.arange(n))
    out = cluster.ref_log_probs(batch)
    args = group.calls[0]
    ids = [[len(p) for p in a[0].prompt_ids] for a in args]
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]
    assert set(out) == {"rank0", "rank2"}  # the first rank of each SP group reports
