"""Weight updates inside vLLM workers: a worker extension class and the matching sender.

vLLM mixes `WeightSyncExtension` into each of its worker classes when the LLM is built
with `worker_extension_cls="lmm_r1_ascend.rollout.vllm_worker_ext.WeightSyncExtension"`;
its methods run in every worker through `LLM.collective_rpc(name, args=...)`. Nothing
here names a device: the same code runs in vLLM's CUDA, CPU and vllm-ascend (NPU)
workers (on NPU with the NZ weight layout off: the NPU backend passes vllm-ascend's
additional_config weight_nz_mode=0 and sets VLLM_ASCEND_ENABLE_NZ=0 in the worker environment).

Two transports:
- by value (`lmm_stage_weights` per chunk, then `lmm_commit_weights`): the (name, tensor)
  pairs travel inside RPC messages, packed as safetensors bytes (`pack_weights`).
  Simple and always available; fine for small models and tests.
- by broadcast (`lmm_init_weight_sync_group` + `lmm_receive_broadcast`): the trainer's
  rank and the workers form their own process group (`kernels.weight_sync.stateless_group`,
  so neither side's default group is touched), once per engine, reused by every sync;
  only names/shapes/dtypes go through the RPC, the bytes go through the group in
  per-dtype flat buckets planned by `kernels.collectives.plan_buckets` on both sides. The
  sender calls `send_weights_broadcast` with the same bucket size while the workers receive.

Why our own group and not vLLM's: vLLM's `stateless_init_torch_distributed_process_group`
hands every backend but gloo to `current_platform.stateless_init_device_torch_dist_pg`,
which vllm-ascend 0.23.0's NPUPlatform does not implement (vLLM's base Platform raises
NotImplementedError; vllm-ascend dropped its implementation in 0.12), so on NPU that helper
cannot form the group. Why not vLLM's weight-transfer engines (vllm-ascend's hccl /
npu_ipc, vLLM's nccl / ipc): their wire formats need the trainer to send through the same
engine class, and none exists for gloo, so the CPU path could never run the code the
accelerators would; with our group every line but the group's constructor runs in CI.

Weights are named as the Hugging Face checkpoint names them (the trainer's
named_parameters); the model's own `load_weights` maps them (e.g. q/k/v into qkv_proj).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

from lmm_r1_ascend.kernels.collectives import Meta
from lmm_r1_ascend.kernels.weight_sync import receive_buckets, send_buckets, stateless_group


def make_weight_sync_group(host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float = 1800):
    """A torch ProcessGroup over `world_size` processes that leaves the default group alone.

    Rank 0 is conventionally the trainer (the sender); workers take 1..world_size-1.
    `backend` is the device's collective backend, as the project's Backend reports it
    (gloo / nccl / hccl: `kernels.weight_sync.stateless_group` builds each directly).
    """
    return stateless_group(backend, host, port, rank, world_size, timeout_s=timeout_s)


def layerwise_reload():
    """vLLM's (initialize_layerwise_reload, finalize_layerwise_reload), or None where this vLLM
    has none. vLLM's own `reload_weights` and vllm-ascend's start/finish_weight_update wrap
    `model.load_weights` in exactly these two calls."""
    try:
        from vllm.model_executor.model_loader.reload import (
            finalize_layerwise_reload,
            initialize_layerwise_reload,
        )
    except ImportError:
        return None
    return initialize_layerwise_reload, finalize_layerwise_reload


def pack_weights(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> bytes:
    """Tensors as one safetensors blob: bit-exact, any dtype, and plain bytes survive every
    RPC serialiser (vLLM's msgpack-to-pickle hop cannot carry tensors themselves)."""
    from safetensors.torch import save

    # copy=True: tied or overlapping tensors must not share storage in the blob.
    return save({name: t.detach().to("cpu", copy=True).contiguous() for name, t in named_tensors})


def weights_meta(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> Meta:
    """(name, shape, dtype) per tensor: what the receivers must be told before a broadcast."""
    return [(name, tuple(t.shape), t.dtype) for name, t in named_tensors]


def meta_to_wire(meta: Meta) -> list[tuple[str, list[int], str]]:
    return [(name, list(shape), str(dtype).removeprefix("torch.")) for name, shape, dtype in meta]


def meta_from_wire(wire: list) -> Meta:
    meta = []
    for name, shape, dtype in wire:
        dt = getattr(torch, dtype, None)
        if not isinstance(dt, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r} for tensor {name!r}")
        meta.append((name, tuple(int(d) for d in shape), dt))
    return meta


def send_weights_broadcast(group, named_tensors: Sequence[tuple[str, torch.Tensor]], *, bucket_bytes: int,
                           src: int = 0) -> None:
    """Sender side of `lmm_receive_broadcast`: the same buckets, in the same order.

    named_tensors: on one device the group's backend communicates on; bit-exact transfer
    (each bucket travels as bytes).
    """
    named_tensors = list(named_tensors)
    send_buckets(group, weights_meta(named_tensors), named_tensors, bucket_bytes=bucket_bytes, src=src)


class WeightSyncExtension:
    """Methods added to vLLM's worker (self is the worker). Prefixed `lmm_` so they never
    shadow a worker attribute (vLLM refuses extensions that would).

    Loading goes through the worker's `reload_weights` where vLLM has it: platforms repack
    weights after loading (the CPU build into oneDNN / packed-GEMM layouts, dropping the
    original parameter; NPU into NZ), so a plain `model.load_weights` would write into
    stale or empty parameters. `reload_weights` restores the checkpoint layout, loads and
    re-runs that processing, layer by layer. Every tensor of a layer must come in the same
    update (the trainer sends all its parameters). vllm-ascend's NPUWorker (0.23.0) derives
    from vLLM's WorkerBase and has no `reload_weights`: there the same layerwise reload runs
    around `model.load_weights`, as its own start/finish_weight_update do. A vLLM without the
    layerwise reload (those vllm-ascend 0.11 / 0.13 pair with) gets plain `model.load_weights`,
    right only while vllm-ascend's NZ weight layout is off (weight_nz_mode=0).
    """

    def _lmm_model(self) -> torch.nn.Module:
        return self.get_model() if hasattr(self, "get_model") else self.model_runner.model

    def _lmm_device(self) -> torch.device:
        return next(p for p in self._lmm_model().parameters() if p.numel()).device

    def _lmm_reload(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        if not hasattr(self, "reload_weights"):
            model, layerwise = self._lmm_model(), layerwise_reload()
            if layerwise is None:
                model.load_weights(weights=weights)
                return
            initialize, finalize = layerwise
            with torch.device(getattr(self, "device", None) or self._lmm_device()):
                initialize(model)
                model.load_weights(weights)
                finalize(model, self.model_config)
            return
        self.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
        # A tied output head shares the embedding's Parameter but receives no weights of
        # its own, so the reload never re-runs its processing: on the CPU build it kept
        # computing logits from a packed copy of the OLD embedding. Re-process every
        # module of a tied group (for unquantized embeddings this only re-derives caches).
        groups: dict[int, list[torch.nn.Module]] = {}
        for module in self._lmm_model().modules():
            weight = module._parameters.get("weight")
            if weight is not None and hasattr(getattr(module, "quant_method", None), "process_weights_after_loading"):
                groups.setdefault(id(weight), []).append(module)
        for modules in groups.values():
            if len(modules) > 1:
                for module in modules:
                    module.quant_method.process_weights_after_loading(module)

    def lmm_stage_weights(self, payload: bytes) -> int:
        """Keep one `pack_weights` blob (host memory) until `lmm_commit_weights`; returns the staged count."""
        from safetensors.torch import load

        staged = self.__dict__.setdefault("_lmm_staged", [])
        staged.extend(load(payload).items())
        return len(staged)

    def lmm_commit_weights(self) -> int:
        """Load everything staged as one update; returns the tensor count."""
        staged, self._lmm_staged = getattr(self, "_lmm_staged", []), []
        device = self._lmm_device()
        self._lmm_reload((name, t.to(device)) for name, t in staged)
        return len(staged)

    def lmm_discard_staged(self) -> None:
        self._lmm_staged = []

    def lmm_init_weight_sync_group(self, host: str, port: int, rank_offset: int, world_size: int,
                                   backend: str, timeout_s: float = 1800) -> None:
        """Join the trainer's weight-sync group as rank rank_offset + this worker's rank, once:
        every later sync reuses it (a communicator built per sync exhausts HCCL's resources)."""
        if getattr(self, "_lmm_sync_group", None) is not None:
            raise RuntimeError("this worker already joined a weight-sync group; it is reused for every sync")
        rank = rank_offset + (dist.get_rank() if dist.is_initialized() else 0)
        self._lmm_sync_group = make_weight_sync_group(host, port, rank, world_size, backend, timeout_s)

    def lmm_receive_broadcast(self, wire_meta: list, bucket_bytes: int, src: int = 0) -> int:
        """Receive the buckets `send_weights_broadcast` sends and load them; returns the tensor count.

        wire_meta: `meta_to_wire(weights_meta(...))` (plain types survive vLLM's RPC serialisers).
        Buckets are received lazily, as the loader consumes the tensors.
        """
        meta = meta_from_wire(wire_meta)
        group = getattr(self, "_lmm_sync_group", None)
        if group is None:
            raise RuntimeError("no weight-sync group: call lmm_init_weight_sync_group first")
        self._lmm_reload(receive_buckets(group, meta, bucket_bytes=bucket_bytes, src=src, device=self._lmm_device()))
        return len(meta)
