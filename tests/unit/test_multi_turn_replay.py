"""Replaying a trajectory: a fresh environment fed the recorded actions reproduces every
observation (images bit for bit), every reward, and every token id of the sample, rebuilt from
the recorded sampled ids and the env's observations alone. Scripted policy in the default run;
the tiny VL model sampling through the hf engine under `slow`."""

from __future__ import annotations

import pytest
import torch

from lmm_r1_ascend.data import PromptDataset, load_processors
from lmm_r1_ascend.envs.registry import make_env
from lmm_r1_ascend.envs.sokoban_env import write_multiturn_dataset
from lmm_r1_ascend.models.tiny import ensure_tiny_model
from lmm_r1_ascend.rollout.base import SamplingConfig
from lmm_r1_ascend.rollout.multi_turn import MultiTurnLimits, MultiTurnRollout, guarded_env_factory
from lmm_r1_ascend.rollout.turn_template import TurnTemplate

ENV_KW = {"cell": 16, "max_invalid": 9}


def runs(mask: torch.Tensor) -> list[tuple[bool, int, int]]:
    """(sampled?, start, end) of the response's maximal runs of equal mask values."""
    out, start = [], 0
    for k in range(1, len(mask) + 1):
        if k == len(mask) or bool(mask[k]) != bool(mask[start]):
            out.append((bool(mask[start]), start, k))
            start = k
    return out


def replay(sample, tpl: TurnTemplate) -> None:
    """Rebuild `sample` from a fresh env and its recorded sampled ids; assert it matches exactly."""
    t, p = sample.trajectory, sample.prompt
    env = make_env("sokoban", **ENV_KW)
    first = tpl.observation(env.reset(t.env_seed, {**p.meta, "label": p.label, "datasource": p.datasource}), None)
    gp = tpl.generation_prompt_ids()
    ids = list(p.prompt_ids[:-len(gp)]) + first.ids
    assert ids == sample.prompt_ids.tolist()
    pixels = [x for x in (p.pixel_values, first.pixel_values) if x is not None]
    grids, resp = [first.image_grid_thw], []
    segments = runs(sample.action_mask)
    assert [s for s, *_ in segments] == [True, False] * (len(segments) // 2) + [True] * (len(segments) % 2)
    for k, (sampled, a, b) in enumerate(segments):
        if not sampled:
            continue
        turn = sample.response_ids[a:b].tolist()
        resp += turn
        text = tpl.tokenizer.decode(turn, skip_special_tokens=True)
        assert text == t.actions[k // 2]
        result = env.step(text)
        assert result.reward == t.turn_rewards[k // 2] and result.info == t.infos[k // 2]
        if k + 1 < len(segments):  # the observation the trajectory showed next
            obs = tpl.observation(result.observation, turn[-1])
            resp += obs.ids
            pixels.append(obs.pixel_values)
            grids.append(obs.image_grid_thw)
    assert resp == sample.response_ids.tolist()
    assert torch.equal(torch.cat(pixels), t.pixel_values) and torch.equal(torch.cat(grids), t.image_grid_thw)
    assert [e for s, a, b in segments if s for e in [b - 1]] == t.turn_ends


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = ensure_tiny_model("tiny-qwen2.5-vl")
    tok, proc = load_processors(path)
    out = tmp_path_factory.mktemp("replay")
    write_multiturn_dataset(out, 2, num_boxes=1, seed=5, dim=6, cell=16)
    prompts = list(PromptDataset([str(out / "sokoban_multiturn.jsonl")], tok, proc, shuffle=False))
    return path, tok, proc, prompts


def play(generate, tok, proc, prompts, n, max_new_tokens):
    tpl = TurnTemplate(tok, proc)
    limits = MultiTurnLimits(max_turns=3, max_response_tokens=1000)
    mt = MultiTurnRollout(generate, guarded_env_factory("sokoban", ENV_KW, limits), tpl, limits,
                          vision_ids=[tpl.image_token_id])
    return mt.run(prompts, SamplingConfig(n=n, max_new_tokens=max_new_tokens, seed=3)), tpl


def test_replay_reproduces_a_scripted_trajectory(setup):
    from test_multi_turn import Scripted, answer

    path, tok, proc, prompts = setup
    moves = [["up"], ["left", "down"], ["jump"]]
    samples, tpl = play(Scripted(tok, lambda k, t: answer(moves[(k + t) % 3])).generate, tok, proc, prompts, 2, 64)
    assert all(len(s.trajectory.turn_ends) == 3 for s in samples)
    for s in samples:
        replay(s, tpl)
    # the check can fail: one changed observation token is caught
    bad = samples[0]
    bad.response_ids = bad.response_ids.clone()
    k = int((~bad.action_mask).nonzero()[0])
    bad.response_ids[k] += 1
    with pytest.raises(AssertionError):
        replay(bad, tpl)


@pytest.mark.slow
def test_replay_reproduces_tiny_vl_trajectories(setup):
    from lmm_r1_ascend.rollout.hf_engine import HFRolloutEngine

    path, tok, proc, prompts = setup
    engine = HFRolloutEngine(str(path), tokenizer=tok)
    samples, tpl = play(engine.generate, tok, proc, prompts, 2, 16)
    assert len(samples) == 4 and any(len(s.trajectory.turn_ends) > 1 for s in samples)
    for s in samples:
        replay(s, tpl)
