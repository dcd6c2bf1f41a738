"""Checkpoints resume exactly: 4 steps straight == 2 steps, a new process-like trainer, 2 more."""

from __future__ import annotations

import json

import pytest

from lmm_r1_ascend.config import load_config
from lmm_r1_ascend.demo.data import prepare_demo_data
from lmm_r1_ascend.trainer import checkpoint as ckpt
from lmm_r1_ascend.trainer.ppo import PPOTrainer

SMALL = [  # a PPO run with every model (actor, reference, critic) on the tiny text model, CPU
    "stage=fre", "device=cpu", "model.pretrain=tiny-qwen2", "data.prompt_data=[demo:arithmetic]",
    "data.max_prompt_len=512", "rollout.rollout_batch_size=2", "rollout.max_new_tokens=12",
    "reward.workers=1", "algorithm.advantage_estimator=gae", "algorithm.n_samples_per_prompt=4",
    "algorithm.init_kl_coef=0.01", "optim.actor_lr=1e-3", "optim.critic_lr=1e-3", "trainer.train_batch_size=4",
    "trainer.max_steps=4", "trainer.save_steps=0", "trainer.max_tokens_per_micro_batch=256",
    "trainer.tensorboard=false",
]


def _cfg(out, *extra):
    return prepare_demo_data(load_config(overrides=[*SMALL, f"output_dir={out}", *extra]))


def _numbers(row):
    return {k: v for k, v in row.items() if isinstance(v, float) and not k.startswith(("timing/", "throughput/", "memory/"))}


def test_resume_gives_the_same_metrics(tmp_path):
    quiet = dict(log=lambda s: None)
    straight = PPOTrainer(_cfg(tmp_path / "a"), **quiet).fit(progress=False)
    PPOTrainer(_cfg(tmp_path / "b"), **quiet).fit(progress=False, stop_after=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "b")] == ["step_2"]
    resumed = PPOTrainer(_cfg(tmp_path / "b"), **quiet).fit(progress=False)
    assert len(resumed) == 2
    logged = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    for a, b in zip(straight, logged):
        # Same seed, same data order, same sampling seeds, restored RNG/optimizer/schedule: CPU fp32
        # kernels are deterministic here, so the metrics agree exactly (tolerance only for safety).
        na, nb = _numbers(a), _numbers(b)
        assert na.keys() == nb.keys()
        for key in na:
            assert nb[key] == pytest.approx(na[key], rel=1e-6, abs=1e-7), (a["step"], key)
    assert (tmp_path / "b" / "hf" / "config.json").exists()


def test_hf_export_loads_with_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    PPOTrainer(_cfg(tmp_path / "c", "trainer.max_steps=1", "algorithm.advantage_estimator=rloo"),
               log=lambda s: None).fit(progress=False)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "c" / "hf")
    assert model.config._attn_implementation in ("sdpa", "eager")  # not our in-process packed name
    assert (tmp_path / "c" / "hf" / "tokenizer.json").exists()
