"""The hccl weight-sync group, built as torch_npu builds its own, and created once per member.

No CANN here, so `torch_npu._C._distributed_c10d` is a stand-in with the shape of the real
binding in the pinned torch-npu 2.10.0.post4 (its Init.cpp at the wheel's git_version, tag
v26.1.0-pytorch2.10.0): `ProcessGroupHCCL(store, rank, size, options)` with
`ProcessGroupHCCL.Options` deriving from torch's `Backend.Options` (whose `_timeout` accepts only
a timedelta), the form torch_npu's own "hccl" registration calls
(torch_npu/_init/registry/distributed.py; tests/vendor/test_runtime_vendor.py reads that file in
the wheel). Behind the stand-in a gloo group moves the bytes, so the project's real sender (trainer
rank 0's end, RolloutEngine.sender_group) and receiver (the vLLM worker extension) run three syncs
over it; the stand-in counts the communicators built.
"""

from __future__ import annotations

import sys
import threading
import types
from datetime import timedelta

import pytest
import torch
import torch._C._distributed_c10d as c10d
import torch.distributed as dist

from lmm_r1_ascend.distributed.net import free_port
from lmm_r1_ascend.kernels import weight_sync
from lmm_r1_ascend.kernels.weight_sync import send_buckets
from lmm_r1_ascend.rollout import vllm_worker_ext
from lmm_r1_ascend.rollout.base import RolloutEngine
from lmm_r1_ascend.rollout.vllm_worker_ext import WeightSyncExtension, meta_to_wire, weights_meta


class _Options(c10d.Backend.Options):
    """torch_npu's ProcessGroupHCCL.Options: a subclass of torch's Backend.Options (its `_timeout`
    is torch's own property: a non-timedelta raises TypeError), default-constructed."""

    def __init__(self):
        super().__init__("hccl")


def _fake_torch_npu(monkeypatch) -> list[tuple[int, int, timedelta]]:
    """Install the stand-in; returns the list of (rank, size, timeout) of every group built."""
    created: list[tuple[int, int, timedelta]] = []
    lock = threading.Lock()

    class ProcessGroupHCCL:
        Options = _Options

        def __new__(cls, store, rank, size, options, *extra):
            if extra or not isinstance(options, _Options):
                raise TypeError(f"ProcessGroupHCCL(store, rank, size, options): got {type(options).__name__}")
            with lock:
                created.append((rank, size, options._timeout))
            return dist.ProcessGroupGloo(store, rank, size, options._timeout)

    c10d_mod = types.ModuleType("torch_npu._C._distributed_c10d")
    c10d_mod.ProcessGroupHCCL = ProcessGroupHCCL
    c_mod = types.ModuleType("torch_npu._C")
    c_mod._distributed_c10d = c10d_mod
    root = types.ModuleType("torch_npu")
    root._C = c_mod
    for name, mod in (("torch_npu", root), ("torch_npu._C", c_mod), ("torch_npu._C._distributed_c10d", c10d_mod)):
        monkeypatch.setitem(sys.modules, name, mod)
    return created


def test_hccl_group_is_built_with_options_carrying_the_timeout(monkeypatch):
    created = _fake_torch_npu(monkeypatch)
    group = weight_sync.stateless_group("hccl", "127.0.0.1", free_port(), 0, 1, timeout_s=123)
    assert created == [(0, 1, timedelta(seconds=123))]
    t = torch.arange(5.0)
    weight_sync.group_broadcast(group, t, 0)  # a usable group comes back
    assert torch.equal(t, torch.arange(5.0))


class _TinyModel(torch.nn.Module):
    """What vLLM's model offers the extension: parameters and load_weights((name, tensor) pairs)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(11, 6)
        self.proj = torch.nn.Linear(6, 4)

    def load_weights(self, weights):
        with torch.no_grad():
            for name, tensor in weights:
                self.get_parameter(name).copy_(tensor)


class _Worker(WeightSyncExtension):
    """A vLLM worker as the extension sees one: model_runner.model, no reload_weights (vllm-ascend's)."""

    def __init__(self):
        self.model_runner = types.SimpleNamespace(model=_TinyModel())


def test_three_syncs_over_hccl_build_one_communicator_per_member(monkeypatch, rng_seed):
    created = _fake_torch_npu(monkeypatch)
    monkeypatch.setattr(vllm_worker_ext, "layerwise_reload", lambda: None)  # vLLM absent here anyway
    gen = torch.Generator().manual_seed(rng_seed)
    trainer = _TinyModel()
    worker = _Worker()
    versions = []
    for _ in range(3):
        state = {n: torch.randn(p.shape, generator=gen) for n, p in trainer.named_parameters()}
        versions.append([(n, state[n]) for n, _ in trainer.named_parameters()])
    meta = weights_meta(versions[0])
    port, errors, received = free_port(), [], []
    bucket = 64  # bytes: several buckets per sync

    def engine_side():
        try:
            worker.lmm_init_weight_sync_group("127.0.0.1", port, 1, 2, "hccl", 60)
            for _ in versions:
                worker.lmm_receive_broadcast(meta_to_wire(meta), bucket)
                received.append({n: p.detach().clone() for n, p in worker.model_runner.model.named_parameters()})
        except BaseException as err:  # surfaced below
            errors.append(err)

    thread = threading.Thread(target=engine_side)
    thread.start()
    group = RolloutEngine.sender_group("127.0.0.1", port, 2, "hccl", 60)
    for named in versions:
        send_buckets(group, meta, iter(named), bucket_bytes=bucket)
    thread.join(timeout=120)
    assert not thread.is_alive() and not errors, errors
    assert sorted(created) == [(0, 2, timedelta(seconds=60)), (1, 2, timedelta(seconds=60))]
    for named, got in zip(versions, received):  # every sync arrives bit-exact: none is stale
        assert all(torch.equal(got[n], t) for n, t in named)
    with pytest.raises(RuntimeError, match="already joined"):
        worker.lmm_init_weight_sync_group("127.0.0.1", free_port(), 1, 2, "hccl", 60)
    assert len(created) == 2


def test_worker_without_reload_weights_loads_inside_vllms_layerwise_reload(monkeypatch):
    """vllm-ascend's NPUWorker has no reload_weights: the extension runs the layerwise reload around
    model.load_weights, in the order (and with the arguments) its own start/finish_weight_update use."""
    calls = []
    monkeypatch.setattr(vllm_worker_ext, "layerwise_reload", lambda: (
        lambda model: calls.append(("initialize", model, torch.get_default_device())),
        lambda model, model_config: calls.append(("finalize", model, model_config))))
    worker = _Worker()
    worker.device, worker.model_config = torch.device("meta"), object()  # under the worker's device, not the default
    model = worker.model_runner.model
    model.load_weights = lambda weights: calls.append(("load", [n for n, _ in weights]))
    worker.lmm_stage_weights(vllm_worker_ext.pack_weights([("proj.bias", torch.ones(4))]))
    assert worker.lmm_commit_weights() == 1
    assert calls == [("initialize", model, torch.device("meta")), ("load", ["proj.bias"]),
                     ("finalize", model, worker.model_config)]


@pytest.mark.parametrize("device,expected", [("npu", {"additional_config": {"weight_nz_mode": 0}}), ("cpu", {})])
def test_vllm_engine_passes_the_backends_own_vllm_switches(monkeypatch, device, expected):
    """On NPU the engine hands vllm.LLM vllm-ascend's own NZ switch (additional_config weight_nz_mode=0,
    read by its AscendConfig: tests/vendor/test_runtime_vendor.py); other devices add nothing."""
    import lmm_r1_ascend.backends as backends
    from lmm_r1_ascend.backends.cpu import CpuBackend
    from lmm_r1_ascend.backends.npu import NpuBackend
    from lmm_r1_ascend.config.schema import RolloutConfig
    from lmm_r1_ascend.rollout.base import EngineRun
    from lmm_r1_ascend.rollout.vllm_engine import VLLMRolloutEngine

    chosen = {"npu": object.__new__(NpuBackend), "cpu": object.__new__(CpuBackend)}
    monkeypatch.setattr(backends, "get_backend", lambda name: chosen[name])
    seen = {}
    monkeypatch.setattr(VLLMRolloutEngine, "__init__", lambda self, path, **kw: seen.update(kw))
    VLLMRolloutEngine.from_config(RolloutConfig(), EngineRun(seed=3, device=device, n_samples_per_prompt=2),
                                  "/models/x", torch.device("cpu"), torch.bfloat16)
    assert {k: v for k, v in seen.items() if k == "additional_config"} == expected
    assert seen["seed"] == 3 and seen["dtype"] == "bfloat16"
