"""Backends: registry, auto order, one-line errors, per-device facts, kernel set, Ray options."""

from __future__ import annotations

import importlib.metadata
import os

import pytest
import torch

from lmm_r1_ascend.backends import Backend, BackendUnavailable, get_backend
from lmm_r1_ascend.backends import registry
from lmm_r1_ascend.backends.base import COMMON_ENV_VARS, KERNEL_OPS, KernelSet, choose
from lmm_r1_ascend.backends.cpu import CpuBackend
from lmm_r1_ascend.backends.cuda import CudaBackend
from lmm_r1_ascend.backends.npu import EmulatedNpuBackend, NpuBackend


def test_auto_prefers_npu_then_cuda_then_cpu(monkeypatch):
    assert registry.AUTO_ORDER == ("npu", "cuda", "cpu")
    monkeypatch.setattr(NpuBackend, "probe", classmethod(lambda cls: (False, "no npu")))
    monkeypatch.setattr(CudaBackend, "probe", classmethod(lambda cls: (True, "fake gpu")))
    name, skipped = registry.resolve_name("auto")
    assert name == "cuda" and skipped == [("npu", "no npu")]
    monkeypatch.setattr(CudaBackend, "probe", classmethod(lambda cls: (False, "no gpu")))
    assert registry.resolve_name("auto") == ("cpu", [("npu", "no npu"), ("cuda", "no gpu")])
    monkeypatch.setattr(NpuBackend, "probe", classmethod(lambda cls: (True, "fake npu")))
    assert registry.resolve_name("AUTO")[0] == "npu"


def test_auto_on_this_machine_is_cpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert get_backend("auto").name == "cpu"


def test_npu_without_cann_is_one_clear_line():
    ok, _ = NpuBackend.probe()
    if ok:
        pytest.skip("a real NPU is present")
    with pytest.raises(BackendUnavailable) as err:
        get_backend("npu")
    msg = str(err.value)
    assert "\n" not in msg
    assert "torch_npu/CANN is missing" in msg and "docker/Dockerfile.npu" in msg and "npu-emulated" in msg


def test_unknown_device_lists_choices():
    with pytest.raises(ValueError, match="unknown device 'tpu'.*cpu.*cuda.*npu"):
        get_backend("tpu")


def test_instances_are_cached_and_satisfy_the_interface():
    cpu = get_backend("cpu")
    assert cpu is get_backend("cpu") and isinstance(cpu, Backend)
    assert cpu.device(0) == torch.device("cpu") and cpu.device(3) == torch.device("cpu")
    with pytest.raises(ValueError):
        cpu.device(-1)


@pytest.mark.parametrize("cls,dist,mixed,ray,visible,ds", [
    ("cpu", "gloo", "gloo", None, None, "cpu"),
    (CudaBackend, "nccl", "cpu:gloo,cuda:nccl", "GPU", "CUDA_VISIBLE_DEVICES", "cuda"),
    (NpuBackend, "hccl", "cpu:gloo,npu:hccl", "NPU", "ASCEND_RT_VISIBLE_DEVICES", "npu"),
    (EmulatedNpuBackend, "gloo", "gloo", None, None, "cpu"),
])
def test_static_facts_per_device(cls, dist, mixed, ray, visible, ds):
    # Static facts are class-level so they can be checked without the hardware.
    backend = get_backend("cpu") if cls == "cpu" else object.__new__(cls)
    assert backend.distributed_backend() == dist
    assert backend.distributed_backend(with_cpu=True) == mixed
    assert backend.ray_resource == ray and backend.visible_devices_env == visible and backend.ds_accelerator == ds
    env = backend.worker_env([2, 3])
    assert env["DS_ACCELERATOR"] == ds
    if visible:
        assert env[visible] == "2,3"


def test_npu_lists_the_hccl_and_ascend_variables():
    for var in ("ASCEND_RT_VISIBLE_DEVICES", "HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT", "HCCL_DETERMINISTIC",
                "HCCL_IF_BASE_PORT", "HCCL_BUFFSIZE", "PYTORCH_NPU_ALLOC_CONF", "VLLM_ASCEND_ENABLE_NZ",
                "HCCL_OP_EXPANSION_MODE", "TASK_QUEUE_ENABLE", "CPU_AFFINITY_CONF", "LCCL_DETERMINISTIC",
                "ATB_MATMUL_SHUFFLE_K_ENABLE", "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_BATCH_INVARIANT"):
        assert var in NpuBackend.env_vars
    assert "CUDA_VISIBLE_DEVICES" in CudaBackend.env_vars and "CUBLAS_WORKSPACE_CONFIG" in CudaBackend.env_vars


def test_weight_sync_transports_are_the_built_ones():
    """In place, or a broadcast over the backend's own collective library; no CUDA IPC (not built).
    That each one has an implementation is checked in test_kernel_seam.py."""
    assert CpuBackend.weight_sync_transports == ("in_process", "gloo_broadcast")
    assert CudaBackend.weight_sync_transports == ("in_process", "nccl_broadcast")
    assert NpuBackend.weight_sync_transports == ("in_process", "hccl_broadcast")
    assert EmulatedNpuBackend.weight_sync_transports == CpuBackend.weight_sync_transports


def test_no_common_variable_is_advertised_without_a_reader():
    assert "LMM_R1_ATTENTION" not in COMMON_ENV_VARS
    assert "LMM_R1_DEVICE" in COMMON_ENV_VARS  # doctor's --device default and worker_env


def test_cpu_kernel_set_holds_the_ops_the_core_calls_with_reasons():
    kernels = get_backend("cpu").select_kernels()
    assert isinstance(kernels, KernelSet)
    assert KERNEL_OPS == ("attention", "decode_attention", "logprobs", "fused_ops")
    assert [c.op for c in kernels] == list(KERNEL_OPS)
    assert kernels.attention.name == "batched"
    assert kernels.attention.candidates == ("batched", "reference")  # the per-sequence definition stays selectable
    assert kernels.decode_attention.name == "matmul" and kernels.decode_attention.candidates == ("matmul", "sdpa")
    assert kernels.logprobs.name == "chunked" and callable(kernels.logprobs.fn)
    assert kernels.fused_ops.name == "none" and kernels.fused_ops.fn is None
    assert all(c.reason for c in kernels)


def test_kernel_set_refuses_a_choice_for_the_wrong_op():
    ks = get_backend("cpu").select_kernels()
    with pytest.raises(TypeError, match="KernelSet.logprobs must be a KernelChoice for op 'logprobs'"):
        KernelSet(attention=ks.attention, decode_attention=ks.decode_attention, logprobs=ks.attention,
                  fused_ops=ks.fused_ops)


@pytest.mark.parametrize("name", ["cpu", "npu-emulated"])
def test_every_op_is_overridable_by_name_and_unknown_ops_are_refused(name):
    backend = get_backend(name)
    assert backend.select_kernels({"logprobs": "chunked"}).logprobs.reason.startswith("requested explicitly")
    assert backend.select_kernels({"fused_ops": "none"}).fused_ops.fn is None
    assert backend.select_kernels({"decode_attention": "sdpa"}).decode_attention.fn is None
    assert callable(backend.select_kernels({"decode_attention": "matmul"}).decode_attention.fn)
    with pytest.raises(ValueError, match="unknown logprobs implementation 'nope'"):
        backend.select_kernels({"logprobs": "nope"})
    with pytest.raises(ValueError, match=r"unknown op\(s\) \['packing'\]"):
        backend.select_kernels({"packing": "packed"})


def test_emulated_npu_runs_the_npu_attention_path():
    backend = get_backend("npu-emulated")
    kernels = backend.select_kernels()
    assert kernels.attention.name == "npu_fusion" and "emulated" in kernels.attention.reason
    assert kernels.fused_ops.name == "npu_fused"
    assert kernels.decode_attention.name == "sdpa" and kernels.decode_attention.fn is None  # never measured on NPU
    assert backend.ops.__name__ == "lmm_r1_ascend.kernels.npu_emulation"
    assert backend.device() == torch.device("cpu")
    # The bound attention runs and is the NPU function with the emulated ops.
    assert kernels.attention.fn.keywords["ops"] is backend.ops
    assert kernels.attention.fn.func.__name__ == "varlen_attention_npu_fusion"


def test_attention_override_and_its_errors():
    backend = get_backend("npu-emulated")
    assert backend.select_kernels({"attention": "reference"}).attention.name == "reference"
    with pytest.raises(ValueError, match="unknown attention implementation 'nope'"):
        backend.select_kernels({"attention": "nope"})


def test_choose_records_the_fallback_chain():
    choice = choose("attention", [
        ("fast", lambda: (False, "library missing"), None),
        ("faster", lambda: (False, "needs a GPU"), None),
        ("slow", lambda: (True, "always works"), len),
    ])
    assert choice.name == "slow" and choice.fn is len
    assert choice.rejected == (("fast", "library missing"), ("faster", "needs a GPU"))
    assert "not fast: library missing" in choice.describe()
    with pytest.raises(BackendUnavailable, match="fast: library missing"):
        choose("attention", [("fast", lambda: (False, "library missing"), None)])
    with pytest.raises(BackendUnavailable, match="requested but cannot be used: library missing"):
        choose("attention", [("fast", lambda: (False, "library missing"), None)], override="fast")


def test_seeding_makes_draws_repeat():
    import random

    import numpy as np

    backend = get_backend("cpu")
    backend.seed_everything(123)
    a = (random.random(), np.random.rand(), torch.rand(3))
    backend.seed_everything(123)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_determinism_switch_toggles_torch(monkeypatch):
    backend = get_backend("cpu")
    try:
        backend.set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        backend.set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()


# ASCEND.md, "More facts": the determinism knobs used for NPU-vs-GPU alignment.
NPU_DETERMINISM = {"HCCL_DETERMINISTIC": "true", "LCCL_DETERMINISTIC": "1", "CLOSE_MATMUL_K_SHIFT": "1",
                   "ATB_MATMUL_SHUFFLE_K_ENABLE": "0"}
NPU_OPT_IN_DETERMINISM = ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_BATCH_INVARIANT")


def _clear_env(monkeypatch, *names):
    for name in names:  # setenv first, so that monkeypatch restores the variable's absence afterwards
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)


def test_npu_determinism_sets_every_alignment_knob_and_unsets_them_again(monkeypatch):
    _clear_env(monkeypatch, *NPU_DETERMINISM, *NPU_OPT_IN_DETERMINISM)
    backend = object.__new__(NpuBackend)
    try:
        backend.set_deterministic(True)
        assert {name: os.environ.get(name) for name in NPU_DETERMINISM} == NPU_DETERMINISM
        # Not set by the switch (docs/docker.md, NPU settings): vLLM's engine core in the rank's own
        # process, and vllm-ascend's beta batch-invariant kernels.
        assert [name for name in NPU_OPT_IN_DETERMINISM if name in os.environ] == []
        assert backend.worker_env()["HCCL_DETERMINISTIC"] == "true"  # and it reaches every Ray worker
        backend.set_deterministic(False)
        assert [name for name in NPU_DETERMINISM if name in os.environ] == []
    finally:
        torch.use_deterministic_algorithms(False)


def test_cpu_memory_stats_are_sane():
    stats = get_backend("cpu").memory_stats()
    assert 0 < stats["allocated"] <= stats["peak_allocated"]


def test_third_party_backend_through_entry_point(monkeypatch):
    class FakeEP:
        name, value = "fakedev", "lmm_r1_ascend.backends.cpu:CpuBackend"

    real = importlib.metadata.entry_points
    monkeypatch.setattr(registry, "entry_points",
                        lambda group: [FakeEP()] if group == registry.ENTRY_POINT_GROUP else real(group=group))
    assert "fakedev" in registry.backend_names()
    assert registry.backend_class("fakedev").__name__ == "CpuBackend"

    class BadEP:
        name, value = "baddev", "os:path"

    monkeypatch.setattr(registry, "entry_points", lambda group: [BadEP()])
    with pytest.raises(TypeError, match="not a subclass"):
        registry.backend_class("baddev")


# ----------------------------------------------------------------- the emulated NPU is the CPU + NPU kernels

def test_emulated_npu_has_exactly_the_cpu_device_facts():
    emu, cpu = get_backend("npu-emulated"), get_backend("cpu")
    assert isinstance(emu, CpuBackend) and not isinstance(emu, NpuBackend)
    assert emu.name == "npu-emulated" and "documented contract, not the hardware" in emu.probe()[1]
    facts = dict(emu.describe(), name="cpu")
    assert facts == cpu.describe()
    assert emu.env_vars == cpu.env_vars and emu.default_dtype == cpu.default_dtype == torch.float32
    assert dict(emu.worker_env([0]), LMM_R1_DEVICE="cpu") == cpu.worker_env([0])
    assert emu.device(2) == cpu.device(2) and emu.ray_actor_options(1) == {}
    assert set(emu.memory_stats()) == set(cpu.memory_stats())


def test_npu_and_its_emulation_share_one_kernel_selection():
    """NpuBackend over the emulated ops chooses what EmulatedNpuBackend chooses; only the label differs."""
    emu = get_backend("npu-emulated")
    npu = object.__new__(NpuBackend)
    npu.__dict__["ops"] = emu.ops  # the cached_property's slot: torch_npu is not installed here
    for a, b in zip(npu.select_kernels(), emu.select_kernels()):
        assert (a.op, a.name, a.candidates) == (b.op, b.name, b.candidates)
        assert a.reason.replace("torch_npu", "emulated (lmm_r1_ascend.kernels.npu_emulation)") == b.reason
    assert npu.select_kernels().attention.fn.keywords["ops"] is emu.ops


def test_kernel_choice_lists_every_candidate_in_preference_order():
    from lmm_r1_ascend.backends import get_backend

    choice = get_backend("npu-emulated").select_kernels().attention
    assert choice.candidates[0] == "npu_fusion" and "reference" in choice.candidates
    assert choice.name in choice.candidates
    forced = get_backend("cpu").select_kernels({"attention": "reference"}).attention
    assert forced.candidates == get_backend("cpu").select_kernels().attention.candidates


def test_cuda_attention_choice_skips_the_half_only_kernels_for_a_float32_model():
    """Runs on CPU: the CUDA backend's selection logic is plain Python (its probes say why)."""
    backend = CudaBackend.__new__(CudaBackend)  # no device needed to ask what it would choose
    fp32 = backend.select_kernels(dtype=torch.float32).attention
    assert fp32.name == "reference"
    assert [name for name, _ in fp32.rejected] == ["flash_attn", "torch_varlen"]
    assert all("float16/bfloat16 only; the model is float32" in why for _, why in fp32.rejected)
    bf16 = backend.select_kernels(dtype=torch.bfloat16).attention
    assert all("float32" not in why for _, why in bf16.rejected)  # rejected here for lack of a GPU instead


# ----------------------------------------------------------------- Ray, worker env, peak memory

def test_ray_actor_options_per_backend():
    assert get_backend("cpu").ray_actor_options(1) == {}
    assert object.__new__(CudaBackend).ray_actor_options(2) == {"num_gpus": 2}
    assert object.__new__(NpuBackend).ray_actor_options(4) == {"resources": {"NPU": 4}}
    with pytest.raises(ValueError, match="devices_per_rank must be > 0"):
        object.__new__(NpuBackend).ray_actor_options(0)


# ASCEND.md's NPU settings ("Environment variables" and "More facts") that Ray workers must see as the
# controller has them.
NPU_FORWARDED = ("PYTORCH_NPU_ALLOC_CONF", "HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT", "HCCL_BUFFSIZE",
                 "HCCL_IF_BASE_PORT", "HCCL_HOST_SOCKET_PORT_RANGE", "HCCL_NPU_SOCKET_PORT_RANGE",
                 "HCCL_OP_EXPANSION_MODE", "TASK_QUEUE_ENABLE", "CPU_AFFINITY_CONF", "VLLM_ASCEND_ENABLE_NZ",
                 *NPU_DETERMINISM, *NPU_OPT_IN_DETERMINISM)


def test_npu_worker_env_forwards_the_controllers_settings_to_ray_workers(monkeypatch):
    """A Ray worker inherits its raylet's environment, not the controller's: worker_env carries them."""
    assert sorted(NpuBackend.forwarded_env_vars) == sorted(NPU_FORWARDED)
    assert set(NpuBackend.forwarded_env_vars) <= set(NpuBackend.env_vars)  # doctor reports them too
    never = ("ASCEND_RT_VISIBLE_DEVICES", "ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME",
             "RAY_EXPERIMENTAL_NOSET_ASCEND_RT_VISIBLE_DEVICES")
    assert [name for name in never if name in NpuBackend.forwarded_env_vars] == []
    npu = object.__new__(NpuBackend)
    _clear_env(monkeypatch, *NPU_FORWARDED)
    for name in never:
        monkeypatch.setenv(name, "7")
    monkeypatch.setenv("HCCL_CONNECT_TIMEOUT", "3600")
    monkeypatch.setenv("HCCL_OP_EXPANSION_MODE", "AIV")
    env = npu.worker_env()
    assert {k: v for k, v in env.items() if k in NPU_FORWARDED} == {
        "HCCL_CONNECT_TIMEOUT": "3600", "HCCL_OP_EXPANSION_MODE": "AIV", "VLLM_ASCEND_ENABLE_NZ": "0",
        "HCCL_HOST_SOCKET_PORT_RANGE": "auto", "HCCL_NPU_SOCKET_PORT_RANGE": "auto"}
    assert [name for name in never if name in env] == []  # Ray sets the visible devices per actor
    assert npu.worker_env([3])["ASCEND_RT_VISIBLE_DEVICES"] == "3"


def test_cuda_worker_env_forwards_the_controllers_settings_to_ray_workers(monkeypatch):
    cuda = object.__new__(CudaBackend)
    _clear_env(monkeypatch, *CudaBackend.forwarded_env_vars)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "eth1")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    env = cuda.worker_env()
    assert {k: v for k, v in env.items() if k in CudaBackend.forwarded_env_vars} == {
        "NCCL_SOCKET_IFNAME": "eth1", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    assert "CUDA_VISIBLE_DEVICES" not in env and "CUDA_VISIBLE_DEVICES" not in CudaBackend.forwarded_env_vars
    assert set(CudaBackend.forwarded_env_vars) <= set(CudaBackend.env_vars)
    assert "PYTORCH_ALLOC_CONF" in CudaBackend.forwarded_env_vars  # PyTorch's newer name, reported and forwarded


def test_npu_worker_env_turns_nz_off_unless_the_user_chose(monkeypatch):
    npu = object.__new__(NpuBackend)
    monkeypatch.delenv("VLLM_ASCEND_ENABLE_NZ", raising=False)
    monkeypatch.delenv("PYTORCH_NPU_ALLOC_CONF", raising=False)
    env = npu.worker_env()
    assert env["VLLM_ASCEND_ENABLE_NZ"] == "0"
    assert "PYTORCH_NPU_ALLOC_CONF" not in env  # no expandable-segments default (vLLM sleep mode, ASCEND.md)
    monkeypatch.setenv("VLLM_ASCEND_ENABLE_NZ", "1")
    assert npu.worker_env()["VLLM_ASCEND_ENABLE_NZ"] == "1"
    assert "VLLM_ASCEND_ENABLE_NZ" not in get_backend("npu-emulated").worker_env()
    monkeypatch.setenv("PYTORCH_NPU_ALLOC_CONF", "expandable_segments:False")
    assert npu.worker_env()["PYTORCH_NPU_ALLOC_CONF"] == "expandable_segments:False"  # the user's, unchanged


def test_npu_worker_env_lets_the_os_pick_hccl_socket_ports_unless_the_user_chose(monkeypatch):
    """Several HCCL processes on one NPU (a colocated vLLM engine, vLLM's engine-core process) collide
    on HCCL's fixed default ports; CANN's answer is "auto". A range the user exported wins."""
    npu = object.__new__(NpuBackend)
    ports = ("HCCL_HOST_SOCKET_PORT_RANGE", "HCCL_NPU_SOCKET_PORT_RANGE")
    _clear_env(monkeypatch, *ports)
    assert {k: npu.worker_env()[k] for k in ports} == {k: "auto" for k in ports}
    monkeypatch.setenv("HCCL_HOST_SOCKET_PORT_RANGE", "60000-60050")
    assert npu.worker_env()["HCCL_HOST_SOCKET_PORT_RANGE"] == "60000-60050"
    assert npu.worker_env()["HCCL_NPU_SOCKET_PORT_RANGE"] == "auto"
    assert not set(ports) & set(get_backend("npu-emulated").worker_env())  # the CPU has no HCCL
    monkeypatch.setenv("HCCL_NPU_SOCKET_PORT_RANGE", "")  # exported empty: the default is off, nothing forwarded
    assert "HCCL_NPU_SOCKET_PORT_RANGE" not in npu.worker_env()
    assert set(NpuBackend.worker_env_defaults) <= set(NpuBackend.forwarded_env_vars)  # doctor reports them


def test_reset_peak_memory_stats(monkeypatch):
    get_backend("cpu").reset_peak_memory_stats()  # lifetime max RSS: nothing to reset, must not fail
    calls = []
    monkeypatch.setattr(torch.accelerator, "reset_peak_memory_stats", lambda device=None: calls.append(device))
    for cls in (CudaBackend, NpuBackend):
        object.__new__(cls).reset_peak_memory_stats("dev")
    assert calls == ["dev", "dev"]


@pytest.mark.parametrize("cls", [CpuBackend, EmulatedNpuBackend, CudaBackend, NpuBackend])
def test_the_device_facts_the_core_reads_agree_with_the_backend_strings(cls):
    """collectives_from_host: the process group is gloo (host memory); rng_device_type: the checkpoint
    saves the device generators of accelerators only (torch.cpu has none). Checked on the class
    facts (nothing probed: the CUDA and NPU classes are checked without their devices)."""
    assert cls.collectives_from_host == (cls.dist_backend == "gloo")
    backend = cls.__new__(cls)  # no __init__: nothing probes or needs the device
    assert backend.rng_device_type() == (None if cls.device_type == "cpu" else cls.device_type)
