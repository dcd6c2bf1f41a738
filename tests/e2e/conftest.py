"""End-to-end test set-up shared by the Ray tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance per test module (about 10 s to start), 4 logical CPUs: room for
    2 training ranks and engine actors on the 2-core machine (Ray's CPUs only steer placement)."""
    ray = pytest.importorskip("ray", reason="distributed.mode=ray needs Ray (pip install 'lmm-r1-ascend[dist]')")
    from lmm_r1_ascend.distributed.ray_group import ray_init

    ray_init("", num_cpus=4)
    yield
    ray.shutdown()
