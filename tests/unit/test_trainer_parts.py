"""The small objects beside PPOTrainer's loop, alone: SkipRuns (stop after N skipped optimizer
steps in a row) against a direct count, and Progress's per-step lines and bar postfix.
The trainer-level paths (resume, failed saves, signals) are tests/e2e/test_resume.py,
test_stop_disk.py, test_stop_signals.py and test_nonfinite.py."""

from __future__ import annotations

import random

import pytest

from lmm_r1_ascend.engines.base import NonFiniteError
from lmm_r1_ascend.trainer.progress import Progress
from lmm_r1_ascend.trainer.skips import SkipRuns


def _longest_run_so_far(flags: list[float]) -> list[int]:
    """The run of consecutive 1.0s ending at each position (the obvious loop)."""
    out, run = [], 0
    for f in flags:
        run = run + 1 if f else 0
        out.append(run)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_skip_runs_stop_exactly_when_a_role_reaches_the_limit(seed):
    rng = random.Random(seed)
    limit = 3
    rollouts = [{"actor": [float(rng.random() < 0.6) for _ in range(rng.randint(1, 3))],
                 "critic": [float(rng.random() < 0.3) for _ in range(2)]} for _ in range(12)]
    skips, seen = SkipRuns(limit), {"actor": [], "critic": []}
    for step, flags in enumerate(rollouts, start=1):
        for role in seen:
            seen[role] += flags[role]
        expect = {role: _longest_run_so_far(f)[-1] for role, f in seen.items()}
        if any(n >= limit for n in expect.values()):
            role = "actor" if expect["actor"] >= limit else "critic"  # roles are checked in order, actor first
            with pytest.raises(NonFiniteError, match=rf"step {step}: {expect[role]} consecutive optimizer steps "
                                                     rf"of the {role} were skipped"):
                skips.advance(flags, step)
            return
        skips.advance(flags, step)
        assert skips.runs == expect
    pytest.fail("these seeded rollouts never reach the limit: the stopping path went untested")


def test_skip_runs_reset_on_an_applied_step_and_zero_never_stops():
    skips = SkipRuns(2)
    skips.advance({"actor": [1.0, 0.0, 1.0]}, step=1)  # the applied step in between resets the run
    assert skips.runs == {"actor": 1}
    with pytest.raises(NonFiniteError, match="trainer.max_consecutive_skips=2"):
        skips.advance({"actor": [1.0]}, step=2)
    never = SkipRuns(0)
    never.advance({"actor": [1.0] * 50}, step=1)
    assert never.runs == {"actor": 50}


def test_progress_without_a_bar_prints_one_line_per_step_only_when_asked():
    lines: list[str] = []
    quiet = Progress(lines.append)
    quiet.open(total=4, initial=0, desc="fre", bar=False, step_lines=False)
    quiet.eval_started(8, 4)
    quiet.eval_finished(0, {"eval/all/accuracy": 0.5})
    quiet.step_done(1, 4, "reward 0.100")
    assert lines == []
    chatty = Progress(lines.append)
    chatty.open(total=4, initial=1, desc="fre", bar=False, step_lines=True)
    chatty.step_done(2, 4, "reward 0.100")
    chatty.log("a message")
    assert lines == ["step 2/4: reward 0.100", "a message"]


def test_progress_bar_keeps_the_latest_held_out_accuracy_after_each_step(capsys):
    lines: list[str] = []
    p = Progress(lines.append)
    p.open(total=3, initial=0, desc="fre demo", bar=True, step_lines=True)  # a bar: no per-step lines
    p.eval_finished(0, {"eval/all/accuracy": 0.25})
    p.step_done(1, 3, "reward 0.500")
    bar = p._bar
    assert bar.n == 1 and bar.postfix == "reward 0.500 held-out 0.250"
    p.eval_finished(2, {"eval/all/accuracy": 0.75})
    p.step_done(2, 3, "reward 0.600")
    assert bar.postfix == "reward 0.600 held-out 0.750"
    p.log("above the bar")
    p.close()
    assert p._bar is None and lines == ["above the bar"]
    p.close()  # closing twice is harmless (fit's cleanup closes whatever was opened)
