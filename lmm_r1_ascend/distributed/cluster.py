"""The controller's view of the training ranks: one object with the same methods whether the
ranks live in this process (local) or in Ray actors (ray), so PPOTrainer has one loop.

Data parallelism is decided here: each mini-batch is cut into one contiguous shard per
rank with about equal token counts; every rank gets the whole mini-batch's loss
normaliser and the same number of micro-batches (the largest shard's), padding with
zero-weighted repeats (workers.py). The engines turn the per-rank gradients into the
mini-batch gradient, so a run on N ranks follows the single-process run up to
floating-point reduction order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from lmm_r1_ascend.algorithms.aggregation import loss_normaliser
from lmm_r1_ascend.algorithms.config import AlgorithmConfig
from lmm_r1_ascend.config import TrainConfig, to_dict
from lmm_r1_ascend.distributed.worker_group import LocalWorkerGroup, WorkerGroup
from lmm_r1_ascend.experience import ExperienceBatch
from lmm_r1_ascend.kernels.packing import split_by_token_budget
from lmm_r1_ascend.rollout.registry import engine_class
from lmm_r1_ascend.workers.metric_sums import merge_all


def shard_indices(lengths: list[int], world_size: int) -> list[list[int]]:
    """Contiguous index ranges, one per rank, with about equal token sums; a rank gets an
    empty list only when there are fewer samples than ranks."""
    n = len(lengths)
    if world_size == 1:
        return [list(range(n))]
    shards, start = [], 0
    total, seen = float(sum(lengths)), 0.0
    for r in range(world_size):
        remaining_ranks = world_size - r
        if r == world_size - 1:
            end = n
        else:
            target = total * (r + 1) / world_size
            end = start
            # take samples until this rank reaches its share, leaving at least one per later rank
            while end < n - (remaining_ranks - 1) and (end == start or seen + lengths[end] / 2 <= target):
                seen += lengths[end]
                end += 1
        shards.append(list(range(start, end)))
        start = end
    return shards


class TrainingCluster:
    """group: the actor's ranks (TrainRank workers). role_groups: the group hosting each role
    ("actor", "critic", "reference"): the actor's group for all of them when the models are
    colocated, a group of their own otherwise (distributed.colocate_models=false)."""

    def __init__(self, group: WorkerGroup, cfg: TrainConfig, role_groups: dict[str, WorkerGroup] | None = None):
        self.group, self.cfg = group, cfg
        self.roles = {"actor": group, "critic": group, "reference": group, **(role_groups or {})}
        self.max_tokens = cfg.trainer.max_tokens_per_micro_batch
        self.zero3 = cfg.distributed.train_engine == "deepspeed" and cfg.distributed.zero_stage == 3

    @property
    def world_size(self) -> int:
        return self.group.world_size

    def describe(self) -> str:
        d = self.cfg.distributed
        engine = "torch" if d.train_engine == "torch" else f"deepspeed ZeRO-{d.zero_stage}"
        return f"{d.mode} mode, {self.world_size} rank(s), {engine}"

    # ------------------------------------------------------------------ sharding
    def _shards(self, batch: ExperienceBatch) -> tuple[list[list[int]], list[ExperienceBatch]]:
        """(indices, shard) per rank; a rank without samples gets the first sample as padding
        (its indices are empty: real=False)."""
        parts = shard_indices(batch.sequence_lengths, self.world_size)
        return parts, [batch.select(idx or [0]) for idx in parts]

    def _chunks(self, shard: ExperienceBatch) -> int:
        return len(split_by_token_budget(shard.sequence_lengths, self.max_tokens))

    def _groups(self) -> list[WorkerGroup]:
        """Each distinct group once, actor's first."""
        return list({id(g): g for g in self.roles.values()}.values())

    def _gather(self, batch: ExperienceBatch, method: str, role: str, pad_forwards: bool) -> list[torch.Tensor]:
        parts, shards = self._shards(batch)
        extra: tuple = ()
        if pad_forwards and self.world_size > 1:
            extra = (max(self._chunks(s) for s in shards),)
        results = self.roles[role].call_each(method, [(s, *extra) for s in shards])
        out: list[torch.Tensor] = [None] * len(batch)  # type: ignore[list-item]
        for idx, res in zip(parts, results):
            for i, value in zip(idx, res):  # padding shards have no indices: their results are dropped
                out[i] = value
        return out

    # ------------------------------------------------------------------ forwards
    def ref_log_probs(self, batch: ExperienceBatch) -> list[torch.Tensor]:
        return self._gather(batch, "ref_log_probs", "reference", pad_forwards=False)  # plain module per rank

    def critic_values(self, batch: ExperienceBatch) -> list[torch.Tensor]:
        return self._gather(batch, "critic_values", "critic", pad_forwards=self.zero3)

    def actor_log_probs(self, batch: ExperienceBatch) -> list[torch.Tensor]:
        """Every rank computes the whole batch (equal forward counts under ZeRO-3); rank 0's answer."""
        return self.group.call("actor_log_probs", batch)[0]

    # ------------------------------------------------------------------ updates
    def _train(self, method: str, role: str, minibatch: ExperienceBatch, cfg: AlgorithmConfig) -> dict[str, float]:
        normaliser = loss_normaliser(cfg.loss_agg_mode, minibatch.action_counts, cfg.loss_agg_constant)
        parts, shards = self._shards(minibatch)
        n_micro = max(self._chunks(s) for s in shards)
        results = self.roles[role].call_each(method, [(s, cfg, normaliser, n_micro, bool(idx))
                                                      for idx, s in zip(parts, shards)])
        return merge_all(results).result()

    def train_actor(self, minibatch: ExperienceBatch, cfg: AlgorithmConfig) -> dict[str, float]:
        return self._train("train_actor", "actor", minibatch, cfg)

    def train_critic(self, minibatch: ExperienceBatch, cfg: AlgorithmConfig) -> dict[str, float]:
        return self._train("train_critic", "critic", minibatch, cfg)

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory: Path) -> None:
        for group in self._groups():  # each group writes the models it trains
            group.call("save", str(directory))

    def load(self, directory: Path) -> None:
        for group in self._groups():
            group.call("load", str(directory))

    def export_hf(self, path: Path) -> None:
        for group in self._groups():
            group.call("export_hf", str(path))

    def close(self) -> None:
        for group in self._groups():
            group.close()


def start_cluster(cfg: TrainConfig, backend, actor_path: str, updates: int, *,
                  log: Callable[[str], None] = print):
    """The training ranks and the rollout client for cfg.distributed (local or Ray)."""
    from lmm_r1_ascend.distributed.rank_worker import TrainRank
    from lmm_r1_ascend.distributed.rollout_client import InProcessRollout, start_remote_rollout

    d = cfg.distributed
    alg = cfg.algorithm
    plain = to_dict(cfg)
    if d.mode == "local":
        rank = TrainRank(plain, rank=0, world_size=1, actor_path=actor_path, total_updates=updates,
                         colocate_rollout=True)
        group = LocalWorkerGroup([rank], name="train")
        return TrainingCluster(group, cfg), InProcessRollout(group, cfg)
    from lmm_r1_ascend.distributed.ray_group import RayWorkerGroup, check_resources, ray_init

    colocated = d.rollout_engines == 0
    separate = [] if d.colocate_models else [r for r, used in (("critic", alg.uses_critic),
                                                                ("reference", alg.uses_reference)) if used]
    n_groups = 1 + len(separate)
    wanted = d.cpus_per_rank * (d.world_size * n_groups + (0 if colocated else d.rollout_engines))
    ray_init(d.ray_address, num_cpus=max(os.cpu_count() or 1, wanted))
    demand: dict[str, float] = {"CPU": wanted}
    if backend.ray_resource:
        tp = engine_class(cfg.rollout.engine).devices_per_engine(cfg.rollout)
        demand[backend.ray_resource] = d.world_size * n_groups + (0 if colocated else d.rollout_engines * tp)
    check_resources(demand, "this run (training ranks and rollout engines)")

    def ranks(name: str, roles: tuple[str, ...], rollout: bool) -> RayWorkerGroup:
        engine_here = [rollout and (d.colocate_rollout or r == 0) for r in range(d.world_size)]
        return RayWorkerGroup(TrainRank, d.world_size, name=name, args=(plain,),
                              kwargs={"actor_path": actor_path, "total_updates": updates, "roles": roles},
                              per_rank_kwargs=[{"colocate_rollout": here} for here in engine_here],
                              resource=backend.ray_resource, cpus_per_rank=d.cpus_per_rank, env=backend.worker_env(),
                              strategy=d.placement_strategy, ready_timeout_s=d.timeout_s)

    own = ("actor",) + tuple(r for r in ("critic", "reference") if r not in separate)
    group = ranks("train" if not separate else "actor", own, colocated)
    role_groups: dict[str, WorkerGroup] = {}
    try:
        for role in separate:
            role_groups[role] = ranks(role, (role,), False)
        log(f"ray: {d.world_size} rank(s) per group: {', '.join([group.name, *role_groups])} "
            f"({backend.ray_resource or 'CPU'} bundles)")
        rollout = (InProcessRollout(group, cfg, every_rank=d.colocate_rollout) if colocated
                   else start_remote_rollout(cfg, backend, actor_path, group))
    except BaseException:
        for g in (group, *role_groups.values()):
            g.close()
        raise
    return TrainingCluster(group, cfg, role_groups), rollout
