"""Graceful stop (issue 32): SIGINT / SIGTERM during the generation, the update or a save of a
real `python -m lmm_r1_ascend.train` run (tiny models, CPU, 2-4 steps), in local and Ray mode.

The first signal lets the step finish, writes an ordinary checkpoint, prints one line with the
resume command and exits 128 + the signal; a second one exits at once, without a traceback or a
partial checkpoint. Running the printed command continues at the next step and ends with the same
metrics as an uninterrupted run, and no process of the run is left behind.

The signal points are deterministic through a test-only driver (DRIVER below, not the product):
it wraps the trainer's rollout and update and the save's test hook, and the process signals
itself there. The processes of a run are counted by an environment tag every child inherits
(reward workers, Ray's raylet, GCS and workers started by the run).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from lmm_r1_ascend.trainer import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]
ARGS = [  # tests/e2e/test_faults.py's small PPO run (actor, reference, critic); 4 steps, a checkpoint at step 3
    "--recipe", "demo_fre", "--no-progress", "stage=fre", "device=cpu", "model.pretrain=tiny-qwen2",
    "data.prompt_data=[demo:arithmetic]", "data.max_prompt_len=512", "rollout.rollout_batch_size=2",
    "rollout.max_new_tokens=12", "reward.workers=1", "algorithm.advantage_estimator=gae",
    "algorithm.n_samples_per_prompt=4", "algorithm.init_kl_coef=0.01", "optim.actor_lr=1e-3", "optim.critic_lr=1e-3",
    "trainer.train_batch_size=4", "trainer.max_steps=4", "trainer.save_steps=3", "trainer.save_hf=false",
    "trainer.max_tokens_per_micro_batch=256", "trainer.tensorboard=false", "trainer.eval_steps=0",
    "trainer.eval_before_train=false",
]
RAY = ["trainer.max_steps=2", "distributed.mode=ray", "distributed.rollout_engines=1",
       "rollout.async_mode=one_step_off", "algorithm.rollout_correction=[token_tis]"]
DRIVER = """
import os, signal, sys
sys.path.insert(0, "tests")
from fault_hooks import install_pauses
point, _, sigs = os.environ["TEST_STOP_AT"].partition(":")  # e.g. update@2:INT or save@1:INT,INT
where, _, at = point.partition("@")
def fire(name, step):
    if name == where and step == int(at):
        for sig in sigs.split(","):
            os.kill(os.getpid(), getattr(signal, "SIG" + sig))
install_pauses(fire)
from lmm_r1_ascend.train import main
sys.exit(main(sys.argv[1:]))
"""


def _env(tag: str, **extra) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LMM_R1_TEST_RUN_TAG": tag, **extra}
    env.pop("LMM_R1_PROGRESS", None)
    return env


def _tagged(tag: str) -> list[int]:
    """Live processes whose environment carries the run's tag (the run and every child it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"LMM_R1_TEST_RUN_TAG={tag}".encode() in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


def _assert_no_process_left(tag: str, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while (left := _tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes of the run left behind: {left}"


def _run(cmd: list[str], tag: str, **env) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=ROOT, env=_env(tag, **env), capture_output=True, text=True, timeout=400)
    finally:
        _assert_no_process_left(tag)


def _stopped_run(out: Path, at: str, *extra: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-c", DRIVER, *ARGS, *extra, f"output_dir={out}"], uuid.uuid4().hex,
                TEST_STOP_AT=at)


def _resume(line: str, tag: str | None = None) -> subprocess.CompletedProcess:
    """Run the command the stop line printed (its `python` is this interpreter)."""
    cmd = shlex.split(line.split("resume with: ", 1)[1])
    assert cmd[:3] == ["python", "-m", "lmm_r1_ascend.train"], cmd
    return _run([sys.executable, *cmd[1:]], tag or uuid.uuid4().hex)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _numbers(row: dict) -> dict:
    return {k: v for k, v in row.items()
            if isinstance(v, float) and not k.startswith(("timing/", "throughput/", "memory/", "rollout/trainer_idle",
                                                          "rollout/engine_idle"))}


def _stop_line(proc: subprocess.CompletedProcess, signame: str) -> str:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith(("stopped by", "interrupted by"))]
    assert len(lines) == 1 and signame in lines[0] and "resume with: python -m lmm_r1_ascend.train" in lines[0], \
        proc.stderr[-3000:]
    return lines[0]


def _no_partial_checkpoint(out: Path) -> None:
    hidden = [p.name for p in ckpt.checkpoint_dir(out).iterdir() if p.name.startswith(".")]
    assert not hidden, hidden


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted local run: every stopped-and-resumed run must end with its metrics."""
    out = tmp_path_factory.mktemp("straight")
    done = _run([sys.executable, "-m", "lmm_r1_ascend.train", *ARGS, f"output_dir={out}"], uuid.uuid4().hex)
    assert done.returncode == 0, done.stderr[-3000:]
    return _rows(out)


def _assert_same_metrics(straight: list[dict], rows: list[dict]) -> None:
    assert [r["step"] for r in rows] == [r["step"] for r in straight] == [1, 2, 3, 4]
    for a, b in zip(straight, rows):  # CPU fp32 and the same seeds: an exact resume (as test_resume.py)
        na, nb = _numbers(a), _numbers(b)
        assert na.keys() == nb.keys()
        for key in na:
            assert nb[key] == pytest.approx(na[key], rel=1e-6, abs=1e-7), (a["step"], key)


def test_signals_during_generation_update_and_save_stop_with_a_checkpoint_and_resume_exactly(tmp_path, straight):
    """One run stopped three times, each time resumed with the command the stop line printed:
    SIGINT during step 1's generation (the step finishes, then step_1 is written), SIGTERM during
    step 2's update (step_2), SIGINT during step 3's own save (save_steps=3: that save completes and
    is the stop's checkpoint); the last resume finishes step 4. The metrics equal the straight run's."""
    out = tmp_path / "run"
    args = [*ARGS, f"output_dir={out}"]
    for at, signame, code, step in (("rollout@1:INT", "SIGINT", 130, 1), ("update@2:TERM", "SIGTERM", 143, 2),
                                    ("save@3:INT", "SIGINT", 130, 3)):
        stopped = _run([sys.executable, "-c", DRIVER, *args], uuid.uuid4().hex, TEST_STOP_AT=at)
        assert stopped.returncode == code, (at, stopped.stderr[-3000:])
        line = _stop_line(stopped, signame)
        assert line.startswith(f"stopped by {signame} after step {step}: checkpoint ") and f"step_{step};" in line, line
        assert shlex.split(line.split("resume with: ", 1)[1]) == ["python", "-m", "lmm_r1_ascend.train", *args]
        assert [r["step"] for r in _rows(out)] == list(range(1, step + 1))
        assert ckpt.latest_checkpoint(out).name == f"step_{step}"
        _no_partial_checkpoint(out)
        if step > 1:
            assert f"resumed from {ckpt.checkpoint_dir(out) / f'step_{step - 1}'}" in stopped.stdout
    done = _resume(line)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    _assert_same_metrics(straight, _rows(out))


def test_a_second_signal_exits_at_once_keeping_the_last_good_checkpoint(tmp_path):
    """Two SIGINTs inside step 2's save (save_steps=1): no step_2, no hidden leftover, step_1 stays."""
    out = tmp_path / "run"
    stopped = _stopped_run(out, "save@2:INT,INT", "trainer.save_steps=1")
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    line = _stop_line(stopped, "SIGINT")
    assert line.startswith("interrupted by SIGINT at once: last good checkpoint ") and "step_1;" in line, line
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step_1"]
    _no_partial_checkpoint(out)


@pytest.mark.slow  # 79 s; the local signal tests cover the stop protocol, this one its Ray + async placement
def test_ray_async_sigterm_during_generation_stops_the_ranks_and_engines_and_resumes(tmp_path):
    """distributed.mode=ray, one rank and one engine actor (one_step_off): the driver stops after the
    step, the engines' in-flight draw is dropped (the checkpoint's data position is before it), the
    ranks write the checkpoint, and no Ray process outlives the run; the resumed run regenerates the
    dropped draw and continues at step 2. Equal metrics to an uninterrupted run are not asserted:
    after a resume the first draw is sampled from the checkpoint's weights, one version fresher than
    in the uninterrupted run (docs/async_rollout.md)."""
    pytest.importorskip("ray", reason="distributed.mode=ray needs Ray (pip install 'lmm-r1-ascend[dist]')")
    out = tmp_path / "run"
    stopped = _stopped_run(out, "rollout@1:TERM", *RAY)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    line = _stop_line(stopped, "SIGTERM")
    assert "after step 1: checkpoint" in line and "step_1;" in line, line
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))
    assert state["step"] == 1 and state["async"]["draw"] == 1  # draw 1 was in flight: it is regenerated
    _no_partial_checkpoint(out)
    done = _resume(line)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[1]["rollout/staleness_max"] == 0.0  # the regenerated draw came from the checkpoint's weights


@pytest.mark.slow  # 3 runs that each start Ray, ~40-60 s apiece on 2 CPU cores
def test_ray_async_sigint_during_the_update_and_sigterm_during_a_save_then_resume(tmp_path):
    """Ray mode, the other two signal points: SIGINT during step 1's update (the ranks finish it, then
    write step_1), SIGTERM during step 2's own save (save_steps=2: the ranks complete it, no second
    save); each stop line's command resumes, and the last run finishes step 3. No process is left."""
    pytest.importorskip("ray", reason="distributed.mode=ray needs Ray (pip install 'lmm-r1-ascend[dist]')")
    out = tmp_path / "run"
    args = [*ARGS, *RAY, "trainer.max_steps=3", "trainer.save_steps=2", f"output_dir={out}"]
    for at, signame, code, step in (("update@1:INT", "SIGINT", 130, 1), ("save@2:TERM", "SIGTERM", 143, 2)):
        stopped = _run([sys.executable, "-c", DRIVER, *args], uuid.uuid4().hex, TEST_STOP_AT=at)
        assert stopped.returncode == code, (at, stopped.stderr[-3000:])
        line = _stop_line(stopped, signame)
        assert f"after step {step}: checkpoint" in line and f"step_{step};" in line, line
        assert [r["step"] for r in _rows(out)] == list(range(1, step + 1))
        _no_partial_checkpoint(out)
    done = _resume(line)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in _rows(out)] == [1, 2, 3]
