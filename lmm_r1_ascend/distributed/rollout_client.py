"""Where rollouts are generated, and how new actor weights reach the engines.

- `InProcessRollout`: engines inside the training ranks' processes: rank 0's only (local
  mode, or ray mode with distributed.rollout_engines=0), or one in every rank
  (distributed.colocate_rollout=true: all models and engines share the devices, the
  paper's layout). Weights are copied in place after every update (all ranks take part
  so ZeRO-3 can gather them).
- `RemoteRollout`: distributed.rollout_engines engines, each a Ray actor (`RolloutActor`)
  holding an hf or vLLM engine on rollout.vllm_tensor_parallel_size devices. Prompts are
  split across engines; weights travel by broadcast in a side group of trainer rank 0 and
  every engine process, bucket by bucket (kernels/weight_sync.py), over the backend's
  collective library (gloo on CPU, nccl on CUDA, hccl on Ascend).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from lmm_r1_ascend.config import TrainConfig, to_dict
from lmm_r1_ascend.distributed.ray_group import RayWorkerGroup, gather_calls
from lmm_r1_ascend.distributed.worker_group import WorkerGroup
from lmm_r1_ascend.rollout.registry import engine_class


def split_generate(group: WorkerGroup, engine_ranks: int, prompts: list, sampling) -> list:
    """Contiguous prompt chunks over the first `engine_ranks` ranks of `group`; rank k samples
    with seed + k (so rank 0 alone reproduces a single engine's run); prompt indices global."""
    k_engines = min(engine_ranks, len(prompts))
    bounds = [round(i * len(prompts) / k_engines) for i in range(k_engines + 1)]
    args: list[Any] = []
    for k in range(group.world_size):
        if k < k_engines:
            seed = None if sampling.seed is None else sampling.seed + k
            args.append((prompts[bounds[k]:bounds[k + 1]], dataclasses.replace(sampling, seed=seed)))
        else:
            args.append(None)
    results = group.call_each("generate", args)
    samples = []
    for k in range(k_engines):
        for s in results[k]:
            samples.append(dataclasses.replace(s, prompt_index=s.prompt_index + bounds[k]))
    return samples


class InProcessRollout:
    """every_rank: an engine in each training rank (else in rank 0 only)."""

    def __init__(self, train: WorkerGroup, cfg: TrainConfig, every_rank: bool = False):
        self.train, self.cfg, self.every_rank = train, cfg, every_rank
        self.sleep_between = engine_class(cfg.rollout.engine).sleeps_between_phases(cfg.rollout)

    def describe(self) -> str:
        where = f"each of the {self.train.world_size} ranks' processes" if self.every_rank else "rank 0's process"
        return f"{self.cfg.rollout.engine} engine in {where}, in-place weight sync"

    def generate(self, prompts: list, sampling) -> list:
        samples = split_generate(self.train, self.train.world_size if self.every_rank else 1, prompts, sampling)
        if self.sleep_between:  # free the engines' memory for the training phase
            self.train.call("rollout_sleep")
        return samples

    def sync_weights(self) -> int:
        return self.train.call("sync_weights_in_process")[0]

    def close(self) -> None:  # the engines belong to the ranks and close with them
        pass


class RemoteRollout:
    """engines: a WorkerGroup of RolloutActor; train: the training ranks (rank 0 sends weights)."""

    def __init__(self, engines: WorkerGroup, train: WorkerGroup, cfg: TrainConfig, processes_per_engine: int):
        self.engines, self.train, self.cfg = engines, train, cfg
        self.bucket_bytes = cfg.distributed.weight_sync_bucket_mb << 20
        host, port = train.call_rank(0, "rendezvous_address")
        world = 1 + engines.world_size * processes_per_engine
        offsets = [(host, port, 1 + k * processes_per_engine, world) for k in range(engines.world_size)]
        gather_calls([(train, "init_weight_sync", [(host, port, world)] * train.world_size),
                       (engines, "init_weight_sync", offsets)])
        self.meta = train.call("weights_meta")[0]

    def describe(self) -> str:
        return (f"{self.engines.world_size} {self.cfg.rollout.engine} engine actor(s), broadcast weight sync "
                f"({self.cfg.distributed.weight_sync_bucket_mb} MB buckets)")

    def generate(self, prompts: list, sampling) -> list:
        """Contiguous prompt chunks per engine; engine k samples with seed + k (see split_generate)."""
        return split_generate(self.engines, self.engines.world_size, prompts, sampling)

    def sync_weights(self) -> int:
        counts = gather_calls([(self.train, "send_weights", [(self.meta,)] * self.train.world_size),
                                (self.engines, "receive_weights", [(self.meta, self.bucket_bytes)] * self.engines.world_size)])
        return counts[0][0]

    def close(self) -> None:
        self.engines.close()


class RolloutActor:
    """A rollout engine in its own Ray actor (one engine; tensor parallel inside vLLM)."""

    def __init__(self, cfg: dict, actor_path: str, *, rank: int, world_size: int):
        import os

        from lmm_r1_ascend.backends import get_backend
        from lmm_r1_ascend.config.loader import build
        from lmm_r1_ascend.config.schema import TrainConfig
        from lmm_r1_ascend.workers.builders import build_rollout_engine

        self.cfg = build(TrainConfig, cfg)
        self.backend = get_backend(self.cfg.device)
        os.environ.update(self.backend.worker_env())  # the backend decides, over inherited values
        self.device = self.backend.device(0)
        model_dtype = self.cfg.model.dtype
        dtype = self.backend.default_dtype if model_dtype == "auto" else getattr(torch, model_dtype)
        self.engine = build_rollout_engine(self.cfg, actor_path, self.device, dtype)
        self.rank = rank
        self._group = None

    def generate(self, prompts: list, sampling) -> list:
        return self.engine.generate(prompts, sampling)

    def init_weight_sync(self, host: str, port: int, rank_offset: int, world_size: int) -> None:
        self.engine.join_weight_sync(host, port, rank_offset, world_size, self.backend.distributed_backend(),
                                     self.cfg.distributed.timeout_s)

    def receive_weights(self, meta: list, bucket_bytes: int) -> int:
        return self.engine.receive_weights(meta, bucket_bytes)

    def close(self) -> None:
        self.engine.close()


def start_remote_rollout(cfg: TrainConfig, backend, actor_path: str, train: WorkerGroup) -> RemoteRollout:
    d = cfg.distributed
    tp = engine_class(cfg.rollout.engine).devices_per_engine(cfg.rollout)
    engines = RayWorkerGroup(RolloutActor, d.rollout_engines, name="rollout", args=(to_dict(cfg), actor_path),
                             actor_options=backend.ray_actor_options(tp), cpus_per_rank=d.cpus_per_rank,
                             env=backend.worker_env(), strategy=d.placement_strategy, master=False,
                             ready_timeout_s=d.timeout_s)
    try:
        return RemoteRollout(engines, train, cfg, processes_per_engine=tp)
    except BaseException:
        engines.close()
        raise


RolloutClient = InProcessRollout | RemoteRollout  # what the controller generates and syncs weights through
