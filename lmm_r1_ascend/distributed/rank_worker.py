"""One training rank: the actor (and critic, reference when the algorithm uses them) on one
device, plus, on rank 0 when the engine is colocated, the rollout engine.

The same class runs in the controller's process (distributed.mode=local, one rank) and
as one Ray actor per rank (distributed.mode=ray). Its methods are what the controller's
`TrainingCluster` calls; every method that touches a ZeRO-partitioned model is a
collective: all ranks must call it, with the same forward/backward counts.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

from lmm_r1_ascend.algorithms.config import AlgorithmConfig
from lmm_r1_ascend.distributed.net import free_port, node_ip
from lmm_r1_ascend.engines.registry import train_engine_class
from lmm_r1_ascend.experience import ExperienceBatch
from lmm_r1_ascend.models.train_modules import add_prefix, strip_prefix
from lmm_r1_ascend.workers.metric_sums import MetricSums


def _wrapper(worker):
    """The PolicyLogProbs / CriticValues module a worker's engine trains."""
    return getattr(worker.engine, "unwrapped", worker.engine.module)


class TrainRank:
    """cfg: the run's TrainConfig as a plain dict (it crosses process boundaries).
    actor_path: the resolved starting checkpoint; total_updates: planned optimizer steps.
    colocate_rollout: host a rollout engine in this process (rank 0, or every rank).
    master: (host, port) of rank 0's rendezvous when world_size > 1 or DeepSpeed is used.
    roles: the models this rank hosts (all three colocated, or one role per worker group);
    a role the algorithm does not use is skipped.
    """

    def __init__(self, cfg: dict, *, rank: int, world_size: int, actor_path: str, total_updates: int,
                 master: tuple[str, int] | None = None, colocate_rollout: bool = False,
                 roles: tuple[str, ...] = ("actor", "critic", "reference")):
        from lmm_r1_ascend.backends import get_backend
        from lmm_r1_ascend.config.loader import build
        from lmm_r1_ascend.config.schema import TrainConfig

        self.cfg = build(TrainConfig, cfg)
        self.rank, self.world_size = rank, world_size
        self.backend = get_backend(self.cfg.device)
        # DS_ACCELERATOR from the chosen backend, before deepspeed is imported, even over a value
        # inherited from the shell or an image (ASCEND.md: DeepSpeed must never guess the device).
        os.environ.update(self.backend.worker_env())
        self.backend.seed_everything(self.cfg.seed)
        if self.cfg.trainer.deterministic:
            self.backend.set_deterministic(True)
        if train_engine_class(self.cfg.distributed.train_engine).data_parallel:
            self._init_process_group(master)
        from lmm_r1_ascend.workers.builders import build_rank_workers, build_rollout_engine

        self.device = self.backend.device(0)
        self.actor, self.reference, self.critic = build_rank_workers(self.cfg, self.backend, actor_path, total_updates,
                                                                     roles=roles)
        self.rollout = None
        if colocate_rollout:
            self.rollout = build_rollout_engine(self.cfg, actor_path, self.device, self.actor.model.dtype)
        self._sync_group = None
        self._meta: list | None = None
        self._sender = None  # async modes: rank 0's weight-send thread (stage_weights)
        self._sends: list = []  # its futures, oldest first
        self._ready = None  # rank 0: where the engines say they are ready for a version (ReadyFlags)
        self._stop = threading.Event()  # set at close: a send still waiting for the engines gives up

    def _init_process_group(self, master: tuple[str, int] | None) -> None:
        import torch.distributed as dist

        from lmm_r1_ascend.kernels.collectives import init_process_group

        if dist.is_initialized():
            return
        if master is None:  # one rank in this process: a private rendezvous
            master = ("127.0.0.1", free_port())
            # DeepSpeed reads these even at world size 1 (Ray sets them for its actors)
            os.environ.update(LOCAL_RANK="0", RANK=str(self.rank), WORLD_SIZE=str(self.world_size))
        init_process_group(self.backend.distributed_backend(with_cpu=True), rank=self.rank,
                           world_size=self.world_size, init_method=f"tcp://{master[0]}:{master[1]}",
                           timeout_s=self.cfg.distributed.timeout_s)

    # ------------------------------------------------------------------ info
    def rendezvous_address(self) -> tuple[str, int]:
        """(this node's address, a free port on it): where a side group with this rank as rank 0 can meet."""
        return node_ip(), free_port()

    def sequence_parallel_info(self) -> dict[str, tuple[int, int, str] | None]:
        """{role: (SP size, rank in the SP group, mode) or None} for the models this rank hosts."""
        from lmm_r1_ascend.models.sequence_parallel import sequence_parallel_of

        out = {}
        for name, worker in (("actor", self.actor), ("reference", self.reference), ("critic", self.critic)):
            sp = sequence_parallel_of(worker.model) if worker is not None else None
            out[name] = None if sp is None else (sp.size, sp.rank, sp.mode)
        return out

    def take_peak_memory(self) -> int:
        """Bytes: this rank's peak device memory since the last call (the process's lifetime peak
        RSS on CPU, which cannot be reset), then a new window starts."""
        peak = int(self.backend.memory_stats(self.device)["peak_allocated"])
        self.backend.reset_peak_memory_stats(self.device)
        return peak

    # ------------------------------------------------------------------ forwards
    def ref_log_probs(self, batch: ExperienceBatch) -> list[torch.Tensor]:
        return self.reference.log_probs(batch)

    def critic_values(self, batch: ExperienceBatch, n_chunks: int | None = None) -> list[torch.Tensor]:
        return self.critic.values(batch, n_chunks)

    def actor_log_probs(self, batch: ExperienceBatch, n_chunks: int | None = None) -> list[torch.Tensor]:
        return self.actor.log_probs(batch, n_chunks)

    # ------------------------------------------------------------------ updates
    def train_actor(self, shard: ExperienceBatch, cfg: AlgorithmConfig, normaliser: float, n_micro: int,
                    real: bool = True, on_policy: bool = False) -> MetricSums:
        return self.actor.train_shard(shard, cfg, normaliser=normaliser, n_micro=n_micro, real=real,
                                      on_policy=on_policy)

    def train_critic(self, shard: ExperienceBatch, cfg: AlgorithmConfig, normaliser: float, n_micro: int,
                     real: bool = True) -> MetricSums:
        return self.critic.train_shard(shard, cfg, normaliser=normaliser, n_micro=n_micro, real=real)

    # ------------------------------------------------------------------ colocated rollout
    def generate(self, prompts: list, sampling) -> list:
        return self.rollout.generate(prompts, sampling)

    def rollout_sleep(self) -> None:
        if self.rollout is not None:
            self.rollout.sleep()

    def sync_weights_in_process(self) -> int:
        """Every rank gathers (ZeRO-3); rank 0 loads the full weights into its engine in place."""
        if self.actor is None:
            return 0
        if self._meta is None:  # shapes never change: one extra gather pass, the first time only
            self._meta = self.weights_meta()
        named = self.actor.named_weights(self._bucket_bytes())
        if self.rollout is None:
            for _ in named:  # take part in the gathers
                pass
            return 0
        self.rollout.wake_up()
        # With the meta the engine checks names and shapes first, then copies each gathered
        # bucket as it arrives: no rank ever holds a second full copy of the weights.
        return self.rollout.update_weights(named, meta=[(n, s) for n, s, _ in self._meta])

    # ------------------------------------------------------------------ broadcast weight sync
    def _bucket_bytes(self) -> int:
        return self.cfg.distributed.weight_sync_bucket_mb << 20

    def weights_meta(self) -> list:
        """[(name, shape, dtype)] of the weights in send order (collective under ZeRO-3)."""
        return [(name, tuple(t.shape), t.dtype) for name, t in self.actor.named_weights(self._bucket_bytes())]

    def init_weight_sync(self, host: str, port: int, world_size: int, ready_port: int) -> None:
        """Rank 0 joins the side group with the rollout engines as its rank 0 (the sender), the
        group kind the configured engine joins (RolloutEngine.sender_group), and hosts the
        engines' ready flags on ready_port (kernels/weight_sync.ReadyFlags)."""
        if self.rank != 0:
            return
        from lmm_r1_ascend.kernels.weight_sync import ReadyFlags
        from lmm_r1_ascend.rollout.registry import engine_class

        self._ready = ReadyFlags(host, ready_port, is_master=True, timeout_s=self.cfg.distributed.timeout_s)

        self._sync_group = engine_class(self.cfg.rollout.engine).sender_group(
            host, port, world_size, self.backend.distributed_backend(), self.cfg.distributed.timeout_s)

    def send_weights(self, meta: list) -> int:
        """Every rank gathers (ZeRO-3); rank 0 streams the buckets to the engines."""
        named = self.actor.named_weights(self._bucket_bytes())
        if self.rank != 0:
            for _ in named:
                pass
            return 0
        from lmm_r1_ascend.kernels.weight_sync import send_buckets

        return send_buckets(self._sync_group, meta, named, bucket_bytes=self._bucket_bytes())

    def stage_weights(self, meta: list, version: int, engines: int) -> int:
        """Async rollout: every rank gathers (ZeRO-3); rank 0 copies the full weights to host
        memory and returns at once, while a thread of its own broadcasts that copy as weight
        `version` once all `engines` engine actors say they are ready for it (they take it after
        the generations queued before it: RolloutActor.receive_weights). Training goes on
        meanwhile: the copy, not the live weights, is sent. Snapshots are sent in order, one per
        call; rank 0 holds one host copy per send the engines have not taken yet (at most
        max_staleness + 1). A failed send is raised by the next call."""
        named = self.actor.named_weights(self._bucket_bytes())
        if self.rank != 0:
            for _ in named:
                pass
            return 0
        snapshot = [(name, tensor.detach().to("cpu", copy=True)) for name, tensor in named]
        self._raise_failed_sends()  # after the gathers: the other ranks are not left inside one
        if self._sender is None:
            from concurrent.futures import ThreadPoolExecutor

            self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weight-send")
        self._sends.append(self._sender.submit(self._send_when_ready, meta, snapshot, version, engines))
        return len(snapshot)

    def _send_when_ready(self, meta: list, snapshot: list, version: int, engines: int) -> int:
        from lmm_r1_ascend.kernels.weight_sync import send_buckets

        self._ready.wait(version, engines, stop=self._stop)
        # gloo sends from host memory; nccl / hccl need each bucket on this rank's device
        device = "cpu" if self.backend.collectives_from_host else self.device
        return send_buckets(self._sync_group, meta, snapshot, bucket_bytes=self._bucket_bytes(), device=device)

    def _raise_failed_sends(self) -> None:
        while self._sends and self._sends[0].done():
            self._sends.pop(0).result()  # re-raises the send thread's error

    # ------------------------------------------------------------------ checkpoints and export
    def save(self, directory: str) -> None:
        """Weights (full, model's own names, rank 0) and engine states (every rank) into a checkpoint directory."""
        directory = Path(directory)
        for name, worker in self._trained().items():
            full = self._full_state(worker)
            if full is not None:
                torch.save(full, directory / f"{name}.pt")
            worker.engine.save(directory / f"{name}_engine")

    def load(self, directory: str) -> None:
        directory = Path(directory)
        for name, worker in self._trained().items():
            file = directory / f"{name}.pt"
            if not file.exists():
                raise FileNotFoundError(f"checkpoint {directory} has no weights for '{name}' ({file.name})")
            def full(file=file, worker=worker) -> dict:
                return add_prefix(torch.load(file, map_location="cpu", weights_only=True), _wrapper(worker).prefix)

            if not worker.engine.state_includes_weights:
                worker.engine.load_full_state_dict(full())
                worker.engine.load(directory / f"{name}_engine")
            else:  # DeepSpeed restores its weights in load(); from another world size it needs the file's buffers
                worker.engine.load(directory / f"{name}_engine", full_weights=full)

    def export_hf(self, path: str) -> None:
        from lmm_r1_ascend.workers.builders import save_hf_model

        trained = self._trained()
        states = {name: self._full_state(worker) for name, worker in trained.items()}
        if self.rank != 0:  # rank 0 holds the gathered weights
            return
        if "actor" in trained:
            save_hf_model(self.actor.model, Path(path), state_dict=states["actor"])
        if "critic" in trained:
            save_hf_model(self.critic.model, Path(path).parent / "critic", state_dict=states["critic"])

    def _full_state(self, worker) -> dict[str, torch.Tensor] | None:
        """Rank 0: the full weights on the host under the model's own names; other ranks take part
        in the bucket-by-bucket gathers (ZeRO-3) and keep nothing (None)."""
        prefix = _wrapper(worker).prefix
        out: dict[str, torch.Tensor] = {}
        for name, tensor in worker.engine.iter_full_weights(self._bucket_bytes()):
            if self.rank == 0:
                out[name] = tensor.to("cpu", copy=True)
        return strip_prefix(out, prefix) if self.rank == 0 else None

    def _trained(self) -> dict:
        workers = {"actor": self.actor, "critic": self.critic}
        return {name: worker for name, worker in workers.items() if worker is not None}

    def close(self) -> None:
        if self._sender is not None:  # a send no engine will take must not keep the process alive
            self._stop.set()
            self._sender.shutdown(wait=False, cancel_futures=True)
            self._sender = None
        if self.rollout is not None:
            self.rollout.close()
            self.rollout = None
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
