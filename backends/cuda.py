"""NVIDIA CUDA backend: flash-attn or torch's varlen flash kernel, NCCL, Ray `num_gpus`."""

from __future__ import annotations

import os
from typing import ClassVar

import torch

from lmm_r1_ascend.backends import common_kernels as ck
from lmm_r1_ascend.backends.accelerator import AcceleratorBackend
from lmm_r1_ascend.backends.base import KernelSet, check_overrides, choose


class CudaBackend(AcceleratorBackend):
    name: ClassVar[str] = "cuda"
    device_type: ClassVar[str] = "cuda"
    dist_backend: ClassVar[str] = "nccl"
    ray_resource: ClassVar[str | None] = "GPU"
    visible_devices_env: ClassVar[str | None] = "CUDA_VISIBLE_DEVICES"
    ds_accelerator: ClassVar[str] = "cuda"
    # What rollout/ and kernels/weight_sync.py implement; no CUDA IPC handles (not built).
    weight_sync_transports: ClassVar[tuple[str, ...]] = ("in_process", "nccl_broadcast")
    # Forwarded to every Ray worker (Backend.worker_env; not CUDA_VISIBLE_DEVICES: Ray sets it per actor). PYTORCH_CUDA_ALLOC_CONF is the allocator name
    # vLLM's sleep-mode pool reads to switch expandable segments off inside the pool (vLLM PR 40812).
    forwarded_env_vars: ClassVar[tuple[str, ...]] = (
        "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "CUBLAS_WORKSPACE_CONFIG",
        "NCCL_DEBUG", "NCCL_SOCKET_IFNAME", "NCCL_IB_DISABLE",
    )
    env_vars: ClassVar[tuple[str, ...]] = ("CUDA_VISIBLE_DEVICES", *forwarded_env_vars, "VLLM_USE_V1")

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        if not torch.backends.cuda.is_built():
            return False, "this torch build has no CUDA support (CPU or NPU build)"
        if not torch.cuda.is_available():
            return False, "no NVIDIA GPU visible (torch.cuda.is_available() is False)"
        return True, f"{torch.cuda.device_count()} GPU(s), {torch.cuda.get_device_name(0)}"

    def ray_actor_options(self, devices_per_rank: float) -> dict:
        """Ray counts GPUs through `num_gpus` (it refuses "GPU" as a custom resource)."""
        if devices_per_rank <= 0:
            raise ValueError(f"devices_per_rank must be > 0, got {devices_per_rank}")
        return {"num_gpus": devices_per_rank}

    def set_deterministic(self, enabled: bool = True) -> None:
        if enabled:
            # cuBLAS needs a fixed workspace to be deterministic; must be set before the first matmul.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = enabled
        torch.backends.cudnn.benchmark = not enabled
        super().set_deterministic(enabled)

    def select_kernels(self, overrides: dict[str, str] | None = None,
                       dtype: torch.dtype | None = None) -> KernelSet:
        """dtype: the model's; the flash kernels take fp16/bf16 only, so a float32 model falls
        back to the reference attention (with that reason) instead of failing at the first call."""
        from lmm_r1_ascend.kernels import attention_cuda as att

        overrides = check_overrides(overrides)

        def half_only(probe):
            def checked() -> tuple[bool, str]:
                if dtype is not None and dtype not in (torch.float16, torch.bfloat16):
                    return False, f"takes float16/bfloat16 only; the model is {str(dtype).removeprefix('torch.')}"
                return probe()
            return checked

        attention = choose("attention", [
            ("flash_attn", half_only(lambda: att.probe_flash_attn("cuda")), att.varlen_attention_flash_attn),
            ("torch_varlen", half_only(lambda: att.probe_torch_varlen("cuda")), att.varlen_attention_torch_varlen),
            ck.reference_attention_candidate(),
        ], overrides.get("attention"))
        return KernelSet(
            attention=attention,
            # never measured on a GPU here: SDPA's fused kernels stay first until a benchmark says otherwise
            decode_attention=ck.decode_attention_choice("sdpa", overrides.get("decode_attention")),
            logprobs=ck.logprobs_choice(overrides.get("logprobs")),
            fused_ops=ck.no_fused_ops_choice("transformers' own modules (fused by torch/cuBLAS); no custom fused ops",
                                             overrides.get("fused_ops")),
        )
