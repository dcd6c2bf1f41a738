"""`python -m lmm_r1_ascend.experiment two-stage` with the real train and eval commands.

Default suite: base and FRE-Text at 2 steps on the tiny VL model (commands in-process), the table's
rows, columns and deltas checked against the eval summaries the commands wrote; a rerun runs
nothing. Slow: a real SIGTERM to the experiment during a training run (subprocesses), the rerun
resuming that run from its checkpoint and running only the unfinished variants; every variant.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmm_r1_ascend.experiment.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--model", "tiny-qwen2.5-vl", "--steps", "2", "--n", "2", "--limit", "2", "--max-new-tokens", "8",
        "--set", "rollout.rollout_batch_size=2", "--set", "rollout.max_new_tokens=8", "--set", "trainer.save_steps=1",
        "--set", "reward.workers=0", "--set", "trainer.max_tokens_per_micro_batch=2048"]
RL_SMALL = [x for v in ("fre_text", "fre_multi", "mgt_direct", "mgt_after_fre", "mgt_after_sft")
            for x in ("--set", f"{v}:algorithm.n_samples_per_prompt=2", "--set", f"{v}:trainer.train_batch_size=4")]
SFT_SMALL = ["--set", "sft_text:trainer.train_batch_size=2"]


def _table_rows(md: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| ")]


def _summary(folder: Path, kind: str) -> dict:
    return json.loads((folder / f"eval_{kind}" / "summary.json").read_text())["figures"]["all"]


def test_two_steps_base_and_fre_text_give_the_table_and_a_rerun_runs_nothing(tmp_path, capsys):
    argv = ["two-stage", "--out", str(tmp_path), "--variants", "fre_text", "--in-process", *TINY, *RL_SMALL]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "[variant 1/2] base: start" in out and "[variant 2/2] fre_text: done in" in out
    rows = _table_rows((tmp_path / "table.md").read_text())
    assert rows[0] == ["variant", "text acc (%)", "image acc (%)", "text pass@2 (%)", "image pass@2 (%)",
                       "text length (tokens)", "image length (tokens)"]
    assert [r[0] for r in rows[1:]] == ["base", "FRE-Text"]
    figures = {(v, k): _summary(tmp_path / v, k) for v in ("base", "fre_text") for k in ("text", "image")}
    for col, head in enumerate(rows[0][1:], 1):
        kind, name = head.split(" ", 1)
        fig, scale = {"acc": ("accuracy", 100), "pass@2": ("pass@2", 100), "length": ("response_length/mean", 1)}[
            name.split(" ")[0]]
        base, fre = figures[("base", kind)][fig], figures[("fre_text", kind)][fig]
        assert rows[1][col] == f"{scale * base:.1f}"
        assert rows[2][col] == f"{scale * fre:.1f} ({scale * (fre - base):+.1f})"
    assert (tmp_path / "table.png").stat().st_size > 1000
    assert (tmp_path / "fre_text" / "run" / "hf" / "config.json").exists()
    log = (tmp_path / "commands.log").read_text().splitlines()
    assert len(log) == 5 and "trainer.resume=true" in log[2] and "trainer.max_steps=2" in log[2]
    assert main(argv) == 0  # the rerun: both finished, nothing runs
    assert len((tmp_path / "commands.log").read_text().splitlines()) == 5
    assert capsys.readouterr().out.count("finished earlier, skipped") == 2


def _experiment(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lmm_r1_ascend.experiment", "two-stage", "--out", str(out), *TINY, *RL_SMALL,
            *SFT_SMALL, *extra]


@pytest.mark.slow  # 2 training runs (one resumed) and 6 evaluations as subprocesses: 6 min at load ~9 on 2 cores
def test_sigterm_during_a_variant_stops_it_with_a_checkpoint_and_the_rerun_resumes_only_the_unfinished(tmp_path):
    cmd = _experiment(tmp_path, "--variants", "fre_text", "fre_multi", "--steps", "4")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "fre_multi" / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 500
    while not (metrics.exists() and metrics.read_text().strip()) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # during fre_multi's training, after its first step
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-2000:]
    assert "[variant 3/3] fre_multi: stopped by SIGTERM" in stdout and "rerun the same command" in stderr
    train_log = (tmp_path / "fre_multi" / "train.log").read_text()
    assert "stopped by SIGTERM after step" in train_log and "Traceback" not in train_log
    before = (tmp_path / "commands.log").read_text().splitlines()
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    ran = (tmp_path / "commands.log").read_text().splitlines()[len(before):]
    assert [x.split()[1:3] for x in ran] == [["fre_multi", "train"], ["fre_multi", "eval_text"],
                                             ["fre_multi", "eval_image"]]
    assert "resumed from" in (tmp_path / "fre_multi" / "train.log").read_text()
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps[-1] == 4 and sorted(set(steps)) == [1, 2, 3, 4]
    assert rerun.stdout.count("finished earlier, skipped") == 2
    assert [r[0] for r in _table_rows((tmp_path / "table.md").read_text())[1:]] == ["base", "FRE-Text", "FRE-Multi"]


@pytest.mark.slow  # every variant at 2 tiny steps, subprocesses: 11 min on the 2-core VM at load ~10
def test_every_variant_runs_and_a_failing_variant_is_reported_while_the_others_finish(tmp_path):
    bad = ["--set", "sft_text:data.prompt_data=[/nonexistent/sft.jsonl]"]
    proc = subprocess.run(_experiment(tmp_path, *bad), cwd=ROOT, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: variant sft_text failed (exit 2):"), proc.stderr
    assert "[variant 7/7] mgt_after_sft: not run: it starts from sft_text" in proc.stdout
    rows = [r[0] for r in _table_rows((tmp_path / "table.md").read_text())[1:]]
    assert rows == ["base", "FRE-Text", "FRE-Multi", "MGT from base", "MGT after FRE-Text"]
