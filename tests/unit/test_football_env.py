"""The Football environment (envs/football.py): answer parsing without the game, and, where
gfootball is installed (LMM_FOOTBALL_PYTHON, or the .venv-football docs/agents.md builds), real
episodes rendered headless."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lmm_r1_ascend.envs import football as football_module
from lmm_r1_ascend.envs.football import ACTIONS, FootballEnv, parse_football_actions

ROOT = Path(__file__).resolve().parents[2]


def football_python() -> str | None:
    python = os.environ.get("LMM_FOOTBALL_PYTHON") or str(ROOT / ".venv-football" / "bin" / "python")
    if not Path(python).exists():
        return None
    ok = subprocess.run([python, "-c", "import gfootball.env"], capture_output=True).returncode == 0
    return python if ok else None


def test_the_action_set_and_answer_parsing():
    assert len(ACTIONS) == 20 and ACTIONS[12] == "shot" and ACTIONS[19] == "builtin_ai"  # gfootball's v2 order
    assert parse_football_actions("<think> open goal </think><answer> shot </answer>", 1) == ["shot"]
    assert parse_football_actions("<answer>action_right, Action_Shot</answer>", 2) == ["right", "shot"]
    assert parse_football_actions("<answer> right, shot </answer>", 1) is None  # more than the limit
    assert parse_football_actions("<answer> kick </answer>", 1) is None
    assert parse_football_actions("shot", 1) is None and parse_football_actions(None, 1) is None
    with pytest.raises(ValueError, match="frames_per_action must be an int >= 1"):
        FootballEnv(frames_per_action=0)


@pytest.mark.slow
def test_an_episode_of_the_real_game():
    python = football_python()
    if python is None:
        pytest.skip("gfootball is not installed (docs/agents.md: Football)")
    env = FootballEnv(python=python, max_side=128, render_width=256, frames_per_action=2)
    try:
        obs = env.reset(0, {"scenario": "academy_empty_goal_close"})
        assert max(obs.images[0].size) <= 128 and obs.images[0].mode == "RGB" and "right" in obs.text
        bad = env.step("no answer")
        assert bad.info["invalid_action"] and bad.reward == 0.0 and not bad.done
        total, result = 0.0, None
        for _ in range(40):  # run right, then shoot at the empty goal
            result = env.step("<answer> right </answer>")
            total += result.reward
            if result.done:
                break
            result = env.step("<answer> shot </answer>")
            total += result.reward
            if result.done:
                break
        assert result.done and result.info["frames"] > 0 and total != 0.0
        # the same seed replays the same first frame
        again = env.reset(0, {"scenario": "academy_empty_goal_close"})
        assert again.images[0].tobytes() == obs.images[0].tobytes()
    finally:
        env.close()
    # a closed env hands its game process to the next env: no second start-up
    proc, nxt = football_module._idle[-1][1], FootballEnv(python=python, max_side=128, render_width=256)
    nxt.reset(1, {})
    assert nxt.proc is proc
    nxt.close()


def test_task_rows_from_the_cli(tmp_path, capsys):
    import json

    from lmm_r1_ascend.envs.__main__ import main
    from lmm_r1_ascend.envs.registry import make_env

    assert main(["football", "--out", str(tmp_path), "--n", "2", "--scenario", "academy_3_vs_1_with_keeper"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "football.jsonl").read_text().splitlines()]
    assert [r["scenario"] for r in rows] == ["academy_3_vs_1_with_keeper"] * 2 and rows[0]["datasource"] == "football"
    system, user = json.loads(rows[0]["message"])
    assert "give 1 action, for example" in user["content"] and "<answer>" in system["content"]
    assert "1 to 1" not in user["content"] and "comma-separated" not in user["content"]
    assert main(["football", "--out", str(tmp_path), "--n", "1", "--actions-per-turn", "3"]) == 0
    user = json.loads(json.loads((tmp_path / "football.jsonl").read_text())["message"])[1]
    assert "give 1 to 3 actions as a comma-separated list" in user["content"]
    assert isinstance(make_env("football", max_side=64), FootballEnv)  # registered as a built-in, game not started


@pytest.mark.parametrize("k, says, not_says", [
    (1, ["give 1 action from:", "<answer> action </answer>", "the game after it."], "1 to 1"),
    (2, ["give 1 to 2 actions from:", "<answer> action, action </answer>", "the game after them."], "1 action "),
])
def test_the_env_says_how_many_actions(k, says, not_says):
    """The first observation and the invalid-answer text, with the game faked (no gfootball needed)."""
    import numpy as np

    env = FootballEnv(actions_per_turn=k)
    env._ask = lambda *msg: ("ok", np.zeros((9, 16, 3), np.uint8), {"score": [0, 0], "steps_left": 5})
    first = env.reset(0, {}).text
    assert all(s in first for s in says) and not_says not in first
    invalid = env.step("no answer").observation.text
    assert f"give {'1 action' if k == 1 else f'1 to {k} actions'} from the list" in invalid and not_says not in invalid
