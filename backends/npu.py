"""Ascend NPU backend (torch_npu + CANN) and its CPU emulation.

`NpuBackend` calls torch_npu's fused ops through `self.ops`. `EmulatedNpuBackend` is the
CPU device with the NPU kernel set: the same `npu_kernels` selection over
lmm_r1_ascend.kernels.npu_emulation instead of torch_npu, on CPU tensors, so CI and laptops
exercise the NPU layouts, masks and length conventions. The emulation
follows the documented op contracts, not the hardware: its numbers say nothing about
Ascend precision.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from types import ModuleType
from typing import ClassVar, Sequence

import torch

from lmm_r1_ascend.backends import common_kernels as ck
from lmm_r1_ascend.backends.accelerator import AcceleratorBackend
from lmm_r1_ascend.backends.base import KernelSet, check_overrides, choose
from lmm_r1_ascend.backends.cpu import CpuBackend


class NpuBackend(AcceleratorBackend):
    name: ClassVar[str] = "npu"
    device_type: ClassVar[str] = "npu"
    dist_backend: ClassVar[str] = "hccl"
    ray_resource: ClassVar[str | None] = "NPU"
    visible_devices_env: ClassVar[str | None] = "ASCEND_RT_VISIBLE_DEVICES"
    ds_accelerator: ClassVar[str] = "npu"
    runtime_overhead_gb: ClassVar[float] = 1.2  # CANN context and workspace (typical)
    # hccl_broadcast: the project's own side group (kernels/weight_sync.py), which the vLLM workers
    # join too. vllm-ascend 0.23.0's hccl / npu_ipc weight-transfer engines are not used (why:
    # rollout/vllm_worker_ext.py); no NPU IPC is built (it needs driver >= 25.3.rc1, CANN >= 8.3.rc1).
    weight_sync_transports: ClassVar[tuple[str, ...]] = ("in_process", "hccl_broadcast")
    # The settings a run may tune (ASCEND.md, "Environment variables" and "More facts"); doctor
    # reports them, and worker_env passes the controller's values on to every Ray worker.
    forwarded_env_vars: ClassVar[tuple[str, ...]] = (
        "PYTORCH_NPU_ALLOC_CONF",
        "HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT", "HCCL_BUFFSIZE", "HCCL_OP_EXPANSION_MODE",
        "HCCL_IF_BASE_PORT", "HCCL_HOST_SOCKET_PORT_RANGE", "HCCL_NPU_SOCKET_PORT_RANGE",
        "TASK_QUEUE_ENABLE", "CPU_AFFINITY_CONF",
        "HCCL_DETERMINISTIC", "LCCL_DETERMINISTIC", "CLOSE_MATMUL_K_SHIFT", "ATB_MATMUL_SHUFFLE_K_ENABLE",
        "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_BATCH_INVARIANT",
        "VLLM_ASCEND_ENABLE_NZ",
    )
    # Reported but never forwarded: the visible devices (Ray sets them per actor), the CANN install
    # paths (each node's own set_env.sh) and Ray's own switch (read by Ray, not by the workers).
    env_vars: ClassVar[tuple[str, ...]] = (
        "ASCEND_RT_VISIBLE_DEVICES", "ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME",
        *forwarded_env_vars, "RAY_EXPERIMENTAL_NOSET_ASCEND_RT_VISIBLE_DEVICES",
    )
    # What set_deterministic(True) sets: the NPU-vs-GPU alignment knobs of ASCEND.md ("More facts").
    # Two knobs of that list are left to the user (docs/docker.md): VLLM_ENABLE_V1_MULTIPROCESSING=0
    # would run vLLM's engine core inside the training rank's process, next to the rank's own
    # torch.distributed state (not tried here), and VLLM_BATCH_INVARIANT=1 selects vllm-ascend's
    # batch-invariant kernels, a beta for Atlas A2/A3 only.
    deterministic_env: ClassVar[dict[str, str]] = {
        "HCCL_DETERMINISTIC": "true", "LCCL_DETERMINISTIC": "1",
        "CLOSE_MATMUL_K_SHIFT": "1", "ATB_MATMUL_SHUFFLE_K_ENABLE": "0",
    }
    # vllm-ascend's own switches, passed to vllm.LLM(additional_config=...) by the vllm rollout
    # engine (read by vllm-ascend 0.23.0's AscendConfig; checked in tests/vendor/test_runtime_vendor.py).
    # weight_nz_mode=0: no FRACTAL_NZ weights (its default 1 converts quantized weights; its wake_up
    # raises for any mode but 0), so weights loaded after start-up keep the checkpoint layout.
    vllm_additional_config: ClassVar[dict[str, int]] = {"weight_nz_mode": 0}
    # Defaults in every worker (a value the user exported wins). "auto": the OS picks HCCL's host /
    # device socket ports. CANN advises it whenever several processes share one NPU (a colocated
    # vLLM engine next to a training rank, vLLM's engine-core process): the fixed default ports
    # (HCCL_IF_BASE_PORT 60000-60015) collide there. CANN does not allow it with MC2 fused ops on
    # Atlas A2 (MoE expert parallel in vllm-ascend): an exported empty value turns a default off
    # (docs/docker.md, "NPU settings").
    worker_env_defaults: ClassVar[dict[str, str]] = {
        "VLLM_ASCEND_ENABLE_NZ": "0",
        "HCCL_HOST_SOCKET_PORT_RANGE": "auto", "HCCL_NPU_SOCKET_PORT_RANGE": "auto",
    }
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
        """Reduction collectives (HCCL, and LCCL in vllm-ascend's ATB operators) and the matmul
        K-axis shift / shuffle are the NPU's sources of run-to-run noise. The trainer calls this
        before the process group and the rollout engine start (the libraries read the variables
        then); disabling unsets them, which restores the libraries' defaults."""
        for name, value in self.deterministic_env.items():
            if enabled:
                os.environ[name] = value
            else:
                os.environ.pop(name, None)
        super().set_deterministic(enabled)

    def worker_env(self, visible_devices: Sequence[int] | None = None) -> dict[str, str]:
        """The common worker variables (the controller's `forwarded_env_vars` among them: HCCL
        timeouts and ports, and the determinism switches set_deterministic sets in the controller)
        and `worker_env_defaults` where the user chose no value: VLLM_ASCEND_ENABLE_NZ=0 (vllm-ascend's
        NZ weight layout breaks in-place weight updates on reshaped weights, an RL rollout engine is
        updated every step, and vllm-ascend 0.23.0's start_weight_update reads this variable itself,
        not additional_config) and the OS-chosen HCCL socket ports. PYTORCH_NPU_ALLOC_CONF is
        deliberately not defaulted (only forwarded when the user set it): the vLLM rollout uses sleep mode by default
        (rollout.vllm_enable_sleep), and expandable segments do not work with vllm-ascend's
        sleep-mode memory pool (ASCEND.md, "More facts": its fix was still open in 2026-05).
        """
        env = super().worker_env(visible_devices)
        for name, value in self.worker_env_defaults.items():
            if os.environ.get(name) == "":  # exported empty: the user turned this default off
                env.pop(name, None)
            else:
                env.setdefault(name, value)
        return env

    def select_kernels(self, overrides: dict[str, str] | None = None,
                       dtype: torch.dtype | None = None) -> KernelSet:
        return npu_kernels(self.ops, "torch_npu", overrides)


class EmulatedNpuBackend(CpuBackend):
    """The CPU device with the NPU kernel set: torch_npu's ops supplied by kernels/npu_emulation.

    Every device fact (device, counts, memory, collectives, Ray, env, dtype) is the CPU's;
    only `select_kernels` follows the NPU path, through the same `npu_kernels` as NpuBackend.
    """

    name: ClassVar[str] = "npu-emulated"
    emulation_note: ClassVar[str | None] = (
        "npu-emulated runs the NPU code path (TND layout, cumulative lengths, True = masked, "
        "fused ops) through a pure-torch emulation of the NPU ops' documented contracts on CPU: "
        "it is the documented contract, not the Ascend hardware, and says nothing about NPU precision")

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        return True, "asked for explicitly: torch_npu ops emulated in pure torch on CPU (the documented contract, not the hardware)"

    @functools.cached_property
    def ops(self) -> ModuleType:
        return importlib.import_module("lmm_r1_ascend.kernels.npu_emulation")

    def select_kernels(self, overrides: dict[str, str] | None = None,
                       dtype: torch.dtype | None = None) -> KernelSet:
        return npu_kernels(self.ops, "emulated (lmm_r1_ascend.kernels.npu_emulation)", overrides)


def npu_kernels(ops: ModuleType, ops_label: str, overrides: dict[str, str] | None = None) -> KernelSet:
    """The NPU kernel set over `ops`, a namespace with torch_npu's npu_fusion_attention,
    npu_rms_norm, npu_rotary_mul and npu_swiglu (torch_npu itself, or the emulation).

    ops_label: how reasons name `ops` ("torch_npu", "emulated (...)"); overrides: {op: name}.
    """
    from lmm_r1_ascend.kernels.attention_npu import varlen_attention_npu_fusion
    from lmm_r1_ascend.kernels.npu_fused import apply_npu_fused_ops

    overrides = check_overrides(overrides)

    def fusion_probe() -> tuple[bool, str]:
        ok = hasattr(ops, "npu_fusion_attention")
        return ok, (f"{ops_label} npu_fusion_attention, TND layout, sparse_mode=3 causal" if ok
                    else f"{ops_label} has no npu_fusion_attention")

    def fused_probe() -> tuple[bool, str]:
        missing = [op for op in ("npu_rms_norm", "npu_rotary_mul", "npu_swiglu") if not hasattr(ops, op)]
        if missing:
            return False, f"{ops_label} lacks {', '.join(missing)}"
        return True, f"{ops_label} npu_rms_norm / npu_rotary_mul / npu_swiglu swapped into the model"

    attention = choose("attention", [
        ("npu_fusion", fusion_probe, functools.partial(varlen_attention_npu_fusion, ops=ops)),
        ck.reference_attention_candidate(),
    ], overrides.get("attention"))
    fused = choose("fused_ops", [
        ("npu_fused", fused_probe, functools.partial(apply_npu_fused_ops, ops=ops)),
        ("none", ck.always("transformers' own modules"), None),
    ], overrides.get("fused_ops"))
    # transformers' SDPA path hands torch_npu a bool mask so it reaches FlashAttentionScore; never measured here
    decode = ck.decode_attention_choice("sdpa", overrides.get("decode_attention"))
    return KernelSet(attention=attention, decode_attention=decode,
                     logprobs=ck.logprobs_choice(overrides.get("logprobs")), fused_ops=fused)
