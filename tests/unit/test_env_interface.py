"""The environment interface (envs/base.py), the registry (envs/registry.py) and Sokoban
step by step (envs/sokoban_env.py) against the simulator and the single-shot reward."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lmm_r1_ascend.envs.base import Environment, Observation, StepResult
from lmm_r1_ascend.envs.registry import env_names, make_env, register_env
from lmm_r1_ascend.envs.sokoban import Sokoban
from lmm_r1_ascend.envs.sokoban_env import SokobanEnv, grid_text
from lmm_r1_ascend.envs.sokoban_generate import generate_level
from lmm_r1_ascend.envs.sokoban_render import render_room
from lmm_r1_ascend.rewards.sokoban import simulate


def answer(moves):
    return f"<think> plan </think><answer> {', '.join(moves)} </answer>"


@pytest.fixture(scope="module")
def level():
    return generate_level(np.random.default_rng(4), dim=6, num_boxes=1)  # a 6-move plan


def test_observation_and_step_result_contracts():
    img = Image.new("RGB", (4, 4))
    assert Observation(images=[img]).images == (img,)
    assert Observation(text="hi").images == ()
    with pytest.raises(ValueError, match="text or at least one image"):
        Observation()
    with pytest.raises(TypeError, match=r"images\[1\]"):
        Observation(images=(img, np.zeros((2, 2))))
    with pytest.raises(TypeError, match="tuple of PIL"):
        Observation(images=img)
    with pytest.raises(TypeError, match="finite"):
        StepResult(Observation(text="x"), float("nan"), False, {})
    with pytest.raises(TypeError, match="done must be a bool"):
        StepResult(Observation(text="x"), 0.0, 1, {})
    assert StepResult(Observation(text="x"), 1, True).reward == 1.0


def test_registry_builds_by_name_and_rejects_bad_input():
    assert "sokoban" in env_names()
    env = make_env("sokoban", moves_per_turn=2)
    assert isinstance(env, SokobanEnv) and env.moves_per_turn == 2 and SokobanEnv.name == "sokoban"
    with pytest.raises(ValueError, match="unknown environment 'nope'"):
        make_env("nope")
    with pytest.raises(ValueError, match="bad kwargs for environment 'sokoban'"):
        make_env("sokoban", speed=3)
    with pytest.raises(ValueError, match="moves_per_turn must be an int >= 1"):
        make_env("sokoban", moves_per_turn=0)
    with pytest.raises(TypeError, match="Environment subclasses"):
        register_env("x")(int)

    @register_env("echo_test_env")
    class Echo(Environment):
        def reset(self, seed, task):
            return Observation(text=str(task["q"]))

        def step(self, action_text):
            return StepResult(Observation(text=action_text), 0.0, True, {})

    assert "echo_test_env" in env_names() and make_env("echo_test_env").reset(0, {"q": 1}).text == "1"
    with pytest.raises(ValueError, match="already registered"):
        register_env("sokoban")(Echo)


def test_sokoban_episode_matches_the_simulator(level):
    room, plan = level
    env = make_env("sokoban", moves_per_turn=3, show_grid=True, cell=16)
    obs = env.reset(0, {"room": room})
    assert np.array_equal(np.asarray(obs.images[0]), np.asarray(render_room(room, 16)))
    assert grid_text(room) in obs.text
    ref, total = Sokoban(room), 0.0
    for i in range(0, len(plan), 3):
        res = env.step(answer(plan[i:i + 3]))
        want = sum(ref.step(a)[0] for a in plan[i:i + 3])
        assert res.reward == pytest.approx(want) and not res.info["invalid_action"]
        assert np.array_equal(np.asarray(res.observation.images[0]), np.asarray(render_room(ref.room_state, 16)))
        assert res.info["steps"] == ref.steps
        total += res.reward
    assert res.done and res.info["solved"]
    # the whole plan scores the same through the single-shot simulator (its best reward is the final total here)
    assert total == pytest.approx(simulate(room, plan)[0])


def test_sokoban_invalid_turns_and_budgets(level):
    room, plan = level
    env = make_env("sokoban", moves_per_turn=2, max_invalid=2, invalid_penalty=-0.5)
    first = env.reset(0, {"room": room})
    for bad in ("up, down", answer(["up", "up", "up"]), answer(["jump"])):
        env.reset(0, {"room": room})
        res = env.step(bad)
        assert res.info["invalid_action"] and res.reward == -0.5 and not res.done
        assert np.array_equal(np.asarray(res.observation.images[0]), np.asarray(first.images[0]))
    assert env.step("nothing").done  # the second invalid turn ends the episode
    env = make_env("sokoban", moves_per_turn=3, max_moves=2)
    env.reset(0, {"room": room})
    res = env.step(answer(plan[:3]))
    assert res.done and res.info["steps"] == 2 and res.info["moves"] == plan[:2]
    with pytest.raises(ValueError, match="names no level"):
        env.reset(0, {"question": "x"})
    with pytest.raises(RuntimeError, match="reset"):
        make_env("sokoban").step(answer(["up"]))


def test_sokoban_text_only_observations(level):
    room, plan = level
    env = make_env("sokoban", image=False)
    obs = env.reset(0, {"room": room})
    assert obs.images == () and grid_text(room) in obs.text
    res = env.step(answer(plan[:1]))
    assert res.observation.images == () and "\n#" in res.observation.text
    with pytest.raises(ValueError, match="image must be a bool"):
        make_env("sokoban", image="no")


@pytest.mark.parametrize("k, phrase", [(1, "Give 1 move."), (2, "Give 1 to 2 moves."), (5, "Give 1 to 5 moves.")])
def test_sokoban_prompts_say_how_many_moves(level, k, phrase):
    room, _ = level
    env = make_env("sokoban", moves_per_turn=k)
    assert phrase in env.reset(0, {"room": room}).text
    bad = env.step("no answer").observation.text
    assert bad.startswith(f"Invalid answer: give {phrase.removeprefix('Give ').rstrip('.')} as <answer>")
