"""DeepSpeed's and Ray's NPU code, as installed (deepspeed 0.19.8, ray 2.60.0), driven against the
NPU backend's answers. No torch_npu here: where the vendor code imports it, a stand-in module
is put in its place, and Ray's NPU count comes from a simulated /dev/davinci* listing or from the
resources given to ray.init (what Ray allows instead of detection).
"""

from __future__ import annotations

import os
import sys
import types

import pytest

from lmm_r1_ascend.backends.npu import NpuBackend

pytestmark = pytest.mark.vendor


@pytest.fixture
def fresh_ds_accelerator(monkeypatch):
    """DeepSpeed caches its accelerator in a module global: start from none and restore it after.
    Imported before the stand-in exists (importing deepspeed already asks for its accelerator)."""
    from deepspeed.accelerator import real_accelerator

    monkeypatch.setattr(real_accelerator, "ds_accelerator", None)
    return real_accelerator


@pytest.fixture
def fake_torch_npu(monkeypatch, fresh_ds_accelerator):
    """`import torch_npu` succeeds (DeepSpeed's NPU check is that import); nothing else is offered."""
    monkeypatch.setitem(sys.modules, "torch_npu", types.ModuleType("torch_npu"))


def test_ds_accelerator_npu_selects_deepspeeds_npu_accelerator_with_hccl(monkeypatch, fake_torch_npu,
                                                                        fresh_ds_accelerator):
    """deepspeed/accelerator/real_accelerator.py: DS_ACCELERATOR=npu (what NpuBackend.worker_env sets)
    imports torch_npu and builds npu_accelerator.NPU_Accelerator, whose communication backend is hccl
    and device npu: the same strings the NPU backend gives torch.distributed and torch."""
    monkeypatch.setenv("DS_ACCELERATOR", object.__new__(NpuBackend).worker_env()["DS_ACCELERATOR"])
    accel = fresh_ds_accelerator.get_accelerator()
    assert type(accel).__name__ == "NPU_Accelerator"
    assert accel._name == NpuBackend.ds_accelerator == NpuBackend.device_type
    assert accel.communication_backend_name() == NpuBackend.dist_backend == "hccl"
    assert accel.device_name(3) == f"{NpuBackend.device_type}:3"  # torch.device("npu:3") once torch_npu registers it


def test_ds_auto_detection_takes_npu_whenever_torch_npu_imports(monkeypatch, fake_torch_npu, fresh_ds_accelerator):
    """Without DS_ACCELERATOR DeepSpeed picks npu as soon as torch_npu imports, whatever device the
    run chose: why every backend's worker_env sets DS_ACCELERATOR (the CPU one included)."""
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    assert fresh_ds_accelerator.get_accelerator()._name == "npu"
    from lmm_r1_ascend.backends.cpu import CpuBackend

    assert object.__new__(CpuBackend).worker_env()["DS_ACCELERATOR"] == "cpu"


def test_ds_config_leaves_the_torch_optimizer_in_place():
    """DeepSpeed builds its own optimizer (FusedAdam through the accelerator's op builder; on NPU
    deepspeed/ops/op_builder/npu/fused_adam.py, torch._fused_adamw_ on npu tensors) only when the
    config names one. The engine's config names none and hands DeepSpeed the torch AdamW, so NPU
    trains with the same update rule as CPU and CUDA."""
    from lmm_r1_ascend.engines.deepspeed_engine import deepspeed_config

    for stage in (0, 1, 2, 3):
        config = deepspeed_config(zero_stage=stage, bf16=True, max_norm=1.0, offload_optimizer=stage > 0,
                                  offload_params=stage == 3)
        assert "optimizer" not in config and config["zero_force_ds_cpu_optimizer"] is False


def test_ray_npu_manager_matches_the_backend_and_counts_simulated_devices(monkeypatch):
    """ray/_private/accelerators/npu.py: the resource is "NPU", the variable ASCEND_RT_VISIBLE_DEVICES
    (both the NPU backend's), RAY_EXPERIMENTAL_NOSET_ASCEND_RT_VISIBLE_DEVICES stops Ray setting it
    (doctor reports it; the backend never forwards it). Without AscendCL the count is the number
    of /dev/davinci<N> device files: here a simulated listing of four."""
    from ray._private.accelerators import get_accelerator_manager_for_resource
    from ray._private.accelerators import npu as ray_npu

    manager = get_accelerator_manager_for_resource(NpuBackend.ray_resource)
    assert manager is ray_npu.NPUAcceleratorManager
    assert manager.get_visible_accelerator_ids_env_var() == NpuBackend.visible_devices_env
    assert ray_npu.NOSET_ASCEND_RT_VISIBLE_DEVICES_ENV_VAR in NpuBackend.env_vars
    assert ray_npu.NOSET_ASCEND_RT_VISIBLE_DEVICES_ENV_VAR not in NpuBackend.forwarded_env_vars
    monkeypatch.setitem(sys.modules, "acl", None)  # no AscendCL: the device-file fallback
    davinci = ["/dev/davinci0", "/dev/davinci1", "/dev/davinci2", "/dev/davinci3"]
    monkeypatch.setattr(ray_npu.glob, "glob", lambda pattern: davinci if pattern == "/dev/davinci[0-9]*" else [])
    assert manager.get_current_node_num_accelerators() == 4
    for name in (NpuBackend.visible_devices_env, ray_npu.NOSET_ASCEND_RT_VISIBLE_DEVICES_ENV_VAR):
        monkeypatch.setenv(name, "")  # recorded, so what Ray's code sets below is undone after the test
        monkeypatch.delenv(name)
    manager.set_current_process_visible_accelerator_ids(["2", "3"])
    assert os.environ[NpuBackend.visible_devices_env] == "2,3"
    assert manager.get_current_process_visible_accelerator_ids() == ["2", "3"]
    monkeypatch.setenv(ray_npu.NOSET_ASCEND_RT_VISIBLE_DEVICES_ENV_VAR, "1")
    manager.set_current_process_visible_accelerator_ids(["0"])
    assert os.environ[NpuBackend.visible_devices_env] == "2,3"  # left alone


def test_ray_gives_each_npu_actor_its_own_device_through_its_manager():
    """A local Ray with 3 simulated NPUs (ray.init resources, Ray's alternative to detection) and two
    actors placed with the NPU backend's ray_actor_options(1) and worker_env: Ray assigns each one
    NPU and its manager sets ASCEND_RT_VISIBLE_DEVICES to it; worker_env never sets the variable."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray instance of another test is running in this process")
    npu = object.__new__(NpuBackend)
    env = npu.worker_env()
    assert NpuBackend.visible_devices_env not in env
    ray.init(num_cpus=2, resources={NpuBackend.ray_resource: 3}, include_dashboard=False, log_to_driver=False)
    try:
        @ray.remote(num_cpus=0)
        class Probe:
            def report(self):
                return (os.environ.get("ASCEND_RT_VISIBLE_DEVICES"),
                        ray.get_runtime_context().get_accelerator_ids().get("NPU"))

        options = dict(npu.ray_actor_options(1), runtime_env={"env_vars": env})
        actors = [Probe.options(**options).remote() for _ in range(2)]
        seen = ray.get([a.report.remote() for a in actors], timeout=120)
    finally:
        ray.shutdown()
    ids = [got[1] for got in seen]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 2, seen
    assert [got[0] for got in seen] == [i[0] for i in ids]  # the variable names exactly the assigned NPU
