"""Shared test set-up: hardware markers skip with a reason where the hardware is absent."""

from __future__ import annotations

import importlib.util

import pytest
import torch


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _npu_available() -> bool:
    if importlib.util.find_spec("torch_npu") is None:
        return False
    try:
        import torch_npu  # noqa: F401

        return torch.npu.is_available()
    except Exception:  # torch_npu without CANN raises ImportError or RuntimeError
        return False


def pytest_collection_modifyitems(config, items):
    need_cuda = pytest.mark.skip(reason="needs an NVIDIA GPU: torch.cuda.is_available() is False here")
    need_npu = pytest.mark.skip(reason="needs an Ascend NPU: torch_npu with CANN is not importable here")
    has_cuda, has_npu = None, None
    # The marker itself, not item.keywords: keywords also hold parametrize ids and node names, so
    # a test parametrized with the id "cuda" would be skipped without being marked.
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            has_cuda = _cuda_available() if has_cuda is None else has_cuda
            if not has_cuda:
                item.add_marker(need_cuda)
        if item.get_closest_marker("npu") is not None:
            has_npu = _npu_available() if has_npu is None else has_npu
            if not has_npu:
                item.add_marker(need_npu)


@pytest.fixture
def rng_seed(request) -> int:
    """A fresh seed per test run, printed on failure so a failing draw can be replayed."""
    import os
    import random

    seed = int(os.environ.get("LMM_R1_TEST_SEED", random.randrange(2**31)))
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    print(f"[seed] {request.node.nodeid}: LMM_R1_TEST_SEED={seed}")
    return seed
