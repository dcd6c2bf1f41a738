"""Ascend NPU backend (torch_npu + CANN) and its CPU emulation.

`NpuBackend` calls torch_npu's fused ops through `self.ops`. `EmulatedNpuBackend` runs the
very same code path with `self.ops` = lmm_r1_ascend.kernels.npu_emulation on CPU tensors,
so CI and laptops exercise the NPU layouts, masks and length conventions. The emulation
follows the documented op contracts, not the hardware: its numbers say nothing about
Ascend precision.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from types import ModuleType
from typing import ClassVar

import torch

from lmm_r1_ascend.backends import common_kernels as ck
from lmm_r1_ascend.backends.accelerator import AcceleratorBackend
from lmm_r1_ascend.backends.base import Backend, KernelChoice, choose
from lmm_r1_ascend.backends.cpu import CpuBackend


class NpuBackend(AcceleratorBackend):
    name: ClassVar[str] = "npu"
    device_type: ClassVar[str] = "npu"
    dist_backend: ClassVar[str] = "hccl"
    ray_resource: ClassVar[str | None] = "NPU"
    visible_devices_env: ClassVar[str | None] = "ASCEND_RT_VISIBLE_DEVICES"
    ds_accelerator: ClassVar[str] = "npu"
    # No CUDA IPC on Ascend; vLLM's own nccl/ipc weight transfer is CUDA-only (ASCEND.md).
    weight_sync_transports: ClassVar[tuple[str, ...]] = ("in_process", "hccl_broadcast")
    env_vars: ClassVar[tuple[str, ...]] = (
        "ASCEND_RT_VISIBLE_DEVICES", "ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME", "PYTORCH_NPU_ALLOC_CONF",
        "HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT", "HCCL_DETERMINISTIC", "HCCL_BUFFSIZE",
        "HCCL_IF_BASE_PORT", "HCCL_HOST_SOCKET_PORT_RANGE", "HCCL_NPU_SOCKET_PORT_RANGE",
        "CLOSE_MATMUL_K_SHIFT", "VLLM_ASCEND_ENABLE_NZ", "RAY_EXPERIMENTAL_NOSET_ASCEND_RT_VISIBLE_DEVICES",
    )
    install_hint: ClassVar[str] = (
        "use the NPU image (docker/Dockerfile.npu) or install CANN and `pip install -r requirements-npu.txt`; "
        "to run the NPU code path on CPU, use --device npu-emulated"
    )

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        if importlib.util.find_spec("torch_npu") is None:
            return False, "torch_npu/CANN is missing: torch_npu is not installed"
        try:
            import torch_npu  # noqa: F401  (registers the "npu" device)
        except Exception as exc:  # ImportError without CANN; RuntimeError next to a CUDA torch
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return False, f"torch_npu/CANN is missing: import torch_npu failed ({first})"
        if not torch.npu.is_available():
            return False, "torch_npu imported but no Ascend NPU is visible (check ASCEND_RT_VISIBLE_DEVICES and npu-smi)"
        return True, f"{torch.npu.device_count()} NPU(s) through torch_npu {getattr(torch_npu, '__version__', '?')}"

    @functools.cached_property
    def ops(self) -> ModuleType:
        """The namespace holding npu_fusion_attention, npu_rms_norm, npu_rotary_mul, npu_swiglu."""
        return importlib.import_module("torch_npu")

    def set_deterministic(self, enabled: bool = True) -> None:
        # Reduction collectives and the matmul K-axis shift are the NPU's sources of run-to-run noise.
        os.environ["HCCL_DETERMINISTIC"] = "true" if enabled else "false"
        os.environ["CLOSE_MATMUL_K_SHIFT"] = "1" if enabled else "0"
        super().set_deterministic(enabled)

    def select_kernels(self, overrides: dict[str, str] | None = None,
                       dtype: torch.dtype | None = None) -> dict[str, KernelChoice]:
        from lmm_r1_ascend.kernels.attention import varlen_attention_npu_fusion
        from lmm_r1_ascend.kernels.npu_fused import apply_npu_fused_ops

        overrides = overrides or {}
        ops_label = self._ops_label()

        def fusion_probe() -> tuple[bool, str]:
            ok = hasattr(self.ops, "npu_fusion_attention")
            return ok, (f"{ops_label} npu_fusion_attention, TND layout, sparse_mode=3 causal" if ok
                        else f"{ops_label} has no npu_fusion_attention")

        attention = choose("attention", [
            ("npu_fusion", fusion_probe, functools.partial(varlen_attention_npu_fusion, ops=self.ops)),
            ck.reference_attention_candidate(),
        ], overrides.get("attention"))
        def fused_probe() -> tuple[bool, str]:
            missing = [op for op in ("npu_rms_norm", "npu_rotary_mul", "npu_swiglu") if not hasattr(self.ops, op)]
            if missing:
                return False, f"{ops_label} lacks {', '.join(missing)}"
            return True, f"{ops_label} npu_rms_norm / npu_rotary_mul / npu_swiglu swapped into the model"

        fused = choose("fused_ops", [(
            "npu_fused",
            fused_probe,
            functools.partial(apply_npu_fused_ops, ops=self.ops),
        ), ("none", lambda: (True, "transformers' own modules"), None)], overrides.get("fused_ops"))
        return {
            "attention": attention,
            "logprobs": ck.logprobs_choice(),
            "fused_ops": fused,
            "packing": ck.packing_choice(host_lengths_required=True),
            "collectives": ck.collectives_choice(self.distributed_backend()),
        }

    def _ops_label(self) -> str:
        return "torch_npu"


class EmulatedNpuBackend(NpuBackend):
    """The NPU code path on CPU tensors, with torch_npu's ops supplied by kernels/npu_emulation."""

    name: ClassVar[str] = "npu-emulated"
    device_type: ClassVar[str] = "cpu"
    dist_backend: ClassVar[str] = "gloo"
    ray_resource: ClassVar[str | None] = None
    visible_devices_env: ClassVar[str | None] = None
    ds_accelerator: ClassVar[str] = "cpu"
    weight_sync_transports: ClassVar[tuple[str, ...]] = ("in_process", "gloo_broadcast")
    env_vars: ClassVar[tuple[str, ...]] = CpuBackend.env_vars
    default_dtype: ClassVar[torch.dtype] = torch.float32

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        return True, "asked for explicitly: torch_npu ops emulated in pure torch on CPU (the documented contract, not the hardware)"

    @functools.cached_property
    def ops(self) -> ModuleType:
        return importlib.import_module("lmm_r1_ascend.kernels.npu_emulation")

    # Device queries are the CPU's; only the kernels follow the NPU path.
    device = CpuBackend.device
    device_count = CpuBackend.device_count
    memory_stats = CpuBackend.memory_stats

    def empty_cache(self) -> None:
        pass

    def synchronize(self, device: torch.device | None = None) -> None:
        pass

    def set_deterministic(self, enabled: bool = True) -> None:
        Backend.set_deterministic(self, enabled)

    def _ops_label(self) -> str:
        return "emulated (lmm_r1_ascend.kernels.npu_emulation)"
