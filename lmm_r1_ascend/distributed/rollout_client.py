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
import time
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from lmm_r1_ascend.config import TrainConfig, to_dict
from lmm_r1_ascend.config.schema import RolloutConfig
from lmm_r1_ascend.distributed.ray_group import RayWorkerGroup, gather_calls, wait_all
from lmm_r1_ascend.distributed.worker_group import WorkerDiedError, WorkerGroup
from lmm_r1_ascend.data.types import PromptItem
from lmm_r1_ascend.rollout.base import RolloutSample, SamplingConfig
from lmm_r1_ascend.rollout.registry import engine_class


@runtime_checkable
class RolloutClient(Protocol):
    """What the controller generates and syncs weights through: `InProcessRollout` or
    `RemoteRollout` (which also offers submit / collect / push_weights to the async rollout).

    version: the trainer weight version the engines hold (0 when updated in place)."""

    version: int

    def describe(self) -> str:
        """One line for the run header: which engine, where, how weights reach it."""

    def generate(self, prompts: list[PromptItem], sampling: SamplingConfig) -> list[RolloutSample]:
        """len(prompts) * sampling.n samples, prompt-major (RolloutEngine.generate's contract)."""

    def sync_weights(self) -> int:
        """Bring the actor's current weights to every engine; the number of tensors loaded."""

    def metrics(self) -> dict[str, float]:
        """This client's per-step figures (e.g. engine idle time); {} when it has none."""

    def close(self) -> None:
        """Release the engines this client owns."""


def staleness_bound(rollout_cfg: RolloutConfig) -> int:
    """Weight versions a sample may lag the trainer: 0 (rollout.async_mode=sync), 1
    (one_step_off), rollout.max_staleness (bounded)."""
    return {"sync": 0, "one_step_off": 1}.get(rollout_cfg.async_mode, rollout_cfg.max_staleness)


def engine_chunks(n_prompts: int, n_engines: int, world_size: int, sampling) -> list[tuple | None]:
    """Per rank of a `world_size` group: (start, end, sampling) for the first min(n_engines,
    n_prompts) ranks (contiguous prompt chunks; rank k samples with seed + k, so rank 0 alone
    reproduces a single engine's run), None for the others."""
    k_engines = min(n_engines, n_prompts)
    bounds = [round(i * n_prompts / k_engines) for i in range(k_engines + 1)]
    out: list[tuple | None] = []
    for k in range(world_size):
        seed = None if sampling.seed is None else sampling.seed + k
        out.append((bounds[k], bounds[k + 1], dataclasses.replace(sampling, seed=seed)) if k < k_engines else None)
    return out


def merge_chunks(chunks: list[tuple | None], results: list) -> list:
    """The samples of every chunk in rank order, prompt indices made global."""
    samples = []
    for chunk, part in zip(chunks, results):
        if chunk is not None:
            samples += [dataclasses.replace(s, prompt_index=s.prompt_index + chunk[0]) for s in part]
    return samples


def split_generate(group: WorkerGroup, engine_ranks: int, prompts: list, sampling) -> list:
    """Contiguous prompt chunks over the first `engine_ranks` ranks of `group` (engine_chunks)."""
    chunks = engine_chunks(len(prompts), engine_ranks, group.world_size, sampling)
    results = group.call_each("generate", [None if c is None else (prompts[c[0]:c[1]], c[2]) for c in chunks])
    return merge_chunks(chunks, results)


class InProcessRollout:
    """every_rank: an engine in each training rank (else in rank 0 only). Always synchronous:
    its engines are the ranks' own, updated in place (version stays 0: nothing is ever stale)."""

    version = 0

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

    def metrics(self) -> dict[str, float]:  # engines and ranks share the processes: no idle figures
        return {}

    def close(self) -> None:  # the engines belong to the ranks and close with them
        pass


@dataclass
class PendingGeneration:
    """A generate() submitted to the engine actors and not collected yet."""

    chunks: list[tuple | None]
    entries: list[tuple]  # the engines' (group, rank, ref, method), from RayWorkerGroup.submit
    receives: list[tuple]  # weight receives submitted before it (done by the time it is)


@dataclass
class GenerationMeter:
    """Where the time goes with engine actors: each engine's generation time (from the actor's
    clock) and the controller's waits for generation, as fractions of the time since the first
    generate. An engine's window ends now when it has nothing in flight, else at its latest
    return (an actor runs one call at a time: every interval before that return is known), so
    both fractions are exact on one host (across hosts, as good as the clocks' agreement).
    Weight receives count as engine idle; held-out evaluation counts as generation."""

    engines: int
    start: float | None = None
    busy_s: list[float] = field(default_factory=list)
    last_end: list[float] = field(default_factory=list)
    wait_s: float = 0.0

    def begin(self, now: float | None = None) -> None:
        if self.start is None:
            self.start = time.time() if now is None else now
            self.busy_s, self.last_end = [0.0] * self.engines, [self.start] * self.engines

    def record(self, rank: int, begin: float, end: float) -> None:
        self.busy_s[rank] += end - begin
        self.last_end[rank] = max(self.last_end[rank], end)

    def metrics(self, in_flight: list[bool], now: float | None = None) -> dict[str, float]:
        """rollout/engine_idle_frac: 1 - generation time / its window, averaged over engines;
        rollout/trainer_idle_frac: the controller's waits for generation (the ranks have nothing
        to do meanwhile) / the time since the first generate. in_flight[k]: engine k has a
        generation submitted and not collected."""
        if self.start is None:
            return {}
        now = time.time() if now is None else now
        idle = []
        for busy, end, flying in zip(self.busy_s, self.last_end, in_flight):
            window = (end if flying else now) - self.start
            if window > 0:
                idle.append(1 - busy / window)
        out = {"rollout/trainer_idle_frac": self.wait_s / max(now - self.start, 1e-9)}
        if idle:
            out["rollout/engine_idle_frac"] = sum(idle) / len(idle)
        return out


class RemoteRollout:
    """engines: a WorkerGroup of RolloutActor; train: the training ranks (rank 0 sends weights).
    version: the trainer weight version the engines were last sent (pushes so far)."""

    def __init__(self, engines: WorkerGroup, train: WorkerGroup, cfg: TrainConfig, processes_per_engine: int):
        self.engines, self.train, self.cfg = engines, train, cfg
        self.bucket_bytes = cfg.distributed.weight_sync_bucket_mb << 20
        host, port = train.call_rank(0, "rendezvous_address")
        ready_port = port
        while ready_port == port:  # the engines' ready flags (kernels/weight_sync.ReadyFlags)
            ready_port = train.call_rank(0, "rendezvous_address")[1]
        world = 1 + engines.world_size * processes_per_engine
        offsets = [(host, port, 1 + k * processes_per_engine, world, ready_port) for k in range(engines.world_size)]
        gather_calls([(train, "init_weight_sync", [(host, port, world, ready_port)] * train.world_size),
                       (engines, "init_weight_sync", offsets)])
        self.meta = train.call("weights_meta")[0]
        self.version = 0
        self.meter = GenerationMeter(engines.world_size)
        self.last_generation_s = 0.0  # the latest collected generation's duration (its slowest engine)
        self._receives: list[tuple] = []  # pushed weights the engines have not been seen to take
        self._in_flight = [0] * engines.world_size  # generations submitted and not collected, per engine

    def describe(self) -> str:
        r = self.cfg.rollout
        mode = "" if r.async_mode == "sync" else f", async {r.async_mode} (staleness <= {staleness_bound(r)})"
        return (f"{self.engines.world_size} {r.engine} engine actor(s), broadcast weight sync "
                f"({self.cfg.distributed.weight_sync_bucket_mb} MB buckets){mode}")

    def metrics(self) -> dict[str, float]:
        return self.meter.metrics([n > 0 for n in self._in_flight])

    def submit(self, prompts: list, sampling) -> PendingGeneration:
        """Start generating on the engines (contiguous prompt chunks, engine k with seed + k) and
        return at once; each engine runs it after what it was given before (weights included)."""
        self.meter.begin()
        chunks = engine_chunks(len(prompts), self.engines.world_size, self.engines.world_size, sampling)
        entries = self.engines.submit("generate_timed", [None if c is None else (prompts[c[0]:c[1]], c[2])
                                                         for c in chunks])
        for entry in entries:
            self._in_flight[entry[1]] += 1
        return PendingGeneration(chunks, entries, list(self._receives))

    def collect(self, pending: PendingGeneration) -> list:
        """The samples of a submitted generation (waiting for them). A dead engine raises
        WorkerDiedError; so does a dead training rank when the engines' weight receive failed
        because of it (rank 0 sends while the controller waits here)."""
        start = time.time()
        try:
            results = wait_all(pending.receives + pending.entries)[len(pending.receives):]
        except WorkerDiedError:
            raise
        except Exception:
            died = self.train.first_dead() if isinstance(self.train, RayWorkerGroup) else None
            if died is not None:
                raise died from None
            raise
        self.meter.wait_s += time.time() - start
        taken = {id(e) for e in pending.receives}
        self._receives = [e for e in self._receives if id(e) not in taken]
        parts: list = [None] * self.engines.world_size
        durations = []
        for (_, rank, _, _), (samples, begin, end) in zip(pending.entries, results):
            parts[rank] = samples
            self.meter.record(rank, begin, end)
            self._in_flight[rank] -= 1
            durations.append(end - begin)
        self.last_generation_s = max(durations, default=0.0)
        return merge_chunks(pending.chunks, parts)

    def generate(self, prompts: list, sampling) -> list:
        return self.collect(self.submit(prompts, sampling))

    def sync_weights(self) -> int:
        """Send the actor's weights and wait until every engine has them (sync mode, resume)."""
        self.version += 1
        n = self.engines.world_size
        counts = gather_calls([(self.train, "send_weights", [(self.meta,)] * self.train.world_size),
                                (self.engines, "receive_weights", [(self.meta, self.bucket_bytes, self.version)] * n)])
        return counts[0][0]

    def push_weights(self) -> int:
        """Async modes: the ranks stage the weights (rank 0 copies them to host memory and sends
        from a thread, TrainRank.stage_weights) and training goes on at once; every engine takes
        them after the generation it is running, so what is submitted from now on samples with
        them (version + 1)."""
        self._check_receives()
        self.version += 1
        count = self.train.call("stage_weights", self.meta, self.version, self.engines.world_size)[0]
        self._receives += self.engines.submit("receive_weights", [(self.meta, self.bucket_bytes, self.version)]
                                              * self.engines.world_size)
        return count

    def _check_receives(self) -> None:
        """Raise now (WorkerDiedError for a dead engine) if an earlier push's receive failed:
        pushes are not waited for, and without a next generation nothing else would notice."""
        import ray

        refs = [e[2] for e in self._receives]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])
        finished = [e for e in self._receives if e[2] in set(done)]
        if finished:
            wait_all(finished)
            self._receives = [e for e in self._receives if e not in finished]

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
        self._ready = None  # ReadyFlags client: says when this engine is about to receive a version
        self.version = 0  # the trainer weight version this engine holds (RolloutSample.weight_version)

    def generate(self, prompts: list, sampling) -> list:
        return [dataclasses.replace(s, weight_version=self.version) for s in self.engine.generate(prompts, sampling)]

    def generate_timed(self, prompts: list, sampling) -> tuple[list, float, float]:
        """(samples, start, end): generate() and when it ran (time.time() of this process)."""
        begin = time.time()
        samples = self.generate(prompts, sampling)
        return samples, begin, time.time()

    def init_weight_sync(self, host: str, port: int, rank_offset: int, world_size: int, ready_port: int) -> None:
        from lmm_r1_ascend.kernels.weight_sync import ReadyFlags

        self.engine.join_weight_sync(host, port, rank_offset, world_size, self.backend.distributed_backend(),
                                     self.cfg.distributed.timeout_s)
        self._ready = ReadyFlags(host, ready_port, is_master=False, timeout_s=self.cfg.distributed.timeout_s)

    def receive_weights(self, meta: list, bucket_bytes: int, version: int) -> int:
        """Receive weight `version` (the sender waits for every engine's ready flag, then sends)."""
        self._ready.announce(version)
        count = self.engine.receive_weights(meta, bucket_bytes)
        self.version = version
        return count

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

