"""Registry by name and per-sample routing by datasource."""

from __future__ import annotations

import numpy as np
import pytest

from lmm_r1_ascend.envs.sokoban import save_level
from lmm_r1_ascend.rewards.custom import HttpReward, PythonFileReward
from lmm_r1_ascend.rewards.math_reward import MathReward
from lmm_r1_ascend.rewards.registry import BUILDERS, RewardRouter, build_reward, register_reward
from lmm_r1_ascend.rewards.sokoban import SokobanReward
from lmm_r1_ascend.rewards.types import RewardInput, RewardOutput

LINE = np.array([[0, 0, 0, 0, 0, 0], [0, 5, 4, 1, 2, 0], [0, 0, 0, 0, 0, 0]])


def test_build_by_name(tmp_path):
    f = tmp_path / "r.py"
    f.write_text("def reward_func(q, p, l):\n    return [1.0] * len(q)\n")
    assert isinstance(build_reward("math", workers=0), MathReward)
    assert isinstance(build_reward("sokoban"), SokobanReward)
    assert isinstance(build_reward(f"custom:{f}"), PythonFileReward)
    assert isinstance(build_reward(str(f)), PythonFileReward)
    assert isinstance(build_reward("https://example.invalid/reward", retries=0), HttpReward)


@pytest.mark.parametrize("spec,msg", [
    ("maths", "unknown reward 'maths'"),
    ("", "non-empty"),
    ("custom:/no/such/file.py", "not found"),
])
def test_build_errors(spec, msg):
    with pytest.raises(ValueError, match=msg):
        build_reward(spec)
    with pytest.raises(ValueError, match="bad options for reward 'math'"):
        build_reward("math", nonsense=1)


def test_register_reward():
    class Constant:
        name, counts = "const", {}

        def __init__(self, value=1.0):
            self.value = value

        def __call__(self, samples):
            return [RewardOutput(total=self.value) for _ in samples]

        def close(self):
            pass

    register_reward("const_test", Constant)
    try:
        assert build_reward("const_test", value=2.0)([RewardInput("x")])[0].total == 2.0
        with pytest.raises(ValueError, match="reserved"):
            register_reward("custom:x", Constant)
    finally:
        BUILDERS.pop("const_test")


def test_router_routes_by_datasource_and_keeps_order(tmp_path):
    level = save_level(tmp_path / "l.npy", LINE)
    good = "<think> push </think><answer>right, right</answer>"
    math_ok = "<think> t </think><answer>$\\boxed{4}$</answer>"
    batch = [
        RewardInput(math_ok, label="4", datasource="deepscaler"),
        RewardInput(good, label="", datasource="sokoban_small", meta={"env_path": str(level)}),
        RewardInput(math_ok, label="5", datasource=None),
        RewardInput(good, label="", datasource="sokoban_big", meta={"env_path": str(level)}),
    ]
    with RewardRouter("math", {"sokoban*": "sokoban"}, {"math": {"workers": 0}}) as router:
        outs = router(batch)
        assert [o.status for o in outs] == ["correct", "solved", "wrong", "solved"]
        assert outs[0].total == 1.5 and outs[2].total == 0.5
        assert outs[1].total == pytest.approx(10.8 + 0.5 + 0.1 + 0.001)  # hand-computed, see test_sokoban_reward
        assert router.counts() == {"math/correct": 1, "math/wrong": 1, "sokoban/solved": 2}
        assert isinstance(router.reward_for("sokoban_x"), SokobanReward)
        assert isinstance(router.reward_for("geo"), MathReward)


def test_router_rejects_wrong_output_length():
    class Broken:
        name = "broken"

        def __call__(self, samples):
            return []

        def close(self):
            pass

    with pytest.raises(RuntimeError, match="returned 0 outputs for 1 samples"):
        RewardRouter(Broken())([RewardInput("x")])
