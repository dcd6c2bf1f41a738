"""Run fingerprints: a checkpoint of another run is refused in one line; allowed keys resume."""

from __future__ import annotations

import pytest
import torch

from lmm_r1_ascend.config import load_config
from lmm_r1_ascend.config.errors import SetupError
from lmm_r1_ascend.demo.data import prepare_demo_data
from lmm_r1_ascend.trainer import checkpoint as ckpt
from lmm_r1_ascend.trainer import fingerprint as fp

SMALL = [  # tests/e2e/test_resume.py's tiny CPU run, without a critic (faster)
    "stage=fre", "device=cpu", "model.pretrain=tiny-qwen2", "data.prompt_data=[demo:arithmetic]",
    "data.max_prompt_len=512", "rollout.rollout_batch_size=2", "rollout.max_new_tokens=8",
    "reward.workers=1", "algorithm.advantage_estimator=rloo", "algorithm.n_samples_per_prompt=2",
    "algorithm.init_kl_coef=0.0", "trainer.train_batch_size=4", "trainer.max_steps=3", "trainer.save_steps=0",
    "trainer.max_tokens_per_micro_batch=256", "trainer.tensorboard=false", "trainer.eval_steps=0",
    "trainer.eval_before_train=false", "trainer.save_hf=false",
]
INFO = {"name": "tiny-qwen2", "config": {"hidden_size": 64, "vocab_size": 100}, "tokenizer_vocab_size": 100}


def _fp(*overrides, info=INFO):
    return fp.run_fingerprint(load_config(overrides=[*SMALL, *overrides]), info)


def test_allowed_keys_do_not_count():
    base = _fp()
    changed = _fp("trainer.max_steps=10", "trainer.save_steps=5", "trainer.keep_checkpoints=1",
                  "trainer.tensorboard=true", "trainer.eval_steps=3", "data.eval_data=[x.jsonl]", "eval.n_samples=4", "output_dir=/elsewhere",
                  "trainer.max_tokens_per_micro_batch=512")
    assert fp.compare_fingerprints(base, changed) == []
    assert fp.is_allowed("trainer.max_steps") and fp.is_allowed("eval.limit") and not fp.is_allowed("seed")


@pytest.mark.parametrize("override, key", [
    ("seed=7", "seed"), ("algorithm.eps_clip=0.3", "algorithm.eps_clip"),
    ("rollout.rollout_batch_size=4", "rollout.rollout_batch_size"),
    ("algorithm.n_samples_per_prompt=4", "algorithm.n_samples_per_prompt"),
    ("trainer.train_batch_size=2", "trainer.train_batch_size"), ("distributed.zero_stage=3", "distributed.zero_stage"),
    ("model.critic_pretrain=tiny-qwen2", "model.critic_pretrain"), ("stage=mgt", "stage"),
    ("model.freeze_prefixes=[model.embed_tokens]", "model.freeze_prefixes"),
])
def test_run_keys_count(override, key):
    assert fp.compare_fingerprints(_fp(), _fp(override)) == [key]


def test_model_identity_from_config_json():
    tiny = fp.model_info(load_config(overrides=SMALL))
    demo = fp.model_info(load_config(overrides=[*SMALL, "model.pretrain=demo-fre"]))
    assert tiny["name"] == "tiny-qwen2" and demo["name"] == "demo-fre"
    assert demo["config"]["hidden_size"] == 128 and demo["config"]["num_hidden_layers"] == 4
    assert demo["tokenizer_vocab_size"] > 0 and len(demo["tokenizer_sha256"]) == 64
    diff = fp.compare_fingerprints(_fp(info=tiny), _fp(info=demo))
    assert "model.actor" in diff and "tokenizer.sha256" in diff


def test_message_is_one_line():
    saved, now = _fp(), _fp("seed=7", info={**INFO, "name": "demo-fre"})
    msg = fp.mismatch_message("/x/step_2", saved, now, fp.compare_fingerprints(saved, now))
    assert "\n" not in msg
    assert msg == ("checkpoint /x/step_2 belongs to another run: model.actor (saved tiny-qwen2, now demo-fre), "
                   "seed (saved 42, now 7); use a new output_dir, or trainer.resume=false to start over")


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory):
    """A run that trained one step and left its checkpoint (step_1), as an interruption would."""
    from lmm_r1_ascend.trainer.ppo import PPOTrainer

    out = tmp_path_factory.mktemp("fp") / "run"
    PPOTrainer(_cfg(out), log=lambda s: None).fit(progress=False, stop_after=1)
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step_1"]
    return out


def _cfg(out, *extra):
    return prepare_demo_data(load_config(overrides=[*SMALL, f"output_dir={out}", *extra]))


def test_resume_with_another_model_stops_in_one_line(one_step_run):
    from lmm_r1_ascend.trainer.ppo import PPOTrainer

    with pytest.raises(SetupError) as err:  # today: a wall of `size mismatch` from load_state_dict
        PPOTrainer(_cfg(one_step_run, "model.pretrain=demo-fre"), log=lambda s: None).fit(progress=False)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"checkpoint {one_step_run / 'checkpoints' / 'step_1'} belongs to another run: ")
    assert "model.actor (saved tiny-qwen2, now demo-fre)" in msg and msg.endswith("trainer.resume=false to start over")
    assert [p.name for p in ckpt.list_checkpoints(one_step_run)] == ["step_1"]  # nothing was touched


def test_resume_with_changed_max_steps_and_old_checkpoints(one_step_run, tmp_path):
    import shutil

    from lmm_r1_ascend.trainer.ppo import PPOTrainer

    logs = []
    # an older checkpoint (no fingerprint) resumes with a warning
    old = tmp_path / "old"
    shutil.copytree(one_step_run, old)
    state_file = old / "checkpoints" / "step_1" / "state.pt"
    state = torch.load(state_file, weights_only=False)
    state.pop("fingerprint")
    torch.save(state, state_file)
    history = PPOTrainer(_cfg(old, "trainer.max_steps=2"), log=logs.append).fit(progress=False)
    assert len(history) == 1 and any("has no run fingerprint" in line for line in logs)
    # max_steps may change on resume (3 when saved, 2 now)
    logs.clear()
    history = PPOTrainer(_cfg(one_step_run, "trainer.max_steps=2"), log=logs.append).fit(progress=False)
    assert [r["step"] for r in history] == [2] and any("resumed from" in line for line in logs)
    assert "fingerprint" in ckpt.load_checkpoint(ckpt.latest_checkpoint(one_step_run))
