"""Sokoban reward = best_reward + 0.5*format + action_term + think_term (RECIPE.md),
checked against totals computed by hand on small levels with known solutions."""

from __future__ import annotations

import random

import numpy as np
import pytest

from lmm_r1_ascend.envs.sokoban import save_level
from lmm_r1_ascend.envs.sokoban_generate import generate_level
from lmm_r1_ascend.rewards.sokoban import (
    SokobanReward, action_term, max_consecutive_repeats, parse_actions, sokoban_score,
)
from lmm_r1_ascend.rewards.types import RewardInput

# player, box, floor, target in a corridor: "right, right" solves it
LINE = np.array([[0, 0, 0, 0, 0, 0],
                 [0, 5, 4, 1, 2, 0],
                 [0, 0, 0, 0, 0, 0]])
# box next to a target, a second (stuck) box: a box goes on and then off a target
ONOFF = np.array([[0, 0, 0, 0, 0, 0, 0, 0],
                  [0, 5, 4, 2, 1, 4, 2, 0],
                  [0, 0, 0, 0, 0, 0, 0, 0]])


def resp(actions: str, think: str = "") -> str:
    return f"<think>{think}</think><answer>{actions}</answer>"


# (level, response, expected total, hand computation)
HAND = [
    # steps -0.1, then -0.1+1+10: cumulative -0.1, 10.8 -> best 10.8; n=2 -> 0.1;
    # think words longer than 1 char: push, it, right, twice -> 0.004
    (LINE, resp("right, right", " push it right twice "), 10.8 + 0.5 + 0.1 + 0.004),
    (LINE, resp(" RIGHT ,Right"), 10.8 + 0.5 + 0.1),  # tokens are stripped, case-insensitive
    # into the wall: -0.1 -> best stays 0; n=1 -> 0.05; "a b c" has no word > 1 char
    (LINE, resp("left", "a b c"), 0.0 + 0.5 + 0.05),
    # box onto target (0.9), off it (-1.1), blocked (-0.1): cumulative 0.9, -0.2, -0.3
    (ONOFF, resp("right, right, right"), 0.9 + 0.5 + 0.15),
    # 48 moves into the wall, then the 2 pushes within the first 50 actions:
    # cumulative -4.8, -4.9, -4.9+10.9 = 6.0 -> best 6.0; n=50 -> 1-(30/30)^2*0.2 = 0.8;
    # "left" 48 times in a row -> repeat penalty: min(0, 0.8-0.2) = 0
    (LINE, resp(", ".join(["left"] * 48 + ["right", "right"])), 6.0 + 0.5 + 0.0),
    # the solving pushes come after action 50: never simulated -> best 0;
    # n=52 -> 1-(32/30)^2*0.2 = 0.7724..., penalty -> 0
    (LINE, resp(", ".join(["left"] * 50 + ["right", "right"])), 0.0 + 0.5 + 0.0),
    # 100 alternating moves: 2-gram "up down" repeats 50 times -> penalty;
    # n=100 -> 1-(80/30)^2*0.2 = -0.42222; min(0, -0.62222) = -0.62222
    (LINE, resp(", ".join(["up", "down"] * 50)), 0.0 + 0.5 + (1 - (80 / 30) ** 2 * 0.2 - 0.2)),
    # 26 moves with no n-gram (n<=5) repeated 8 times in a row (period 6):
    # n=26 -> 1-(6/30)^2*0.2 = 0.992; the first 2 moves solve: best 10.8
    (LINE, resp(", ".join(["right", "right"] + ["up", "down", "left", "up", "left", "down"] * 4)),
     10.8 + 0.5 + (1 - (6 / 30) ** 2 * 0.2)),
    # 250 distinct words in think -> 0.25, capped at 0.2
    (LINE, resp("right, right", " ".join(f"w{i}" for i in range(250))), 10.8 + 0.5 + 0.1 + 0.2),
    # 8 copies of a think phrase -> repeat penalty on a short answer: min(0, 0.1-0.2) = -0.1
    (LINE, resp("right, right", " go on" * 8), 10.8 + 0.5 - 0.1 + 0.016),
    # 7 copies are allowed
    (LINE, resp("right, right", " go on" * 7), 10.8 + 0.5 + 0.1 + 0.014),
    # format failures: total 0, no simulation
    (LINE, resp("right, jump"), 0.0),
    (LINE, resp("right right"), 0.0),  # not comma-separated
    (LINE, resp("right, right,"), 0.0),  # empty token
    (LINE, resp(""), 0.0),
    (LINE, "<answer>right, right</answer>", 0.0),  # no think
    (LINE, resp("right") + "<answer>right</answer>", 0.0),  # two answers
    (LINE, "<think><think></think><answer>right, right</answer>", 0.0),
]


@pytest.mark.parametrize("level,response,expected", HAND)
def test_hand_computed_totals(level, response, expected):
    s = sokoban_score(response, level)
    # float sums of 0.1 steps: 1e-9 is far below any rule's granularity (0.001)
    assert s.total == pytest.approx(expected, abs=1e-9)
    assert s.total == pytest.approx(sum(s.components().values()), abs=1e-12)


def test_format_rules():
    assert parse_actions(resp("Up,DOWN , left,right")) == ["up", "down", "left", "right"]
    assert parse_actions(resp("up") + "</think>") is None
    # The recipe's Sokoban format checks tag counts and answer tokens, not their order.
    assert parse_actions("<answer>up</answer><think>x</think>") == ["up"]
    assert parse_actions(42) is None  # type: ignore[arg-type]


def test_action_term_formula():
    assert [action_term(n) for n in (0, 1, 19)] == pytest.approx([0.0, 0.05, 0.95])
    assert [action_term(n) for n in (20, 35, 50, 80)] == pytest.approx([1.0, 0.95, 0.8, 0.2])


def brute_force_repeats(words, max_n=5):
    best = 1 if words else 0
    for n in range(1, max_n + 1):
        for i in range(len(words) - n + 1):
            k = 1
            while words[i + k * n: i + (k + 1) * n] == words[i: i + n]:
                k += 1
            best = max(best, k)
    return best


def test_repeat_counter_matches_brute_force(rng_seed):
    rng = random.Random(rng_seed)
    for _ in range(300):
        vocab = ["up", "down", "left"][: rng.randint(1, 3)]
        words = [rng.choice(vocab) for _ in range(rng.randint(0, 40))]
        assert max_consecutive_repeats(words) == brute_force_repeats(words), words


def test_solver_plan_gets_the_solved_reward(tmp_path, rng_seed):
    """Replaying the BFS plan of a generated level: +1 per box placed, +10 at the end,
    -0.1 per step, so best_reward = boxes + 10 - 0.1 * len(plan) (a shortest plan never
    takes a box off a target and back)."""
    for k, boxes in enumerate((2, 3)):
        room, plan = generate_level(np.random.default_rng([rng_seed, k]), 7, boxes)
        path = save_level(tmp_path / f"l{k}.npy", room)
        out = SokobanReward()([RewardInput(response=resp(", ".join(plan), " shortest plan "), label="",
                                           meta={"env_path": str(path)})])[0]
        n = len(plan)
        act = 0.05 * n if n < 20 else 1 - ((n - 20) / 30) ** 2 * 0.2
        assert out.status == "solved" and out.info["solved"]
        assert out.components["best_reward"] == pytest.approx(boxes + 10 - 0.1 * n, abs=1e-9)
        assert out.total == pytest.approx(boxes + 10 - 0.1 * n + 0.5 + act + 0.002, abs=1e-9)


def test_reward_function_bad_inputs(tmp_path):
    path = save_level(tmp_path / "l.npy", LINE)
    fn = SokobanReward()
    outs = fn([
        RewardInput(response=resp("right, right"), meta={}),  # no level
        RewardInput(response=resp("right"), meta={"env_path": str(tmp_path / "missing.npy")}),
        RewardInput(response=None, meta={"env_path": str(path)}),
        RewardInput(response=resp("right, right"), label=str(path)),  # label as the level path
        RewardInput(response=resp("fly"), meta={"env_path": str(path)}),
    ])
    assert [o.status for o in outs] == ["bad_level", "bad_level", "bad_input", "solved", "format_error"]
    assert "env_path" in outs[0].detail and "missing.npy" in outs[1].detail
    assert [o.total for o in outs[:3]] == [0.0, 0.0, 0.0] and outs[4].total == 0.0
    assert fn.counts["bad_level"] == 2
