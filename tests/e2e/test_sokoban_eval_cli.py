"""`python -m lmm_r1_ascend.eval` on held-out Sokoban levels in both modes, on the tiny VL model:
the Sokoban figures land in summary.json and agree with the reward's own view of the same
samples (single-shot: success = accuracy, invalid = 1 - format rate)."""

from __future__ import annotations

import json

import pytest

from lmm_r1_ascend.eval import main as eval_main
from lmm_r1_ascend.evaluation.sokoban_eval import build_sokoban_eval_set, multiturn_name

pytestmark = pytest.mark.slow  # two evals of a tiny VL model: ~1 min of CPU each on a busy machine


def _eval(tmp_path, data, name, *overrides):
    out = tmp_path / name
    assert eval_main(["--model", "tiny-qwen2.5-vl", "--data", str(data), "--limit", "2", "--max-new-tokens", "8",
                      "--out", str(out), "--no-progress", "device=cpu", *overrides]) == 0
    return json.loads((out / "summary.json").read_text())["figures"]["sokoban_eval"]


def test_sokoban_figures_in_both_modes(tmp_path, capsys):
    data = build_sokoban_eval_set(tmp_path / "levels", n_levels=2, seed=0, num_boxes=1, train_levels=0)
    single = _eval(tmp_path, data, "single")
    assert single["sokoban/episodes"] == 2 and single["sokoban/mean_turns"] == 1
    assert single["sokoban/success_rate"] == single["accuracy"]
    assert single["sokoban/invalid_action_rate"] == pytest.approx(1 - single["format_rate"])
    assert "Sokoban (single-shot)" in capsys.readouterr().out
    multi = _eval(tmp_path, data.with_name(multiturn_name(data.name)), "multi", "env.name=sokoban", "env.max_turns=3", "env.kwargs={max_invalid: 3}")
    assert multi["sokoban/episodes"] == 2 and 1 <= multi["sokoban/mean_turns"] <= 3
    assert 0 <= multi["sokoban/invalid_action_rate"] <= 1
    assert multi["sokoban/success_rate"] == multi["accuracy"]  # the env-scored trajectories' "solved" status
    assert "Sokoban (step by step, env sokoban)" in capsys.readouterr().out
