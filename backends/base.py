"""The device seam: one small `Backend` per device, answering what the core needs.

A backend is chosen once (see `registry.get_backend`) and passed down. The core asks it
for its torch device, its collective-backend string, its Ray resource and actor options,
its kernel set, and nothing else device-specific. Keep this interface small (vLLM's
platform class is the model, not DeepSpeed's ever-growing accelerator).

The kernel set (`KernelSet`) holds only the ops the core calls through the backend:
attention, decode-step attention, log-probs and fused ops. Packing is device-neutral and imported directly
(kernels/packing.py); collectives follow `distributed_backend()`.
"""

from __future__ import annotations

import os
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Callable, ClassVar, Iterator, Sequence

import torch

# Variables every backend cares about; each backend adds its own.
COMMON_ENV_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "DS_ACCELERATOR", "LMM_R1_DEVICE")


class BackendUnavailable(RuntimeError):
    """The requested device cannot be used here. The message is one line meant for users."""


@dataclass(frozen=True)
class KernelChoice:
    """Which implementation of one op a backend uses, and why.

    `rejected` lists the better candidates that were tried first, each with the reason
    it could not be used, so `doctor` can print the whole fallback chain. `candidates`
    names every implementation the backend knows for this op, in order of preference.
    """

    op: str
    name: str
    reason: str
    rejected: tuple[tuple[str, str], ...] = ()
    fn: Callable | None = field(default=None, compare=False, repr=False)
    candidates: tuple[str, ...] = field(default=(), compare=False)

    def describe(self) -> str:
        text = f"{self.op}: {self.name} ({self.reason})"
        for name, why in self.rejected:
            text += f"; not {name}: {why}"
        return text


def choose(op: str, candidates: Sequence[tuple[str, Callable[[], tuple[bool, str]], Callable | None]],
           override: str | None = None) -> KernelChoice:
    """Pick the first usable candidate, recording why each earlier one was rejected.

    candidates: (name, probe, fn) in order of preference; probe() -> (usable, reason).
    override: a name the user forced (e.g. attention=reference for debugging); forcing an
    unusable or unknown implementation is an error, not a silent fallback.
    """
    names = [c[0] for c in candidates]
    if override is not None:
        for name, probe, fn in candidates:
            if name == override:
                ok, why = probe()
                if not ok:
                    raise BackendUnavailable(f"{op} implementation '{override}' was requested but cannot be used: {why}")
                return KernelChoice(op, name, f"requested explicitly; {why}", (), fn, tuple(names))
        raise ValueError(f"unknown {op} implementation '{override}' for this backend; choose one of {names}")
    rejected: list[tuple[str, str]] = []
    for name, probe, fn in candidates:
        ok, why = probe()
        if ok:
            return KernelChoice(op, name, why, tuple(rejected), fn, tuple(names))
        rejected.append((name, why))
    raise BackendUnavailable(f"no usable {op} implementation among {names}: " + "; ".join(f"{n}: {w}" for n, w in rejected))


@dataclass(frozen=True)
class KernelSet:
    """The kernels the core calls, as one backend chose them (one `KernelChoice` per op).

    attention.fn: varlen attention (contract in kernels/attention.py), registered for the
        text decoder by models.loading.
    decode_attention.fn: generation's decode steps (one new token per sequence against the
        KV cache, unpacked; contract in kernels/decode_attention.py), registered for the hf
        rollout engine's model by its from_config; None leaves them to transformers' SDPA path.
    logprobs.fn: token log-probs / entropies from hidden states and the output head
        (contract in kernels/logprobs.py: hidden (N, H), weight (V, H), labels (N,) ->
        float32 (N,) [, entropy (N,)]), called by models.forward.packed_log_probs.
    fused_ops.fn: model -> None swapping in fused modules, or None when there are none.

    Iterate it for every choice in order (doctor, parity stamp).
    """

    attention: KernelChoice
    decode_attention: KernelChoice
    logprobs: KernelChoice
    fused_ops: KernelChoice

    def __post_init__(self) -> None:
        for f in fields(self):
            choice = getattr(self, f.name)
            if not isinstance(choice, KernelChoice) or choice.op != f.name:
                raise TypeError(f"KernelSet.{f.name} must be a KernelChoice for op '{f.name}', got {choice!r}")

    def __iter__(self) -> Iterator[KernelChoice]:
        return (getattr(self, op) for op in KERNEL_OPS)


# The kernel ops a backend chooses implementations for, in KernelSet order.
KERNEL_OPS = tuple(f.name for f in fields(KernelSet))


def check_overrides(overrides: dict[str, str] | None) -> dict[str, str]:
    """`overrides` as a dict, refusing ops the kernel set has not (a typo must not be ignored)."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(KERNEL_OPS))
    if unknown:
        raise ValueError(f"kernel override for unknown op(s) {unknown}; the ops are {list(KERNEL_OPS)}")
    return overrides


class Backend(ABC):
    """What the core needs to know about one kind of device.

    Class attributes are static facts; methods query or change the runtime.
    """

    name: ClassVar[str]
    device_type: ClassVar[str]               # torch device type tensors live on
    dist_backend: ClassVar[str]              # torch.distributed backend for device tensors
    ray_resource: ClassVar[str | None]       # Ray resource per rank ("GPU", "NPU") or None = CPU bundles
    visible_devices_env: ClassVar[str | None]
    ds_accelerator: ClassVar[str]            # value for DS_ACCELERATOR (DeepSpeed must not auto-detect)
    weight_sync_transports: ClassVar[tuple[str, ...]]  # best first
    env_vars: ClassVar[tuple[str, ...]] = ()  # reported by doctor
    # Passed from the controller to every Ray worker as the controller has them (a subset of
    # env_vars): a Ray worker inherits its node's raylet environment, not the controller's, so on a
    # `ray start` cluster a setting exported before the launch would otherwise never reach the ranks.
    forwarded_env_vars: ClassVar[tuple[str, ...]] = ()
    default_dtype: ClassVar[torch.dtype] = torch.bfloat16
    # Facts the memory planner (lmm_r1_ascend.plan) reads from the class, so that a run can be
    # planned for a device this machine does not have.
    runtime_overhead_gb: ClassVar[float] = 0.6  # per-rank process / context memory beyond tensors (typical)
    offload_is_device_memory: ClassVar[bool] = False  # DeepSpeed's "host" offload lands in the device's own memory
    # What results on this backend are not (an emulation says so in every parity stamp); None: real device.
    emulation_note: ClassVar[str | None] = None
    # The process-group backend sends from host memory (gloo): buckets stay on the CPU, not the device.
    collectives_from_host: ClassVar[bool] = False

    # ---- availability -------------------------------------------------------------
    @classmethod
    @abstractmethod
    def probe(cls) -> tuple[bool, str]:
        """(usable here, one-line reason). Must not raise."""

    # ---- devices --------------------------------------------------------------------
    def device(self, local_rank: int = 0) -> torch.device:
        """The torch device for a process's local rank (index checked against the count)."""
        count = self.device_count()
        if local_rank < 0 or (count and local_rank >= count):
            raise ValueError(f"local rank {local_rank} out of range: {self.name} has {count} device(s) visible")
        return torch.device(self.device_type, local_rank)

    @abstractmethod
    def device_count(self) -> int: ...

    def rng_device_type(self) -> str | None:
        """The device type whose random generators a checkpoint saves beside the host's
        (torch.get_device_module(type).get_rng_state_all); None: the host generator is the only one."""
        return self.device_type

    def distributed_backend(self, with_cpu: bool = False) -> str:
        """The process-group backend string; with_cpu adds gloo for CPU tensors (mixed group)."""
        if with_cpu and self.dist_backend != "gloo":
            return f"cpu:gloo,{self.device_type}:{self.dist_backend}"
        return self.dist_backend

    def ray_actor_options(self, devices_per_rank: float) -> dict:
        """Options for Ray's `.options(...)` that give one actor `devices_per_rank` devices.

        Default: the backend's custom Ray resource ({"resources": {"NPU": n}}), or {} when
        it has none (CPU: bundles hold CPU cores only). CUDA overrides it: Ray counts GPUs
        through `num_gpus`, never as a custom resource.
        """
        if not self.ray_resource:
            return {}
        if devices_per_rank <= 0:
            raise ValueError(f"devices_per_rank must be > 0, got {devices_per_rank}")
        return {"resources": {self.ray_resource: devices_per_rank}}

    def worker_env(self, visible_devices: Sequence[int] | None = None) -> dict[str, str]:
        """Environment a worker process of this backend needs (DeepSpeed accelerator, visible
        devices) and the controller's values of `forwarded_env_vars`."""
        env = {name: os.environ[name] for name in self.forwarded_env_vars if name in os.environ}
        env.update({"DS_ACCELERATOR": self.ds_accelerator, "LMM_R1_DEVICE": self.name})
        if visible_devices is not None and self.visible_devices_env:
            env[self.visible_devices_env] = ",".join(str(int(d)) for d in visible_devices)
        return env

    # ---- memory and sync ------------------------------------------------------------
    @abstractmethod
    def memory_stats(self, device: torch.device | None = None) -> dict[str, int]:
        """Bytes: at least `allocated` and `peak_allocated` (process RSS on CPU)."""

    def reset_peak_memory_stats(self, device: torch.device | None = None) -> None:
        """Start a new `peak_allocated` window (e.g. per training step).

        No-op on CPU: the CPU peak is the process's lifetime maximum RSS (getrusage), which
        cannot be reset, so on CPU `peak_allocated` only ever grows.
        """

    def empty_cache(self) -> None:
        """Return cached allocator blocks to the device (no-op on CPU)."""

    def synchronize(self, device: torch.device | None = None) -> None:
        """Wait for queued device work (no-op on CPU)."""

    # ---- reproducibility --------------------------------------------------------------
    def seed_everything(self, seed: int) -> None:
        """Seed Python, NumPy and torch (every device's generator)."""
        random.seed(seed)
        os.environ["PYTHONHASHSEED"] = str(seed)
        try:
            import numpy as np

            np.random.seed(seed % 2**32)
        except ImportError:  # numpy is a dependency, but seeding must never be the failure
            pass
        torch.manual_seed(seed)

    def set_deterministic(self, enabled: bool = True) -> None:
        """Ask for bitwise-reproducible kernels (slower). Subclasses add device switches."""
        torch.use_deterministic_algorithms(enabled, warn_only=True)

    # ---- kernels ------------------------------------------------------------------------
    @abstractmethod
    def select_kernels(self, overrides: dict[str, str] | None = None,
                       dtype: torch.dtype | None = None) -> KernelSet:
        """The kernel set for a model of `dtype` (None: unknown); overrides: {op: name} forces
        an implementation by name (unknown name: ValueError; unusable: BackendUnavailable)."""

    def sequence_parallel_kernels(self, kernels: KernelSet | None = None) -> dict[str, KernelChoice]:
        """{mode: choice} for sequence_parallel_mode ring and ulysses, over this backend's own varlen
        kernel (``kernels.attention``, chosen by select_kernels when not given). Each fn has the
        signature fn(q, k, v, shard, *, group, scale) of kernels/ring_attention and kernels/ulysses
        (attention_fn may be passed again to run another varlen kernel inside);
        the exchanges run over ``distributed_backend()`` (P2P for ring, all_to_all for Ulysses)."""
        import functools

        from lmm_r1_ascend.kernels.ring_attention import ring_attention
        from lmm_r1_ascend.kernels.ulysses import ulysses_attention

        attention = (kernels or self.select_kernels()).attention
        comm = self.distributed_backend()
        ring = KernelChoice(
            "sp_ring", f"ring[{attention.name}]",
            f"k/v blocks passed around the ring (batch_isend_irecv over {comm}), {attention.name} per block "
            "with its log-sum-exp, zigzag-balanced, masked blocks skipped; backward recomputes per block",
            fn=functools.partial(ring_attention, attention_fn=attention.fn))
        ulysses = KernelChoice(
            "sp_ulysses", f"ulysses[{attention.name}]",
            f"all_to_all_single over {comm} from sequence to head split, {attention.name} on the whole row; "
            "attention and kv heads must divide by the SP size",
            fn=functools.partial(ulysses_attention, attention_fn=attention.fn))
        return {"ring": ring, "ulysses": ulysses}

    def describe(self) -> dict:
        """A JSON-able summary (used by doctor and stamped into run metadata)."""
        return {
            "name": self.name,
            "device_type": self.device_type,
            "device_count": self.device_count(),
            "dist_backend": self.distributed_backend(),
            "dist_backend_mixed": self.distributed_backend(with_cpu=True),
            "ray_resource": self.ray_resource,
            "ray_actor_options": self.ray_actor_options(1),
            "visible_devices_env": self.visible_devices_env,
            "ds_accelerator": self.ds_accelerator,
            "weight_sync_transports": list(self.weight_sync_transports),
            "default_dtype": str(self.default_dtype).replace("torch.", ""),
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
