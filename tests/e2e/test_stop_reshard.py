"""Resume across world sizes through the trainer (issue 32): a run checkpointed on 2 Ray ranks
under ZeRO-2 / ZeRO-3 resumes on 1 rank (local mode, DeepSpeed), and a 1-rank checkpoint on 2
Ray ranks. The controller's data position and sampling seeds do not depend on the world size, so
the resumed step draws the same prompts and samples as the uninterrupted run; its weights and
optimizer state are the checkpoint's, re-partitioned (DeepSpeed's universal checkpoint). Its
metrics equal the uninterrupted run's (on the SAVING world size) within the float32 reduction-order
tolerance of tests/e2e/test_ray_distributed.py (1e-4 relative); sampled tokens exactly.

Slow (Ray ranks and DeepSpeed start per run, ~1-2 min each on 2 CPU cores); the engine-level
cases are in tests/unit/test_deepspeed_reshard.py.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="distributed.mode=ray needs Ray (pip install 'lmm-r1-ascend[dist]')")
pytest.importorskip("deepspeed", reason="ZeRO needs DeepSpeed (pip install 'lmm-r1-ascend[dist]')")

from lmm_r1_ascend.config import load_config  # noqa: E402
from lmm_r1_ascend.demo.data import prepare_demo_data  # noqa: E402
from lmm_r1_ascend.trainer.ppo import PPOTrainer  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SMALL = ["rollout.rollout_batch_size=4", "algorithm.n_samples_per_prompt=4", "trainer.train_batch_size=8",
         "trainer.max_steps=2", "trainer.save_steps=1", "trainer.keep_checkpoints=0", "trainer.tensorboard=false",
         "trainer.save_hf=false",
         "rollout.max_new_tokens=24", "trainer.max_tokens_per_micro_batch=256", "reward.workers=1",
         "trainer.eval_before_train=false", "trainer.eval_steps=0", "distributed.train_engine=deepspeed"]
WORLD = {1: ["distributed.mode=local"], 2: ["distributed.mode=ray", "distributed.world_size=2"]}
COMPARED = ("reward/mean", "response_length/mean", "loss/policy", "loss/actor", "policy/approx_kl", "actor/grad_norm")


def _overrides(out, world: int, stage: int) -> list[str]:
    return [*SMALL, *WORLD[world], f"distributed.zero_stage={stage}", f"output_dir={out}"]


def _run(out, world: int, stage: int) -> tuple[list[dict], str]:
    """The run's metrics rows and log. One rank: a subprocess (DeepSpeed keeps process groups cached
    in its module, so a second local-mode DeepSpeed run in one process fails); two: Ray, in process."""
    if world == 1:
        done = subprocess.run([sys.executable, "-m", "lmm_r1_ascend.train", "--recipe", "demo_fre", "--no-progress",
                               *_overrides(out, world, stage)], cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        log = done.stdout + done.stderr
    else:
        logs: list[str] = []
        cfg = prepare_demo_data(load_config("demo_fre", overrides=_overrides(out, world, stage)))
        PPOTrainer(cfg, log=logs.append).fit(progress=False)
        log = "\n".join(logs)
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()], log


@pytest.mark.parametrize("stage", [2, 3], ids=["zero2", "zero3"])
@pytest.mark.parametrize("saved, resumed", [(2, 1), (1, 2)], ids=["2to1", "1to2"])
def test_a_run_resumes_on_another_world_size(tmp_path, ray_cluster, stage, saved, resumed):
    straight, _ = _run(tmp_path, saved, stage)  # checkpoints at steps 1 and 2
    shutil.rmtree(tmp_path / "checkpoints" / "step_2")  # as if stopped after step 1 (the demo data stays put)
    rows, log = _run(tmp_path, resumed, stage)
    assert f"resuming a checkpoint of {saved} rank(s) on {resumed}" in log, log[-3000:]
    assert [r["step"] for r in rows] == [1, 2] and rows[0] == straight[0]  # row 1 kept, row 2 written again
    got, want = rows[1], straight[1]
    assert got["reward/mean"] == want["reward/mean"] and got["response_length/mean"] == want["response_length/mean"]
    for key in COMPARED:
        assert math.isclose(got[key], want[key], rel_tol=1e-4, abs_tol=1e-6), (key, got[key], want[key])
