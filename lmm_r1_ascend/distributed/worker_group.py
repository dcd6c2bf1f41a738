"""Worker groups: N copies of one worker class, one per rank, called method by method.

`LocalWorkerGroup` holds the workers in this process (distributed.mode=local);
`RayWorkerGroup` (ray_group.py) holds one Ray actor per rank. Both run the calls of one
`call` concurrently across ranks (collectives inside the workers need every rank at
once) and return the results in rank order. A rank that dies surfaces as
`WorkerDiedError`, naming the group, the rank, where it ran and what it was doing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any


class WorkerDiedError(RuntimeError):
    """A rank's process is gone (killed, out of memory, node lost). The run cannot go on."""

    def __init__(self, group: str, rank: int, method: str, where: str, cause: str, hint: str = ""):
        self.group, self.rank, self.method, self.where, self.cause = group, rank, method, where, cause
        msg = f"worker '{group}' rank {rank} ({where}) died during {method}(): {cause.rstrip('.')}"
        super().__init__(f"{msg}. {hint}" if hint else msg)

    def with_hint(self, hint: str) -> WorkerDiedError:
        """The same error with what to do next appended (e.g. the checkpoint to resume from)."""
        return WorkerDiedError(self.group, self.rank, self.method, self.where, self.cause, hint)


class WorkerGroup(ABC):
    """name: for messages ("train", "rollout"); world_size: ranks."""

    name: str
    world_size: int

    @abstractmethod
    def call_each(self, method: str, args_per_rank: Sequence[tuple], **kwargs: Any) -> list[Any]:
        """worker[r].method(*args_per_rank[r], **kwargs) on every rank at once; results in rank order."""

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """The same call on every rank."""
        return self.call_each(method, [args] * self.world_size, **kwargs)

    def call_rank(self, rank: int, method: str, *args: Any, **kwargs: Any) -> Any:
        """One rank only (must not start a collective)."""
        return self.call_each(method, [args if r == rank else None for r in range(self.world_size)], **kwargs)[rank]

    @abstractmethod
    def close(self) -> None:
        """Release the workers (idempotent)."""


class LocalWorkerGroup(WorkerGroup):
    """Workers in this process. With more than one, calls run one after another, so only
    world size 1 may use collectives (which is what distributed.mode=local allows)."""

    def __init__(self, workers: Sequence[Any], name: str = "train"):
        if not workers:
            raise ValueError("a worker group needs at least one worker")
        self.workers, self.name, self.world_size = list(workers), name, len(workers)

    def call_each(self, method: str, args_per_rank: Sequence[tuple], **kwargs: Any) -> list[Any]:
        if len(args_per_rank) != self.world_size:
            raise ValueError(f"{len(args_per_rank)} argument tuples for {self.world_size} ranks")
        return [None if args is None else getattr(w, method)(*args, **kwargs)
                for w, args in zip(self.workers, args_per_rank)]

    def close(self) -> None:
        for worker in self.workers:
            close = getattr(worker, "close", None)
            if close is not None:
                close()
        self.workers = []
