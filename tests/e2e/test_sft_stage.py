"""The SFT stage end to end on CPU (trainer/sft.py): the CLI runs it, it lowers the loss of
what it trains on, it validates (held-out loss and accuracy), and a stopped run resumes to the
straight run's numbers; a row without a reference stops the CLI in one line."""

from __future__ import annotations

import json

import pytest

from lmm_r1_ascend import train
from lmm_r1_ascend.config import load_config
from lmm_r1_ascend.demo.data import prepare_demo_data
from lmm_r1_ascend.trainer import checkpoint as ckpt
from lmm_r1_ascend.trainer.sft import SFTTrainer

SMALL = ["rollout.rollout_batch_size=8", "trainer.train_batch_size=4", "trainer.max_steps=2", "trainer.save_steps=0",
         "trainer.tensorboard=false", "trainer.save_hf=false", "eval.limit=4", "eval.n_samples=2",
         "trainer.eval_steps=2", "rollout.max_new_tokens=24"]


def _cfg(out, *extra):
    return prepare_demo_data(load_config("demo_sft", overrides=[*SMALL, f"output_dir={out}", *extra]))


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sft_cli_trains_and_validates(tmp_path, capsys):
    assert train.main(["--stage", "sft", "--no-progress", *SMALL, f"output_dir={tmp_path / 'a'}"]) == 0
    printed = capsys.readouterr().out
    assert "stage sft" in printed and "held-out loss at step 2" in printed and "step 2/2: loss" in printed
    straight = _rows(tmp_path / "a")
    assert [r["step"] for r in straight] == [0, 1, 2]  # the eval before training is step 0
    first, last = straight[1], straight[2]
    assert first["loss/sft"] > 0 and "reward/mean" not in first and "loss/policy" not in first
    assert first["actor/grad_norm"] > 0 and first["actor/skipped_steps"] == 0
    assert straight[0]["eval/loss"] > last["eval/loss"]  # lr 1e-3 on worked references: two steps lower it
    assert "eval/all/accuracy" in straight[0] and "eval/all/accuracy" in last


def test_sft_resumes_to_the_straight_run(tmp_path):
    quiet, no_eval = dict(log=lambda s: None), ("trainer.eval_steps=0", "trainer.eval_before_train=false")
    straight = SFTTrainer(_cfg(tmp_path / "a", *no_eval), **quiet).fit(progress=False)
    SFTTrainer(_cfg(tmp_path / "b", *no_eval), **quiet).fit(progress=False, stop_after=1)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "b")] == ["step_1"]
    resumed = SFTTrainer(_cfg(tmp_path / "b", *no_eval), **quiet).fit(progress=False)
    assert len(resumed) == 1
    logged = _rows(tmp_path / "b")
    assert [r["step"] for r in logged] == [1, 2]
    for a, b in zip(straight, logged):
        for key in ("loss/sft", "actor/grad_norm", "entropy"):
            # CPU fp32 is deterministic here: same seed, data order, restored optimizer and schedule
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), (a["step"], key)


def test_sft_without_references_is_one_line(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"message": json.dumps([{"role": "user", "content": "What is 2 + 2?"}]),
                                "answer": "4"}) + "\n")
    code = train.main(["--stage", "sft", *SMALL, f"data.prompt_data=[{rows}]", f"output_dir={tmp_path / 'c'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert f"{rows}:1" in err and "'response'" in err and "data.on_bad_line=skip" in err


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_sft_on_two_ray_ranks_follows_the_single_process_run(tmp_path, ray_cluster, zero_stage):
    """Data-parallel SFT through DeepSpeed ZeRO on 2 Ray ranks: the same losses as one process
    (the shard plan's gradient contract), up to fp32 reduction order."""
    no_eval = ("trainer.eval_steps=0", "trainer.eval_before_train=false")
    local = SFTTrainer(_cfg(tmp_path / "local", *no_eval), log=lambda s: None).fit(progress=False)
    ray = SFTTrainer(_cfg(tmp_path / f"z{zero_stage}", *no_eval, "distributed.mode=ray", "distributed.world_size=2",
                          "distributed.train_engine=deepspeed", f"distributed.zero_stage={zero_stage}"),
                     log=lambda s: None).fit(progress=False)
    for a, b in zip(local, ray):
        # fp32, 2 ranks: gradients all-reduced in another order; 1e-4 relative over 2 Adam steps at lr 1e-3
        assert b["loss/sft"] == pytest.approx(a["loss/sft"], rel=1e-4), a["step"]


def test_sft_on_image_rows_trains_the_vl_model(tmp_path):
    """Image rows through the SFT step: the prompts' pixels ride along to the packed mRoPE forward
    (an image-pad prompt without them fails in the model), and the untrained tiny VL model's loss
    is about log(vocab), finite."""
    import math

    cfg = _cfg(tmp_path / "vl", "model.pretrain=tiny-qwen2.5-vl", "data.prompt_data=[demo:arithmetic-images]",
               "data.max_prompt_len=1024", "rollout.rollout_batch_size=4", "trainer.max_steps=1",
               "trainer.eval_steps=0", "trainer.eval_before_train=false")
    trainer = SFTTrainer(cfg, log=lambda s: None)
    [row] = trainer.fit(progress=False)
    assert 1.0 < row["loss/sft"] < 2 * math.log(trainer.parts.tokenizer.vocab_size + 64) and row["actor/grad_norm"] > 0
