"""Sokoban eval figures (evaluation/sokoban_eval.py) for the single-shot and the step-by-step
mode, on held-out levels built with a fixed seed, against scripted policies whose outcome is
known independently: the BFS solver's plan (success 1, mean steps = its length) and text that
is never a valid answer (invalid-action rate 1)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from lmm_r1_ascend.envs.sokoban import load_level
from lmm_r1_ascend.envs.sokoban_env import SokobanEnv
from lmm_r1_ascend.envs.sokoban_solver import solve
from lmm_r1_ascend.evaluation.sokoban_eval import Episode, build_sokoban_eval_set, episodes_from_samples, \
    format_sokoban_table, multi_turn_episode, multiturn_name, single_shot_episode, sokoban_figures

NONSENSE = "I would rather not play."


def answer(moves):
    return f"<think> plan </think><answer> {', '.join(moves)} </answer>"


@pytest.fixture(scope="module")
def levels(tmp_path_factory):
    """(row, room, BFS plan) of 3 held-out 7x7 one-box levels (seed 0, fixed; plans of 4, 2, 3 moves)."""
    out = build_sokoban_eval_set(tmp_path_factory.mktemp("soko"), n_levels=3, seed=0, num_boxes=1, dim=7,
                                 train_levels=0)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    rooms = [load_level(r["env_path"]) for r in rows]
    return [(r, room, solve(room)) for r, room in zip(rows, rooms)]


def test_the_step_by_step_rows_are_the_same_levels(levels):
    from lmm_r1_ascend.envs.sokoban_env import MULTITURN_USER_PROMPT

    path = Path(levels[0][0]["env_path"]).parents[1] / multiturn_name("sokoban_eval.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["env_path"] for r in rows] == [r["env_path"] for r, _, _ in levels]
    assert {r["datasource"] for r in rows} == {"sokoban_eval"}
    for r in rows:
        system, user = json.loads(r["message"])
        assert user == {"role": "user", "content": MULTITURN_USER_PROMPT}  # text only: the env shows the board


def test_single_shot_figures(levels):
    plans = [plan for _, _, plan in levels]
    solved = sokoban_figures([single_shot_episode(room, answer(plan)) for _, room, plan in levels])
    assert solved["success_rate"] == 1.0 and solved["invalid_action_rate"] == 0.0
    assert solved["mean_steps"] == pytest.approx(sum(map(len, plans)) / 3) == solved["mean_steps_solved"]
    assert solved["mean_turns"] == 1.0 and solved["episodes"] == 3.0
    bad = sokoban_figures([single_shot_episode(room, NONSENSE) for _, room, _ in levels])
    assert (bad["success_rate"], bad["invalid_action_rate"], bad["mean_steps"]) == (0.0, 1.0, 0.0)
    assert math.isnan(bad["mean_steps_solved"])
    # a valid answer that stops one move short: unsolved, every move counted, nothing invalid
    short = sokoban_figures([single_shot_episode(room, answer(plan[:-1])) for _, room, plan in levels])
    assert short["success_rate"] == 0.0 and short["invalid_action_rate"] == 0.0
    assert short["mean_steps"] == pytest.approx(sum(len(p) - 1 for p in plans) / 3)


def play(env, row, policy, max_turns=50):
    """Drive the step-by-step env with a text policy(turn) -> answer; the per-turn infos."""
    env.reset(0, row)
    infos = []
    for turn in range(max_turns):
        result = env.step(policy(turn))
        infos.append(result.info)
        if result.done:
            break
    return infos


def test_step_by_step_figures(levels):
    k = 2
    episodes = []
    for row, _, plan in levels:
        chunks = [plan[i:i + k] for i in range(0, len(plan), k)]
        infos = play(SokobanEnv(moves_per_turn=k), row, lambda t: answer(chunks[t]))
        episodes.append(multi_turn_episode(infos))
        assert episodes[-1].turns == len(chunks)
    solved = sokoban_figures(episodes)
    assert solved["success_rate"] == 1.0 and solved["invalid_action_rate"] == 0.0
    assert solved["mean_steps"] == pytest.approx(sum(len(p) for _, _, p in levels) / 3)
    bad = sokoban_figures([multi_turn_episode(play(SokobanEnv(max_invalid=3), row, lambda t: NONSENSE))
                           for row, _, _ in levels])
    assert (bad["success_rate"], bad["invalid_action_rate"], bad["mean_steps"], bad["mean_turns"]) == (0, 1, 0, 3)
    # too many moves in one turn is invalid too; then the right ones solve it
    row, _, plan = levels[0]
    mixed = multi_turn_episode(play(SokobanEnv(moves_per_turn=len(plan)), row,
                                    lambda t: answer(plan + ["up"]) if t == 0 else answer(plan)))
    assert mixed == Episode(solved=True, steps=len(plan), turns=2, invalid_turns=1)
    assert sokoban_figures([mixed])["invalid_action_rate"] == 0.5


def test_episodes_from_samples_covers_both_modes(levels):
    row, room, plan = levels[0]

    def sample(datasource, text=None, infos=None):
        prompt = SimpleNamespace(datasource=datasource, meta={"env_path": row["env_path"]})
        traj = None if infos is None else SimpleNamespace(infos=infos, env_error="")
        return SimpleNamespace(prompt=prompt, trajectory=traj, text=text)

    infos = [{"invalid_action": True, "steps": 0, "solved": False},
             {"invalid_action": False, "steps": len(plan), "solved": True}]
    got = episodes_from_samples([sample("sokoban_eval", text=answer(plan)), sample("math", text="x"),
                                 sample("sokoban_mt", infos=infos), sample("sokoban_mt", infos=[{"env_error": "hung"}])],
                                decode=lambda s: s.text)
    assert got["sokoban_eval"] == [Episode(True, len(plan), 1, 0)]
    assert got["sokoban_mt"] == [Episode(True, len(plan), 2, 1), Episode(False, 0, 1, 0, "hung")]
    figures = {k: sokoban_figures(v) for k, v in got.items()}
    assert figures["sokoban_mt"]["env_error_rate"] == 0.5
    table = format_sokoban_table(figures)
    assert "sokoban_mt" in table and "success_rate" in table
    with pytest.raises(ValueError, match="names no level"):
        episodes_from_samples([SimpleNamespace(prompt=SimpleNamespace(datasource="sokoban", meta={}),
                                               trajectory=None)], decode=lambda s: "")
    with pytest.raises(ValueError, match="no Sokoban episodes"):
        sokoban_figures([])


@pytest.mark.slow  # the tiny VL tokenizer and image processor over 2 x 3 trajectories: ~15 s on a busy CPU
def test_step_by_step_eval_through_the_multi_turn_rollout(levels):
    """The eval's real path: trajectories played by rollout/multi_turn.py over an engine's
    generate() (here a scripted one answering with token ids), then the figures."""
    from lmm_r1_ascend.data import PromptDataset, load_processors
    from lmm_r1_ascend.models.tiny import ensure_tiny_model
    from lmm_r1_ascend.rollout.base import SamplingConfig, make_sample
    from lmm_r1_ascend.rollout.multi_turn import MultiTurnLimits, MultiTurnRollout, guarded_env_factory
    from lmm_r1_ascend.rollout.turn_template import TurnTemplate

    tok, proc = load_processors(ensure_tiny_model("tiny-qwen2.5-vl"))
    path = Path(levels[0][0]["env_path"]).parents[1] / multiturn_name("sokoban_eval.jsonl")
    prompts = list(PromptDataset([str(path)], tok, proc, shuffle=False))
    plans = {row["env_path"]: plan for row, _, plan in levels}
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    k = 2

    def play(script, max_turns):
        turns: dict[str, int] = {}

        def generate(items, cfg):  # one turn of each live trajectory
            out = []
            for i, it in enumerate(items):
                t = turns[it.meta["env_path"]] = turns.get(it.meta["env_path"], -1) + 1
                ids = tok(script(plans[it.meta["env_path"]], t), add_special_tokens=False)["input_ids"] + [im_end]
                out.append(make_sample(i, 0, it, ids, [0.0] * len(ids), [im_end]))
            return out

        limits = MultiTurnLimits(max_turns=max_turns, max_response_tokens=8000)
        tpl = TurnTemplate(tok, proc)
        rollout = MultiTurnRollout(generate, guarded_env_factory("sokoban", {"moves_per_turn": k, "cell": 16}, limits),
                                   tpl, limits, vision_ids=[tpl.image_token_id])
        samples = rollout.run(prompts, SamplingConfig(n=1, max_new_tokens=64, seed=0))
        decode = lambda s: tok.decode(s.response_ids, skip_special_tokens=True)  # noqa: E731
        return sokoban_figures(episodes_from_samples(samples, decode)["sokoban_eval"])

    solved = play(lambda plan, t: answer(plan[k * t:k * t + k]), max_turns=5)
    lengths = [len(p) for p in plans.values()]
    assert solved["success_rate"] == 1.0 and solved["invalid_action_rate"] == 0.0
    assert solved["mean_steps"] == pytest.approx(sum(lengths) / 3)
    assert solved["mean_turns"] == pytest.approx(sum(math.ceil(n / k) for n in lengths) / 3)
    bad = play(lambda plan, t: NONSENSE, max_turns=3)
    assert (bad["success_rate"], bad["invalid_action_rate"], bad["mean_steps"], bad["mean_turns"]) == (0, 1, 0, 3)
