"""Faults: kill -9 during the rollout, the update or a checkpoint write, then run the same command
again. Every resumed run completes, a partly written checkpoint is never picked, and a run killed
between checkpoints ends with the same metrics.jsonl as an uninterrupted one.

The kills aim through tests/fault_hooks.py (LMM_R1_TEST_PAUSE): the driver below wraps the rollout,
the update and the checkpoint write from outside (the product holds no hook; the resumed runs are
plain `python -m lmm_r1_ascend.train`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fault_hooks import PAUSE_ENV, READY_ENV, pause_from_env
from lmm_r1_ascend.trainer import checkpoint as ckpt

ARGS = [  # tests/e2e/test_resume.py's small PPO run (actor, reference, critic), checkpoint at step 2
    "--recipe", "demo_fre", "--no-progress", "stage=fre", "device=cpu", "model.pretrain=tiny-qwen2",
    "data.prompt_data=[demo:arithmetic]", "data.max_prompt_len=512", "rollout.rollout_batch_size=2",
    "rollout.max_new_tokens=12", "reward.workers=1", "algorithm.advantage_estimator=gae",
    "algorithm.n_samples_per_prompt=4", "algorithm.init_kl_coef=0.01", "optim.actor_lr=1e-3", "optim.critic_lr=1e-3",
    "trainer.train_batch_size=4", "trainer.max_steps=4", "trainer.save_steps=2",
    "trainer.max_tokens_per_micro_batch=256", "trainer.tensorboard=false", "trainer.eval_steps=0",
    "trainer.eval_before_train=false",
]
DRIVER = """
import sys
sys.path.insert(0, "tests")
from fault_hooks import install_pauses, pause_from_env
install_pauses(pause_from_env)
from lmm_r1_ascend.train import main
sys.exit(main(sys.argv[1:]))
"""
ROOT = Path(__file__).resolve().parents[2]


def _env(**extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("LMM_R1_PROGRESS", None)
    return env


def _train(out: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmm_r1_ascend.train", *ARGS, f"output_dir={out}", *extra],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _train_and_kill(out: Path, point: str, tmp: Path, timeout: float = 300) -> None:
    """Run with a pause at `point` (e.g. update@4), kill -9 the process once it is parked there."""
    ready = tmp / f"ready-{point}"
    log = open(tmp / f"log-{point}.txt", "w")
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, *ARGS, f"output_dir={out}"], cwd=ROOT,
                            env=_env(**{PAUSE_ENV: f"{point}:600", READY_ENV: str(ready)}),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            assert proc.poll() is None, f"run ended (rc {proc.returncode}) before pausing at {point}: " + \
                (tmp / f"log-{point}.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, f"no pause at {point} within {timeout}s"
            time.sleep(0.2)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _numbers(row):
    return {k: v for k, v in row.items() if isinstance(v, float) and not k.startswith(("timing/", "throughput/", "memory/"))}


def _assert_same_metrics(straight: list[dict], resumed: list[dict]) -> None:
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == [1, 2, 3, 4]
    for a, b in zip(straight, resumed):  # as test_resume.py: CPU fp32 is deterministic here
        na, nb = _numbers(a), _numbers(b)
        assert na.keys() == nb.keys()
        for key in na:
            assert nb[key] == pytest.approx(na[key], rel=1e-6, abs=1e-7), (a["step"], key)


# ---------------------------------------------------------------- atomic writes, in process
def _parts(directory: Path) -> None:
    torch.save({"w": torch.zeros(2)}, directory / "actor.pt")


def _complete(path: Path) -> bool:
    return (path / "state.pt").exists() and (path / "actor.pt").exists()


def test_crash_inside_a_save_leaves_the_previous_checkpoint(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, {}, _parts)

    def dies(directory):
        _parts(directory)
        raise KeyboardInterrupt  # the process dies halfway

    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, {}, dies)
    assert ckpt.latest_checkpoint(tmp_path).name == "step_1"
    ckpt.save_checkpoint(tmp_path, 3, {}, _parts)
    assert sorted(p.name for p in ckpt.checkpoint_dir(tmp_path).iterdir()) == ["step_1", "step_3"]  # leftovers gone


def test_crash_while_resaving_a_step_keeps_it(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, 4, {"v": "old"}, _parts)
    calls = []
    real = os.replace

    def replace(src, dst):  # the rename that would put the new step_4 in place never happens
        calls.append(Path(src).name)
        if Path(src).name == ".step_4.tmp":
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 4, {"v": "new"}, _parts)
    monkeypatch.undo()
    latest = ckpt.latest_checkpoint(tmp_path)  # today: step_4 was deleted first, nothing is left
    assert latest is not None and latest.name == "step_4" and _complete(latest)
    assert ckpt.load_checkpoint(latest)["v"] == "old"


def test_crash_while_pruning_hides_the_half_deleted_checkpoint(tmp_path, monkeypatch):
    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, step, {}, _parts, keep=2)
    real = ckpt.shutil.rmtree

    def rmtree(path, ignore_errors=False):  # dies after deleting the weights, before state.pt
        path = Path(path)
        if (path / "actor.pt").exists() and (path / "state.pt").exists():
            (path / "actor.pt").unlink()
            raise KeyboardInterrupt
        return real(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(ckpt.shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 3, {}, _parts, keep=2)
    monkeypatch.undo()
    found = ckpt.list_checkpoints(tmp_path)
    assert [p.name for p in found] == ["step_2", "step_3"] and all(_complete(p) for p in found)


def test_fault_pause_parses_points(tmp_path, monkeypatch):
    ready = tmp_path / "ready"
    monkeypatch.setenv(PAUSE_ENV, "update@3:0.01, save:0")
    monkeypatch.setenv(READY_ENV, str(ready))
    pause_from_env("update", 2)
    pause_from_env("rollout", 3)
    assert not ready.exists()
    pause_from_env("update", 3)
    assert ready.read_text() == "update@3\n"
    pause_from_env("save", 7)
    assert ready.read_text() == "save@7\n"


# ---------------------------------------------------------------- kill -9, then the same command again
def test_kill_during_a_checkpoint_write_resumes_from_the_last_complete_one(tmp_path):
    """Default suite (~60 s on 2 CPU cores): killed while writing step_4 (weights written, no state.pt)."""
    out = tmp_path / "run"
    _train_and_kill(out, "save@4", tmp_path)
    assert (ckpt.checkpoint_dir(out) / ".step_4.tmp" / "actor.pt").exists()  # the partial write is there...
    assert ckpt.latest_checkpoint(out).name == "step_2"  # ...and never picked
    done = _train(out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout + done.stderr and "step_2 at step 2" in done.stdout + done.stderr
    assert [r["step"] for r in _rows(out)] == [1, 2, 3, 4]
    assert sorted(p.name for p in ckpt.checkpoint_dir(out).iterdir()) == ["step_2", "step_4"]
    # the same output_dir with another model: one line, no `size mismatch` wall
    other = _train(out, "model.pretrain=demo-fre")
    assert other.returncode == 2
    err = [line for line in other.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "belongs to another run: model.actor (saved tiny-qwen2, now demo-fre)" in err[0]
    assert "size mismatch" not in other.stderr


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    done = _train(out)
    assert done.returncode == 0, done.stderr[-3000:]
    return _rows(out)


@pytest.mark.slow  # ~3 subprocess runs of ~30 s each (plus the shared uninterrupted run) on 2 CPU cores
@pytest.mark.parametrize("point", ["rollout@3", "update@4", "save@4", "rollout@1"])
def test_killed_and_resumed_equals_uninterrupted(point, straight, tmp_path):
    """rollout@3: after step_2 was saved; update@4: step 3 logged but not saved (its row is
    rewritten); save@4: mid-write of the last checkpoint; rollout@1: before any checkpoint
    (starts over). Each resumes from its last complete checkpoint and ends as the straight run."""
    out = tmp_path / "run"
    _train_and_kill(out, point, tmp_path)
    expected = None if point == "rollout@1" else "step_2"
    latest = ckpt.latest_checkpoint(out)
    assert (latest.name if latest else None) == expected
    done = _train(out)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_metrics(straight, _rows(out))
