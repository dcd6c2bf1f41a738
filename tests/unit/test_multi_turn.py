"""Multi-turn rollout (rollout/multi_turn.py, rollout/turn_template.py) with a scripted policy.

The scripted engine answers each turn with fixed text, so every check is exact: the sequence
against the tokenizer's own rendering of the whole conversation, the sampled ids against what
was "sampled", rewards against the Sokoban simulator, and each way a trajectory ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmm_r1_ascend.data import PromptDataset, load_processors
from lmm_r1_ascend.envs.base import Environment, Observation, StepResult
from lmm_r1_ascend.envs.guard import GuardedEnv
from lmm_r1_ascend.envs.registry import make_env
from lmm_r1_ascend.envs.sokoban import Sokoban, load_level
from lmm_r1_ascend.envs.sokoban_env import MULTITURN_USER_PROMPT, write_multiturn_dataset
from lmm_r1_ascend.envs.sokoban_generate import SYSTEM_PROMPT
from lmm_r1_ascend.envs.sokoban_solver import solve
from lmm_r1_ascend.experience.multi_turn import step_rewards, step_rewards_of
from lmm_r1_ascend.models.tiny import ensure_tiny_model
from lmm_r1_ascend.rewards.scoring import score_samples
from lmm_r1_ascend.rollout.base import TOKEN_IN, SamplingConfig, make_sample
from lmm_r1_ascend.rollout.multi_turn import (
    MultiTurnLimits, MultiTurnRollout, env_error_metrics, guarded_env_factory,
)
from lmm_r1_ascend.rollout.turn_template import TurnTemplate

LOGP = -0.25  # what the scripted policy reports for every sampled token


def answer(moves):
    return f"<think> go </think><answer> {', '.join(moves)} </answer>"


class Scripted:
    """generate(): trajectory k's t-th turn is script(k, t) tokenised + <|im_end|> (all logprobs LOGP)."""

    def __init__(self, tok, script):
        self.tok, self.script, self.calls, self.items = tok, script, 0, []
        self.im_end = tok.convert_tokens_to_ids("<|im_end|>")

    def generate(self, items, cfg):
        assert cfg.n == 1 and all(it.meta.get(TOKEN_IN) for it in items)
        self.items.append(items)
        out = []
        for k, it in enumerate(items):
            ids = self.tok(self.script(k, self.calls), add_special_tokens=False)["input_ids"] + [self.im_end]
            ids = ids[: cfg.max_new_tokens]
            out.append(make_sample(k, 0, it, ids, [LOGP] * len(ids), [self.im_end]))
        self.calls += 1
        return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = ensure_tiny_model("tiny-qwen2.5-vl")
    tok, proc = load_processors(path)
    out = tmp_path_factory.mktemp("mt")
    rows = write_multiturn_dataset(out, 2, num_boxes=1, seed=3, dim=6, cell=16)
    ds = PromptDataset([str(out / "sokoban_multiturn.jsonl")], tok, proc, shuffle=False)
    prompts = list(ds)[:2]
    return tok, proc, prompts, rows


def rollout(setup, script, limits=MultiTurnLimits(max_turns=4, max_response_tokens=2000), new_env=None, **env_kw):
    tok, proc, prompts, _ = setup
    tpl = TurnTemplate(tok, proc)
    eng = Scripted(tok, script)
    env = new_env or guarded_env_factory("sokoban", {"cell": 16, **env_kw}, limits)
    mt = MultiTurnRollout(eng.generate, env, tpl, limits, vision_ids=[tpl.image_token_id])
    return mt.run(prompts[:1], SamplingConfig(n=2, max_new_tokens=64, seed=0)), eng, tpl


def test_sequence_is_the_templates_rendering_of_the_conversation(setup):
    tok, proc, prompts, rows = setup
    texts = [answer(["jump"]), answer(["up"])]  # an invalid turn, then a (valid) move
    samples, eng, tpl = rollout(setup, lambda k, t: texts[t], MultiTurnLimits(max_turns=2, max_response_tokens=2000))
    s = samples[0]
    # independent reference: the chat template over the whole conversation, as text (one pad per image)
    obs_texts = ["This is the board now. Give 1 to 3 moves."]
    env = make_env("sokoban", cell=16)
    env.reset(0, {"env_path": rows[0]["env_path"]})
    obs_texts.append(env.step(texts[0]).observation.text)
    img = [{"type": "image"}]
    conv = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": MULTITURN_USER_PROMPT},
            {"role": "user", "content": img + [{"type": "text", "text": obs_texts[0]}]},
            {"role": "assistant", "content": texts[0]},
            {"role": "user", "content": img + [{"type": "text", "text": obs_texts[1]}]},
            {"role": "assistant", "content": texts[1]}]
    want = tok.apply_chat_template(conv, tokenize=False)
    ids = torch.cat((s.prompt_ids, s.response_ids)).tolist()
    pad = tpl.image_token_id
    collapsed = [t for k, t in enumerate(ids) if t != pad or ids[k - 1] != pad]
    # the rendering ends the last assistant turn with "<|im_end|>\n"; the sample ends at the sampled <|im_end|>
    assert tok.decode(collapsed) + "\n" == want
    # token in / token out: the sampled ids are exactly the scripted ones, in order, and only they are trained
    sampled = s.response_ids[s.action_mask].tolist()
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert sampled == [t for x in texts for t in tok(x, add_special_tokens=False)["input_ids"] + [im_end]]
    assert torch.equal(s.logprobs[s.action_mask], torch.full((len(sampled),), LOGP))
    assert bool((s.logprobs[~s.action_mask] == 0).all()) and bool(s.action_mask[0])  # the response opens with a turn
    # the images: one per observation (the row has none), 16-px cells of a 6x6 room resized by the processor
    grid = s.multimodal["image_grid_thw"]
    assert grid.shape == (2, 3) and s.multimodal["pixel_values"].shape[0] == int(grid.prod(-1).sum())
    assert (s.prompt_ids == pad).sum() + (s.response_ids == pad).sum() == int(grid.prod(-1).sum()) // 4
    # the second turn's engine input was the first sample's whole sequence so far (token in)
    second = eng.items[1][0]
    assert second.prompt_ids == ids[: len(second.prompt_ids)] and second.num_images == 2


def test_sokoban_rewards_turns_and_credit(setup):
    tok, proc, prompts, rows = setup
    room = load_level(rows[0]["env_path"])
    plan = solve(room)
    chunks = [plan[i:i + 3] for i in range(0, len(plan), 3)]
    samples, _, _ = rollout(setup, lambda k, t: answer(chunks[t]) if t < len(chunks) else answer(["up"]),
                            MultiTurnLimits(max_turns=len(chunks) + 2, max_response_tokens=4000))
    ref = Sokoban(room)
    want = [sum(ref.step(a)[0] for a in c) for c in chunks]
    for s in samples:
        t = s.trajectory
        assert t.end_reason == "done" and t.success and len(t.turn_ends) == len(chunks)
        assert t.turn_rewards == pytest.approx(want)
        assert all(bool(s.action_mask[e]) and s.response_ids[e] == tok.convert_tokens_to_ids("<|im_end|>")
                   for e in t.turn_ends)
        r = step_rewards(s)
        assert float(r.sum()) == pytest.approx(t.total_reward) and set(r.nonzero().flatten().tolist()) <= set(t.turn_ends)
    scored = score_samples(samples, reward=None, tokenizer=tok)
    assert scored.totals.tolist() == pytest.approx([sum(want)] * 2) and scored.statuses == ["solved"] * 2
    assert scored.info["reward_turns"].tolist() == [len(chunks)] * 2
    assert len(step_rewards_of(samples)) == 2


@pytest.mark.parametrize("case", ["max_turns", "token_budget", "image_budget", "vision_token"])
def test_each_budget_ends_a_trajectory(setup, case):
    tok = setup[0]
    limits = {"max_turns": MultiTurnLimits(max_turns=2, max_response_tokens=2000),
              "token_budget": MultiTurnLimits(max_turns=5, max_response_tokens=60),
              "image_budget": MultiTurnLimits(max_turns=5, max_images=2, max_response_tokens=2000),
              "vision_token": MultiTurnLimits(max_turns=5, max_response_tokens=2000)}[case]
    text = answer(["up"]) + (" <|image_pad|>" if case == "vision_token" else "")
    samples, _, _ = rollout(setup, lambda k, t: text, limits, max_invalid=9, max_moves=100)
    for s in samples:
        t = s.trajectory
        assert t.end_reason == case, t.end_reason
        assert int(s.response_ids.numel()) <= limits.max_response_tokens
        assert t.image_grid_thw.shape[0] <= limits.max_images
        assert bool(s.action_mask[-1])  # a trajectory always ends on a sampled turn
    n_turns = {"max_turns": 2, "image_budget": 2, "vision_token": 1}.get(case)  # 2 images: obs0, obs1
    if n_turns:
        assert len(samples[0].trajectory.turn_ends) == n_turns


class Broken(Environment):
    name = "broken_test_env"

    def __init__(self, where):
        self.where = where

    def reset(self, seed, task):
        if self.where == "reset":
            raise RuntimeError("no level here")
        return Observation(text="start")

    def step(self, action_text):
        if self.where == "step":
            raise RuntimeError("the simulator crashed")
        return StepResult(Observation(text="ok"), 1.0, False, {})


@pytest.mark.parametrize("where", ["reset", "step"])
def test_env_errors_keep_the_sample(setup, where):
    limits = MultiTurnLimits(max_turns=3, max_response_tokens=2000)
    new_env = lambda: GuardedEnv(Broken(where), timeout_s=5, max_images=2, max_image_pixels=10**6)  # noqa: E731
    samples, _, _ = rollout(setup, lambda k, t: answer(["up"]), limits, new_env=new_env)
    for s in samples:
        t = s.trajectory
        assert t.end_reason == "env_error" and len(t.turn_ends) == 1 and t.total_reward == 0.0
        assert ("no level here" if where == "reset" else "the simulator crashed") in t.env_error
    scored = score_samples(samples, reward=None, tokenizer=setup[0])
    assert scored.statuses == ["env_error"] * 2 and scored.totals.tolist() == [0.0, 0.0]
    # the trainer's env/errors/<kind>, counted from the samples (any placement): both episodes, kind exception
    assert env_error_metrics(samples) == {"env/errors/exception": 2.0}


def test_bad_input_is_one_clear_line(setup):
    tok, proc, prompts, _ = setup
    with pytest.raises(ValueError, match="max_turns must be an int >= 1"):
        MultiTurnLimits(max_turns=0)
    tpl = TurnTemplate(tok, proc)
    bare = type(prompts[0])(prompt_ids=list(prompts[0].prompt_ids[:-3]), prompt_text="")
    mt = MultiTurnRollout(Scripted(tok, lambda k, t: "x").generate, lambda: make_env("sokoban"), tpl,
                          MultiTurnLimits())
    with pytest.raises(ValueError, match="generation prompt"):
        mt.run([bare], SamplingConfig(n=1, max_new_tokens=4))
    with pytest.raises(ValueError, match="no image processor"):
        TurnTemplate(tok, None).observation(Observation(images=(make_env("sokoban").reset(
            0, {"room": np.array([[0] * 5, [0, 5, 4, 2, 0], [0] * 5])}).images[0],)), None)
    with pytest.raises(ValueError, match="unknown environment"):
        guarded_env_factory("nope", {}, MultiTurnLimits())


@pytest.mark.parametrize("overrides, message", [
    (["env.name=nope"], "env.name: unknown environment 'nope'"),
    (["env.max_turns=0"], "env.max_turns must be an int >= 1"),
    (["env.timeout_s=0"], "env.timeout_s must be a number > 0"),
    (["reward.overlong_shaping=true", "reward.overlong_buffer_len=8"], "overlong_shaping"),
    (["rollout.engine=vllm", "env.max_images=9"], "limit_mm_per_prompt"),
])
def test_env_config_is_checked(overrides, message):
    from lmm_r1_ascend.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config("demo_sokoban_multiturn", overrides=overrides)
    assert load_config("demo_sokoban_multiturn").env.kwargs == {"moves_per_turn": 3, "max_invalid": 3, "cell": 16}


def test_the_run_config_wraps_the_engine(setup):
    import torch as _torch

    from lmm_r1_ascend.config import load_config
    from lmm_r1_ascend.rollout.multi_turn import MultiTurnEngine
    from lmm_r1_ascend.workers.builders import build_rollout_engine

    cfg = load_config("demo_sokoban_multiturn", overrides=["env.max_turns=2", "env.kwargs={cell: 16, max_invalid: 5}"])
    path = str(ensure_tiny_model("tiny-qwen2.5-vl"))
    engine = build_rollout_engine(cfg, path, _torch.device("cpu"), _torch.float32)
    assert isinstance(engine, MultiTurnEngine) and engine.rollout.limits.max_turns == 2
    samples = engine.generate(setup[2][:1], SamplingConfig(n=2, max_new_tokens=4, seed=0))
    assert [len(s.trajectory.turn_ends) for s in samples] == [2, 2]  # 5 invalid turns allowed: max_turns ends it
    assert env_error_metrics(samples) == {}
    cfg.env.name = ""
    assert not isinstance(build_rollout_engine(cfg, path, _torch.device("cpu"), _torch.float32), MultiTurnEngine)


ENV_FILE = """
from PIL import Image
from lmm_r1_ascend.envs.base import Environment, Observation, StepResult
from lmm_r1_ascend.envs.registry import register_env

@register_env("countdown-file-test")
class Countdown(Environment):
    def __init__(self, turns=2):
        self.turns = turns
    def reset(self, seed, task):
        self.left = self.turns
        return Observation(text=f"countdown {self.left}", images=(Image.new("RGB", (28, 28), "red"),))
    def step(self, action_text):
        self.left -= 1
        return StepResult(Observation(text=f"countdown {self.left}"), 0.5, self.left == 0, {"success": True})
"""


def test_env_file_reaches_the_engine(setup, tmp_path, monkeypatch):
    """env.file: build_rollout_engine imports the user's file itself (a Ray engine actor is a fresh
    process in its own directory; here the registry forgets the loader's import and the working
    directory changes), and the file's environment plays the trajectory."""
    import sys

    from lmm_r1_ascend.config import load_config
    from lmm_r1_ascend.envs import registry
    from lmm_r1_ascend.workers.builders import build_rollout_engine

    (tmp_path / "my_envs.py").write_text(ENV_FILE)
    monkeypatch.chdir(tmp_path)
    cfg = load_config("demo_sokoban_multiturn", overrides=["env.name=countdown-file-test", "env.file=my_envs.py"])
    cfg.env.kwargs = {"turns": 2}
    module = registry._ENVS["countdown-file-test"].__module__
    monkeypatch.setattr(registry, "_ENVS", {n: c for n, c in registry._ENVS.items() if n != "countdown-file-test"})
    monkeypatch.delitem(sys.modules, module)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    engine = build_rollout_engine(cfg, str(ensure_tiny_model("tiny-qwen2.5-vl")), torch.device("cpu"), torch.float32)
    [s] = engine.generate(setup[2][:1], SamplingConfig(n=1, max_new_tokens=4, seed=0))
    tok = setup[0]
    assert "countdown 2" in tok.decode(s.prompt_ids) and "countdown 1" in tok.decode(s.response_ids)
    assert s.trajectory.turn_rewards == [0.5, 0.5] and s.trajectory.end_reason == "done" and s.trajectory.success
    assert len(s.trajectory.images) == setup[2][0].num_images + 1  # the row's board and the file env's picture


def test_vllm_continuation_sends_ids_with_one_pad_per_image(setup):
    """The vLLM engine's token-in input (no vLLM needed: the method only reshapes ids)."""
    from lmm_r1_ascend.data.types import PromptItem
    from lmm_r1_ascend.rollout.vllm_engine import VLLMRolloutEngine

    eng = VLLMRolloutEngine.__new__(VLLMRolloutEngine)
    eng.is_multimodal, eng.image_token_id = True, 5
    imgs = ["a", "b"]
    item = PromptItem(prompt_ids=[1, 5, 5, 5, 2, 7, 5, 5, 3], prompt_text="", images=imgs, meta={TOKEN_IN: True})
    assert eng._prompt_input(0, item) == {"prompt_token_ids": [1, 5, 2, 7, 5, 3], "multi_modal_data": {"image": imgs}}
    assert eng._prompt_input(0, PromptItem(prompt_ids=[1, 2], prompt_text="", meta={TOKEN_IN: True})) == {
        "prompt_token_ids": [1, 2]}
    with pytest.raises(ValueError, match="2 runs of image pads for 1 images"):
        eng._prompt_input(0, PromptItem(prompt_ids=[5, 1, 5], prompt_text="", images=["a"], meta={TOKEN_IN: True}))
