"""A WorkerGroup of Ray actors: one per rank, each in its own placement-group bundle.

Bundles ask for the backend's Ray resource (its `ray_actor_options`: num_gpus for CUDA,
the "NPU" resource for Ascend, nothing on CPU) plus CPU cores, so Ray itself sets each
actor's visible devices
(CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES) and every actor sees its one device as
local index 0. Each actor's environment also carries the backend's worker variables
(DS_ACCELERATOR, ...) and the rank's MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE.

Failures: results are awaited with ray.wait, so the first rank that dies or raises is
reported at once, instead of waiting for ranks stuck in a collective with it; the group
is then killed (stuck ranks would otherwise hang until the collective timeout).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from lmm_r1_ascend.distributed.worker_group import WorkerDiedError, WorkerGroup


def ray_init(address: str = "", *, num_cpus: int | None = None) -> None:
    """Join (address "auto" or "ray://...") or start (address "") a Ray instance, once per process.

    num_cpus: logical CPUs of a locally started instance (Ray's CPU count only steers
    placement; the project sizes it to the ranks it will place, so a 2-core machine can
    host 2 training ranks plus a rollout engine)."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": True, "include_dashboard": False}
    if address:
        kwargs["address"] = address
    elif num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    # The workers import this project from the same environment; the repository checkout
    # (editable install) is on every node through the shared filesystem or the image.
    kwargs["runtime_env"] = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}
    ray.init(**kwargs)


class RayWorkerGroup(WorkerGroup):
    """worker_cls: a plain class; its constructor gets (*args, rank=r, world_size=n, **kwargs, **per_rank_kwargs[r]).

    actor_options: the backend's `ray_actor_options(devices per rank)` ({}: CPU cores only).
    env: extra environment for every rank; master: add MASTER_ADDR/PORT/RANK/WORLD_SIZE (rank 0's node).
    """

    def __init__(self, worker_cls: type, world_size: int, *, name: str, args: tuple = (), kwargs: dict | None = None,
                 per_rank_kwargs: Sequence[dict] | None = None, actor_options: dict[str, Any] | None = None,
                 cpus_per_rank: float = 1, env: dict[str, str] | None = None,
                 strategy: str = "PACK", master: bool = True, ready_timeout_s: float = 600):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.name, self.world_size = name, world_size
        actor_options = dict(actor_options or {})
        bundle = {"CPU": cpus_per_rank, **device_bundle(actor_options)}
        check_resources({k: v * world_size for k, v in bundle.items()}, f"worker group '{name}'")
        self.placement_group = placement_group([dict(bundle) for _ in range(world_size)], strategy=strategy,
                                               name=f"lmm_r1_{name}_{os.getpid()}")
        ready, _ = ray.wait([self.placement_group.ready()], timeout=ready_timeout_s)
        if not ready:
            ray.util.remove_placement_group(self.placement_group)
            raise RuntimeError(f"worker group '{name}': Ray could not place {world_size} x {bundle} within "
                               f"{ready_timeout_s:.0f} s (available: {_plain(ray.available_resources())}); "
                               "start more nodes with `ray start`, or lower distributed.world_size")
        remote_cls = ray.remote(worker_cls)
        self._where: list[str] = []
        self.actors = []
        master_env: dict[str, str] = {}
        for rank in range(world_size):
            opts: dict[str, Any] = {
                "num_cpus": cpus_per_rank,
                "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    placement_group=self.placement_group, placement_group_bundle_index=rank),
                "name": f"lmm_r1_{name}_{os.getpid()}_rank{rank}",
                "max_restarts": 0,
                **actor_options,
            }
            rank_env = dict(env or {})
            if master:
                if rank == 0:
                    master_env = self._rendezvous(opts)
                rank_env.update(master_env, RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0")
            opts["runtime_env"] = {"env_vars": rank_env}
            rk = dict(kwargs or {}, **(per_rank_kwargs[rank] if per_rank_kwargs else {}))
            if master:
                rk["master"] = (master_env["MASTER_ADDR"], int(master_env["MASTER_PORT"]))
            self.actors.append(remote_cls.options(**opts).remote(*args, rank=rank, world_size=world_size, **rk))
            self._where.append(f"bundle {rank}")
        wait_all([(self, r, a.__ray_ready__.remote(), "__init__") for r, a in enumerate(self.actors)],
                 timeout=ready_timeout_s)
        self._where = [self._describe(rank) for rank in range(world_size)]

    @staticmethod
    def _rendezvous(opts: dict) -> dict[str, str]:
        """MASTER_ADDR/PORT on the node rank 0 will run on (a task in rank 0's bundle picks them)."""
        import ray

        from lmm_r1_ascend.distributed.net import free_port, node_ip

        probe = ray.remote(lambda: (node_ip(), free_port()))
        task_opts = {k: v for k, v in opts.items() if k in ("scheduling_strategy",)}
        ip, port = ray.get(probe.options(num_cpus=0, **task_opts).remote())
        return {"MASTER_ADDR": ip, "MASTER_PORT": str(port)}

    def _describe(self, rank: int) -> str:
        try:
            import ray

            node, pid = ray.get(self.actors[rank].__ray_call__.remote(
                lambda self: (ray.get_runtime_context().get_node_id()[:8], os.getpid())), timeout=30)
            return f"node {node}, pid {pid}"
        except Exception:  # description only: never mask the real error
            return f"bundle {rank}"

    # ------------------------------------------------------------------ calls
    def submit(self, method: str, args_per_rank: Sequence[tuple | None], **kwargs: Any) -> list[tuple]:
        """Start worker[r].method(*args) on every rank whose args are not None; [(group, rank, ref, method)]."""
        if len(args_per_rank) != self.world_size:
            raise ValueError(f"{len(args_per_rank)} argument tuples for {self.world_size} ranks")
        if not self.actors:
            raise RuntimeError(f"worker group '{self.name}' is closed")
        return [(self, rank, getattr(actor, method).remote(*args, **kwargs), method)
                for rank, (actor, args) in enumerate(zip(self.actors, args_per_rank)) if args is not None]

    def call_each(self, method: str, args_per_rank: Sequence[tuple], **kwargs: Any) -> list[Any]:
        pending = self.submit(method, args_per_rank, **kwargs)
        out: list[Any] = [None] * self.world_size
        for (_, rank, _, _), value in zip(pending, wait_all(pending)):
            out[rank] = value
        return out

    def first_dead(self, grace_s: float = 5.0) -> WorkerDiedError | None:
        """The first rank whose process is gone (each is probed), or None: for an error seen
        elsewhere (a peer's failed collective) that a dead rank of this group may have caused.
        Only when the controller has no call of its own in flight on this group."""
        probes = [(self, rank, actor.__ray_ready__.remote(), "stage_weights") for rank, actor in enumerate(self.actors)]
        return _first_dead([p[2] for p in probes], {p[2]: p for p in probes}, grace_s)

    def where(self, rank: int) -> str:
        return self._where[rank] if rank < len(self._where) else f"bundle {rank}"

    def close(self) -> None:
        import ray

        for actor in getattr(self, "actors", []):
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already dead
                pass
        self.actors = []
        pg = getattr(self, "placement_group", None)
        if pg is not None:
            try:
                ray.util.remove_placement_group(pg)
            except Exception:
                pass
            self.placement_group = None


def device_bundle(actor_options: dict[str, Any]) -> dict[str, float]:
    """The placement-group bundle entries the device part of Ray actor options needs:
    {"num_gpus": n} -> {"GPU": n}; {"resources": {"NPU": n}} -> {"NPU": n}; {} -> {}."""
    unknown = set(actor_options) - {"num_gpus", "resources"}
    if unknown:
        raise ValueError(f"actor_options may hold num_gpus and resources only, got {sorted(unknown)}")
    bundle = dict(actor_options.get("resources") or {})
    if actor_options.get("num_gpus"):
        bundle["GPU"] = actor_options["num_gpus"]
    return bundle


def _plain(resources: dict) -> dict:
    """Resources a user asks for (CPU, GPU, NPU, memory...), without Ray's internal node: and
    placement-group entries."""
    return {k: v for k, v in sorted(resources.items())
            if not k.startswith("node:") and "_group_" not in k and k != "object_store_memory"}


def check_resources(demand: dict[str, float], what: str) -> None:
    """Fail at once, naming what is missing, when the cluster's AVAILABLE resources cannot hold
    `demand` (waiting for a placement that can never happen would take the whole timeout)."""
    import ray

    free = ray.available_resources()
    short = {k: v for k, v in demand.items() if free.get(k, 0) + 1e-9 < v}
    if short:
        raise RuntimeError(f"{what} needs {demand} but the Ray cluster has {_plain(free)} available "
                           f"(short of {short}): add nodes (`ray start --address=...`), or lower "
                           "distributed.world_size / rollout_engines / cpus_per_rank / colocate_models")


def wait_all(pending: list[tuple], *, timeout: float | None = None) -> list[Any]:
    """Results of [(group, rank, ref, method)] in order. The first rank that dies raises
    WorkerDiedError and the first that raises re-raises its error; either way every group
    involved is closed first, so ranks stuck in a collective with it do not hang on."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    by_ref = {entry[2]: entry for entry in pending}
    waiting = list(by_ref)
    while waiting:
        done, waiting = ray.wait(waiting, num_returns=1, timeout=timeout)
        groups = list({id(e[0]): e[0] for e in pending}.values())
        if not done:
            methods = sorted({e[3] for e in pending})
            for g in groups:
                g.close()
            raise GetTimeoutError(f"{', '.join(methods)} did not finish within {timeout} s")
        try:
            ray.get(done[0])
        except RayActorError as err:
            group, rank, _, method = by_ref[done[0]]
            where = group.where(rank)
            for g in groups:
                g.close()
            raise WorkerDiedError(group.name, rank, method, where, _first_line(err)) from None
        except BaseException:
            # A rank's collective can fail before Ray reports the peer whose death caused it:
            # give the others a moment and report a dead rank first when there is one.
            died = _first_dead(waiting, by_ref)
            for g in groups:
                g.close()
            if died is not None:
                raise died from None
            raise
    return ray.get([e[2] for e in pending])


def _first_dead(refs: list, by_ref: dict, grace_s: float = 5.0) -> WorkerDiedError | None:
    import ray
    from ray.exceptions import RayActorError

    done, _ = ray.wait(refs, num_returns=len(refs), timeout=grace_s) if refs else ([], [])
    for ref in done:
        try:
            ray.get(ref)
        except RayActorError as err:
            group, rank, _, method = by_ref[ref]
            return WorkerDiedError(group.name, rank, method, group.where(rank), _first_line(err))
        except BaseException:
            continue
    return None


def gather_calls(calls: list[tuple[RayWorkerGroup, str, list]]) -> list[list[Any]]:
    """Start each (group, method, args_per_rank) at once, then wait for all; per call, results in rank order."""
    submitted = [group.submit(method, args) for group, method, args in calls]
    flat = wait_all([entry for pending in submitted for entry in pending])
    out, k = [], 0
    for (group, _, _), pending in zip(calls, submitted):
        res: list[Any] = [None] * group.world_size
        for entry in pending:
            res[entry[1]] = flat[k]
            k += 1
        out.append(res)
    return out


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    for line in text:
        if line.strip() and "Traceback" not in line:
            return line.strip()[:300]
    return type(err).__name__
