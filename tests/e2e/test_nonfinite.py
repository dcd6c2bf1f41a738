"""Non-finite losses through the real trainer (hf engine, CPU, tiny demo models, 3-4 steps): a
NaN planted in one micro-batch's loss (a wrapper engine, tests/fault_hooks.py) skips that
optimizer step and the run goes on; trainer.max_consecutive_skips skips in a row stop the run
with an error naming the step and the last good checkpoint; no checkpoint holds non-finite weights."""

from __future__ import annotations

import json

import pytest
import torch

from fault_hooks import plant_nan_loss
from lmm_r1_ascend.config import load_config
from lmm_r1_ascend.demo.data import prepare_demo_data
from lmm_r1_ascend.engines.base import NonFiniteError
from lmm_r1_ascend.trainer import checkpoint as ckpt
from lmm_r1_ascend.trainer.ppo import PPOTrainer

SMALL = [  # tiny text model with a critic (gae); one rollout of 2 prompts x 4 samples = one optimizer step per role
    "stage=fre", "device=cpu", "model.pretrain=tiny-qwen2", "data.prompt_data=[demo:arithmetic]",
    "data.max_prompt_len=512", "rollout.rollout_batch_size=2", "rollout.max_new_tokens=8",
    "reward.workers=1", "algorithm.advantage_estimator=gae", "algorithm.n_samples_per_prompt=4",
    "algorithm.init_kl_coef=0.0", "optim.actor_lr=1e-3", "optim.critic_lr=1e-3", "trainer.train_batch_size=8",
    "trainer.save_steps=1", "trainer.keep_checkpoints=0", "trainer.max_tokens_per_micro_batch=64",
    "trainer.tensorboard=false", "trainer.save_hf=false",
]


def _trainer(out, *extra):
    logs: list[str] = []
    cfg = prepare_demo_data(load_config(overrides=[*SMALL, f"output_dir={out}", *extra]))
    return PPOTrainer(cfg, log=logs.append)


def _assert_checkpoints_finite(out) -> list:
    found = ckpt.list_checkpoints(out)
    for path in found:
        state = torch.load(path / "actor.pt", map_location="cpu", weights_only=True)
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        assert not bad, f"{path} holds non-finite weights: {bad[:3]}"
    return found


def test_one_nan_micro_batch_skips_that_step_and_the_run_goes_on(tmp_path, monkeypatch):
    plant_nan_loss(monkeypatch, {"actor": {2}})
    history = _trainer(tmp_path, "trainer.max_steps=3").fit(progress=False)
    assert [m["actor/skipped_steps"] for m in history] == [0, 1, 0]
    assert [m["critic/skipped_steps"] for m in history] == [0, 0, 0]  # roles skip independently
    assert len(_assert_checkpoints_finite(tmp_path)) == 3


def test_consecutive_skips_stop_the_run_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    plant_nan_loss(monkeypatch, {"actor": {1, 2, 3}})
    trainer = _trainer(tmp_path, "trainer.max_steps=4")
    with pytest.raises(NonFiniteError) as err:
        trainer.fit(progress=False)
    msg = str(err.value)
    assert "step 3" in msg and "3 consecutive" in msg and "actor" in msg, msg
    assert "last good checkpoint" in msg and "step_2" in msg, msg
    assert "bf16" in msg and "poisoned batch" in msg and "learning rate" in msg and "max_consecutive_skips" in msg
    # step 3 ran, was skipped and stopped the run: no checkpoint after it; the written ones are finite
    assert [p.name for p in _assert_checkpoints_finite(tmp_path)] == ["step_1", "step_2"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["actor/skipped_steps"] for r in rows] == [1, 1, 1]  # the stopping step is logged too


def test_a_nonfinite_weight_is_never_checkpointed(tmp_path):
    trainer = _trainer(tmp_path, "trainer.max_steps=1")
    try:
        actor = trainer.parts.cluster.group.workers[0].actor
        with torch.no_grad():
            next(actor.model.parameters()).view(-1)[0] = float("nan")
        with pytest.raises(NonFiniteError, match="non-finite"):
            trainer.save()
        assert ckpt.list_checkpoints(tmp_path) == []
    finally:
        trainer.parts.close()
