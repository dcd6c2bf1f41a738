"""The controller's view of the training ranks: one object with the same methods whether the
ranks live in this process (local) or in Ray actors (ray), so PPOTrainer has one loop.

Data parallelism follows one pure plan (experience/shard_plan.py, which states the
gradient contract): contiguous token-balanced shards, the whole mini-batch's loss
normaliser on every rank, equal micro-batch counts with zero-weighted padding, and the
engines' world-size factor; so a run on N ranks follows the single-process run up to
floating-point reduction order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from lmm_r1_ascend.algorithms.config import AlgorithmConfig
from lmm_r1_ascend.config import TrainConfig, to_dict
from lmm_r1_ascend.engines.registry import train_engine_class
from lmm_r1_ascend.distributed.worker_group import LocalWorkerGroup, WorkerGroup
from lmm_r1_ascend.experience import ExperienceBatch
from lmm_r1_ascend.experience.shard_plan import RankShard, shard_plan
from lmm_r1_ascend.rollout.registry import engine_class
from lmm_r1_ascend.workers.metric_sums import MetricSums, merge_all


class TrainingCluster:
    """group: the actor's ranks (TrainRank workers). role_groups: the group hosting each role
    ("actor", "critic", "reference"): the actor's group for all of them when the models are
    colocated, a group of their own otherwise (distributed.colocate_models=false)."""

    def __init__(self, group: WorkerGroup, cfg: TrainConfig, role_groups: dict[str, WorkerGroup] | None = None):
        self.group, self.cfg = group, cfg
        self.roles = {"actor": group, "critic": group, "reference": group, **(role_groups or {})}
        self.max_tokens = cfg.trainer.max_tokens_per_micro_batch
        self.zero3 = train_engine_class(cfg.distributed.train_engine).shards_weights(cfg.distributed)
        # Sequence parallelism: ranks [k*sp, (k+1)*sp) split data-parallel replica k's tokens, so
        # they all get replica k's shard and one of them (the first) reports its results.
        self.sp = cfg.distributed.sequence_parallel_size

    @property
    def world_size(self) -> int:
        return self.group.world_size

    @property
    def replicas(self) -> int:
        """Data-parallel replicas: world size / sequence-parallel size."""
        return self.world_size // self.sp

    def _per_rank(self, per_replica: list) -> list:
        return [args for args in per_replica for _ in range(self.sp)]

    def _first_of_groups(self, per_rank: list) -> list:
        return per_rank[:: self.sp]

    def describe(self) -> str:
        d = self.cfg.distributed
        engine = train_engine_class(d.train_engine).describe(d)
        sp = f", sequence parallel {self.sp} ({d.sequence_parallel_mode})" if self.sp > 1 else ""
        return f"{d.mode} mode, {self.world_size} rank(s){sp}, {engine}"

    # ------------------------------------------------------------------ sharding
    def _plan(self, batch: ExperienceBatch, cfg: AlgorithmConfig | None = None) -> list[RankShard]:
        """The shard plan of `batch` (its normaliser matters only for updates: cfg given)."""
        agg = (cfg.loss_agg_mode, cfg.loss_agg_constant) if cfg is not None else ("token-mean", None)
        return shard_plan(batch.sequence_lengths, batch.action_counts, self.replicas, self.max_tokens,
                          agg_mode=agg[0], constant=agg[1])

    def _groups(self) -> list[WorkerGroup]:
        """Each distinct group once, actor's first."""
        return list({id(g): g for g in self.roles.values()}.values())

    def _gather(self, batch: ExperienceBatch, method: str, role: str, pad_forwards: bool) -> list[torch.Tensor]:
        plan = self._plan(batch)
        pad = pad_forwards and self.world_size > 1
        results = self._first_of_groups(self.roles[role].call_each(method, self._per_rank(
            [(batch.select(r.rows), *((r.n_micro,) if pad else ())) for r in plan])))
        out: list[torch.Tensor] = [None] * len(batch)  # type: ignore[list-item]
        for r, res in zip(plan, results):
            for i, value in zip(r.indices, res):  # padding shards have no indices: their results are dropped
                out[i] = value
        return out

    # ------------------------------------------------------------------ forwards
    def ref_log_probs(self, batch: ExperienceBatch) -> list[torch.Tensor]:
        return self._gather(batch, "ref_log_probs", "reference", pad_forwards=False)  # plain module per rank

    def critic_values(self, batch: ExperienceBatch) -> list[torch.Tensor]:
        return self._gather(batch, "critic_values", "critic", pad_forwards=self.zero3)

    def actor_log_probs(self, batch: ExperienceBatch) -> list[torch.Tensor]:
        """The actor's log-probs of the responses (the recomputed old log-probs), sharded over the
        ranks like the critic's values (ZeRO-3 ranks pad their forward counts to stay in step)."""
        return self._gather(batch, "actor_log_probs", "actor", pad_forwards=self.zero3)

    # ------------------------------------------------------------------ updates
    def _train(self, method: str, role: str, minibatch: ExperienceBatch, cfg: AlgorithmConfig,
               *extra) -> MetricSums:
        plan = self._plan(minibatch, cfg)
        results = self._first_of_groups(self.roles[role].call_each(method, self._per_rank(
            [(minibatch.select(r.rows), cfg, r.normaliser, r.n_micro, r.real, *extra) for r in plan])))
        return merge_all(results)

    def train_actor(self, minibatch: ExperienceBatch, cfg: AlgorithmConfig) -> dict[str, float]:
        return self._train("train_actor", "actor", minibatch, cfg).result()

    def train_actor_on_policy(self, minibatch: ExperienceBatch, cfg: AlgorithmConfig
                              ) -> tuple[dict[str, float], list[torch.Tensor]]:
        """The rollout's only actor step, whose forward gives the old log-probs (ActorWorker._loss):
        its metrics and those log-probs per sample in minibatch order (shards are contiguous and
        merged in rank order, each in micro-batch order)."""
        sums = self._train("train_actor", "actor", minibatch, cfg, True)
        return sums.result(), sums.per_sample_log_probs(minibatch.response_lengths)

    def train_critic(self, minibatch: ExperienceBatch, cfg: AlgorithmConfig) -> dict[str, float]:
        return self._train("train_critic", "critic", minibatch, cfg).result()

    def peak_memory_gb(self) -> float:
        """GB (1e9 bytes): the largest per-rank device-memory peak since the last call, over every group."""
        return max(max(group.call("take_peak_memory")) for group in self._groups()) / 1e9

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
    train_engine_class(d.train_engine).require()  # one line here, before any rank starts, when a package is missing
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
                              actor_options=backend.ray_actor_options(1), cpus_per_rank=d.cpus_per_rank,
                              env=backend.worker_env(),
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
