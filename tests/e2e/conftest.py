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


# The small CPU run most e2e tests build on: the demo recipe cut to 3 rollouts of 4 prompts x 4
# samples (2 optimizer steps each), short responses, no checkpoints, exports or TensorBoard.
SMALL_RUN = ("rollout.rollout_batch_size=4", "algorithm.n_samples_per_prompt=4", "trainer.train_batch_size=8",
             "trainer.max_steps=3", "trainer.save_steps=0", "trainer.tensorboard=false", "trainer.save_hf=false",
             "rollout.max_new_tokens=24", "trainer.max_tokens_per_micro_batch=256", "reward.workers=1")


@pytest.fixture(scope="session")
def small_config():
    """small_config(base_dir, name, extra=(), *, recipe="demo_fre", base=SMALL_RUN) -> the TrainConfig of
    `recipe` with `base`, then `extra` overrides, output_dir=base_dir/name, and the demo data prepared.
    Session-scoped, so module-scoped fixtures can build runs too."""
    from pathlib import Path

    from lmm_r1_ascend.config import load_config
    from lmm_r1_ascend.demo.data import prepare_demo_data

    def build(base_dir, name: str, extra=(), *, recipe: str = "demo_fre", base=SMALL_RUN):
        return prepare_demo_data(load_config(recipe, overrides=[*base, *extra, f"output_dir={Path(base_dir) / name}"]))

    return build
