"""The device seam is honest: the core calls the kernels the backend chose, and nothing is
advertised that is not built (kernel ops, weight-sync transports, Ray options)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lmm_r1_ascend.backends import get_backend
from lmm_r1_ascend.backends.base import KERNEL_OPS
from lmm_r1_ascend.backends.cpu import CpuBackend
from lmm_r1_ascend.backends.cuda import CudaBackend
from lmm_r1_ascend.backends.npu import EmulatedNpuBackend, NpuBackend

ROOT = Path(__file__).resolve().parents[2]
# Ops the core must reach through backend.select_kernels(), never by importing the module.
BACKEND_ONLY = ("lmm_r1_ascend.kernels.logprobs",)


def direct_imports(root: Path, modules=BACKEND_ONLY) -> list[str]:
    """file:line of every import of `modules` (or of a name from them) under `root`."""
    hits = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            if any(n == m or n.startswith(m + ".") for n in names for m in modules):
                hits.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    return hits


def test_core_takes_log_probs_from_the_backend_not_by_import():
    hits = direct_imports(ROOT / "lmm_r1_ascend")
    assert not hits, "the core imports a backend-chosen kernel directly (use backend.select_kernels()):\n" + \
        "\n".join(hits)


def test_lint_catches_a_planted_import(tmp_path):
    (tmp_path / "a.py").write_text("from lmm_r1_ascend.kernels.logprobs import token_logprobs\n")
    (tmp_path / "b.py").write_text("x = 1\nfrom lmm_r1_ascend.kernels import logprobs\n")
    (tmp_path / "c.py").write_text("import lmm_r1_ascend.kernels.logprobs as lp\n")
    (tmp_path / "ok.py").write_text("from lmm_r1_ascend.kernels.packing import cu_seqlens_from_lengths\n")
    assert direct_imports(tmp_path) == [f"{tmp_path.name}/a.py:1", f"{tmp_path.name}/b.py:2",
                                        f"{tmp_path.name}/c.py:1"]


@pytest.mark.parametrize("cls", [CpuBackend, CudaBackend, NpuBackend, EmulatedNpuBackend])
def test_every_advertised_weight_sync_transport_is_built(cls, monkeypatch):
    """"in_process" is the engines' update_weights; "<lib>_broadcast" is a weight_sync side group
    over <lib>. Stores and process groups are faked: only the dispatch on the name is checked."""
    import torch.distributed as dist

    from lmm_r1_ascend.kernels import weight_sync
    from lmm_r1_ascend.rollout.base import RolloutEngine

    monkeypatch.setattr(dist, "TCPStore", lambda *a, **k: object())
    monkeypatch.setattr(dist, "PrefixStore", lambda *a, **k: object())
    monkeypatch.setattr(dist, "ProcessGroupGloo", lambda *a, **k: "gloo group", raising=False)
    for transport in cls.weight_sync_transports:
        if transport == "in_process":
            assert callable(getattr(RolloutEngine, "update_weights", None))
            continue
        lib, _, kind = transport.partition("_")
        assert kind == "broadcast", transport
        try:
            weight_sync.stateless_group(lib, "127.0.0.1", 1, 0, 1)
        except ValueError as err:  # missing hardware library is fine; an unknown name is not
            assert "unknown weight-sync backend" not in str(err), transport
        except (AttributeError, RuntimeError, TypeError):  # e.g. no ProcessGroupNCCL in a CPU build
            pass
    with pytest.raises(ValueError, match="unknown weight-sync backend"):
        weight_sync.stateless_group("cuda_ipc", "127.0.0.1", 1, 0, 1)


def test_ray_bundles_follow_the_backends_actor_options():
    from lmm_r1_ascend.distributed.ray_group import device_bundle

    assert device_bundle(object.__new__(CudaBackend).ray_actor_options(2)) == {"GPU": 2}
    assert device_bundle(object.__new__(NpuBackend).ray_actor_options(1)) == {"NPU": 1}
    assert device_bundle(get_backend("cpu").ray_actor_options(1)) == {}
    with pytest.raises(ValueError, match="num_gpus and resources only"):
        device_bundle({"name": "x"})


@pytest.mark.parametrize("name", ["cpu", "npu-emulated"])
def test_parity_stamp_and_doctor_list_exactly_the_kernel_set(name):
    from lmm_r1_ascend.doctor import collect
    from lmm_r1_ascend.parity.stamp import describe_kernels

    kernels = get_backend(name).select_kernels()
    assert sorted(describe_kernels(kernels)) == sorted(KERNEL_OPS)
    assert list(collect(name)["kernels"]) == list(KERNEL_OPS)
