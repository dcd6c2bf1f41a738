"""A full disk during a checkpoint (issue 32), for real: the run's checkpoints/ directory is a
small tmpfs (needs root and a kernel that allows the mount; skipped otherwise, the failing-writer
cases of tests/unit/test_checkpoint_disk.py always run). The tiny gae run writes ~3.1 MB a checkpoint
(actor, critic and their AdamW states); before the first one its size is estimated (~2.8 MB).

4 MB: step_1 fits, step_2 is refused by the free-space check (its size is now known).
2900 KB: the estimate passes the check but the write runs out of space partway (torch's writer fails).
Each failure is one line naming the directory, the bytes needed and free; no temporary directory is
left; with trainer.on_save_error=skip the run goes on and counts the failures, with stop it ends."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from lmm_r1_ascend.config import load_config
from lmm_r1_ascend.demo.data import prepare_demo_data
from lmm_r1_ascend.trainer import checkpoint as ckpt
from lmm_r1_ascend.trainer.ppo import PPOTrainer

SMALL = ["stage=fre", "device=cpu", "model.pretrain=tiny-qwen2", "data.prompt_data=[demo:arithmetic]",
         "data.max_prompt_len=512", "rollout.rollout_batch_size=2", "rollout.max_new_tokens=8", "reward.workers=1",
         "algorithm.advantage_estimator=gae", "algorithm.n_samples_per_prompt=4", "trainer.train_batch_size=8",
         "trainer.save_steps=1", "trainer.keep_checkpoints=1", "trainer.max_tokens_per_micro_batch=64",
         "trainer.tensorboard=false", "trainer.save_hf=false", "trainer.eval_steps=0",
         "trainer.eval_before_train=false"]


@pytest.fixture
def small_disk(tmp_path, request):
    """output_dir/checkpoints on a tmpfs of request.param bytes."""
    where = tmp_path / "run" / "checkpoints"
    where.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={request.param}", f"lmm{uuid.uuid4().hex[:6]}",
                              str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'})")
    try:
        yield tmp_path / "run"
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _trainer(out, *extra):
    logs: list[str] = []
    cfg = prepare_demo_data(load_config(overrides=[*SMALL, f"output_dir={out}", *extra]))
    return PPOTrainer(cfg, log=logs.append), logs


def _hidden(out) -> list[str]:
    return [p.name for p in ckpt.checkpoint_dir(out).iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("small_disk", [4 * 2**20], indirect=True)
def test_skip_warns_in_one_line_counts_and_trains_on(small_disk):
    out = small_disk
    trainer, logs = _trainer(out, "trainer.max_steps=3", "trainer.on_save_error=skip")
    history = trainer.fit(progress=False)
    assert [h["step"] for h in history] == [1, 2, 3]  # the run went on
    assert [h["checkpoint/save_failures"] for h in history] == [0, 0, 1]  # step 2's failure shows from step 3
    warned = [line for line in logs if "not written" in line]
    assert len(warned) == 2 and all("\n" not in line for line in warned)  # steps 2 and 3 (the final save)
    root = str(ckpt.checkpoint_dir(out))
    for line in warned:
        assert line.startswith("warning: checkpoint step_") and root in line, line
        assert "needs ~" in line and "bytes free" in line and "on_save_error=skip" in line, line
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step_1"]  # kept: pruning only follows a success
    assert not _hidden(out)


@pytest.mark.parametrize("small_disk", [2900 * 1024], indirect=True)
def test_stop_ends_the_run_in_one_line_when_the_write_runs_out_of_space(small_disk):
    out = small_disk
    trainer, _ = _trainer(out, "trainer.max_steps=2", "trainer.on_save_error=stop")
    with pytest.raises(ckpt.CheckpointSaveError) as err:
        trainer.fit(progress=False)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("checkpoint step_1 not written: "), msg
    assert str(ckpt.checkpoint_dir(out)) in msg and "needs ~" in msg and "bytes free" in msg, msg
    assert "no checkpoint was written yet" in msg and "on_save_error=skip" in msg, msg
    assert "not enough free space" not in msg  # the estimate let it start: the write itself failed (torch's writer)
    assert ckpt.list_checkpoints(out) == [] and not _hidden(out)  # the partial write took no space with it
