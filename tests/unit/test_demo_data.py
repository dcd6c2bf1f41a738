"""The CPU demo's data (generated arithmetic problems, rows, images) and its warm-up checkpoint."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmm_r1_ascend import demo
from lmm_r1_ascend.demo import arithmetic as ar
from lmm_r1_ascend.rewards import MathReward, RewardInput, extract_response, is_well_formed

REPO = Path(__file__).resolve().parents[2]


def _value(expression: str) -> int:
    """Independent reference: Python's own arithmetic with the usual precedence."""
    return eval(expression, {"__builtins__": {}})  # noqa: S307 - digits and + - * only, made by us


@pytest.fixture(scope="module")
def reward():
    with MathReward(workers=0) as r:
        yield r


def test_generation_is_deterministic_and_distinct():
    a = ar.generate_problems(50, split="train", level=3, seed=7)
    b = ar.generate_problems(50, split="train", level=3, seed=7)
    c = ar.generate_problems(50, split="train", level=3, seed=8)
    assert a == b
    assert a != c  # another seed, another draw (50 of ~3500: equal only by a 1e-170 chance)
    assert len({p.expression for p in a}) == 50


@pytest.mark.parametrize("level", sorted(ar.LEVELS))
def test_splits_never_overlap_and_cover_the_level(level):
    train = {p.expression for p in ar.all_problems(level) if p.split == "train"}
    evals = {p.expression for p in ar.all_problems(level) if p.split == "eval"}
    assert train and evals and not train & evals
    assert len(train) + len(evals) == len(ar.all_problems(level))
    # Whatever the seed, a split draws only from its own side.
    for seed in (0, 1):
        drawn = ar.generate_problems(len(evals), split="eval", level=level, seed=seed)
        assert {p.expression for p in drawn} == evals
    assert 0.08 < len(evals) / (len(train) + len(evals)) < 0.18  # about 1 in 8 by the hash rule


@pytest.mark.parametrize("level", sorted(ar.LEVELS))
def test_answers_match_python_arithmetic(level, rng_seed):
    lv = ar.LEVELS[level]
    problems = random.Random(rng_seed).sample(ar.all_problems(level), 200)
    for p in problems:
        assert p.answer == _value(p.expression) >= 0
        assert len(p.ops) == lv.steps
        for op, x in zip(p.ops, p.operands[1:]):
            assert x <= (lv.max_factor if op == "*" else lv.max_operand)


def test_rows_follow_the_lmm_r1_format(rng_seed):
    for p in ar.generate_problems(20, split="eval", level=4, seed=rng_seed):
        row = ar.problem_row(p)
        assert isinstance(row["message"], str)  # a JSON string, as in the paper's files
        msgs = json.loads(row["message"])
        assert [m["role"] for m in msgs] == ["system", "user"]
        assert "<think>" in msgs[0]["content"] and "\\boxed{}" in msgs[0]["content"]
        assert msgs[1]["content"] == f"What is {p.expression}?"
        assert row["answer"] == f"$\\boxed{{{_value(p.expression)}}}$"
        assert row["response"] == ar.worked_response(p)  # the SFT stage's reference (data.response_key)
        assert row["datasource"] == "demo_arithmetic"
        image_row = ar.problem_row(p, image="images/x.png")
        img = json.loads(image_row["message"])[1]["content"]
        assert [part["type"] for part in img] == ["image", "text"] and img[0]["image"] == "images/x.png"
        assert image_row["datasource"] == "demo_arithmetic_images"  # validation reports images apart from text


def test_math_reward_scores_right_and_wrong_responses(reward, rng_seed):
    rng = random.Random(rng_seed)
    problems = ar.generate_problems(12, split="train", level=4, seed=rng_seed)
    samples = []
    for p in problems:
        wrong = p.answer + rng.choice([-3, -1, 1, 2, 10]) * (1 if p.answer < 3 else rng.choice([-1, 1]))
        samples += [RewardInput(ar.worked_response(p), p.label),
                    RewardInput(ar.worked_response(p, wrong), p.label)]
    totals = [o.total for o in reward(samples)]
    # Exact: rewards are sums of the constants 0.5 and 1.0.
    assert totals == [1.5, 0.5] * len(problems)


def test_images_render_the_expression(tmp_path):
    p, q = ar.generate_problems(2, split="train", level=4, seed=0)
    img = ar.render_problem_image(p)
    assert img.mode == "RGB" and img.size == (224, 56)
    ink = np.asarray(img.convert("L")) < 128  # (56, 224) bool
    rows, cols = np.nonzero(ink.any(1))[0], np.nonzero(ink.any(0))[0]
    assert ink.sum() > 100  # digits drawn, not a blank canvas
    assert rows.min() > 0 and rows.max() < 55 and cols.min() > 0 and cols.max() < 223  # nothing clipped
    assert not np.array_equal(np.asarray(img), np.asarray(ar.render_problem_image(q)))


def test_write_demo_dataset_with_images(tmp_path):
    paths = ar.write_demo_dataset(tmp_path, n_train=5, n_eval=3, level=2, seed=0, images=True)
    assert set(paths) == {"train", "eval", "train_images", "eval_images"}
    lines = paths["eval_images"].read_text().splitlines()
    assert len(lines) == 3 and len(paths["train"].read_text().splitlines()) == 5
    for line in lines:
        image_ref = json.loads(json.loads(line)["message"])[1]["content"][0]["image"]
        assert not Path(image_ref).is_absolute() and (tmp_path / image_ref).is_file()
    full = ar.write_demo_dataset(tmp_path / "all", level=1)
    assert len(full["eval"].read_text().splitlines()) == ar.split_size("eval", 1)


def test_cli_writes_the_files(tmp_path, capsys):
    ar.main([str(tmp_path), "--n-train", "4", "--n-eval", "2", "--level", "1"])
    assert (tmp_path / "train.jsonl").is_file() and "eval:" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="only .* eval problems"):
        ar.main([str(tmp_path), "--n-eval", "100000", "--level", "1"])


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="split must be one of"):
        ar.generate_problems(1, split="test")
    with pytest.raises(ValueError, match="unknown level"):
        ar.generate_problems(1, level=99)
    with pytest.raises(ValueError, match="has only .* ask for fewer"):
        ar.generate_problems(10**6, level=1)


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_warmup_targets_are_well_formed_and_worked_ones_right(rng_seed):
    build = _load_script("build_demo_model")
    cfg = build.WarmupConfig(worked_frac=0.3, hasty_correct=0.25)
    rng = random.Random(rng_seed)
    problems = ar.generate_problems(400, split="train", level=3, seed=rng_seed)
    targets = [build.warmup_target(p, rng, cfg) for p in problems]
    assert all(is_well_formed(t) for t in targets)
    worked = [(p, t) for p, t in zip(problems, targets) if " = " in t]
    assert all(t == ar.worked_response(p) for p, t in worked)
    hasty = [(p, t) for p, t in zip(problems, targets) if " = " not in t]
    right = sum(t.endswith(f"{{{p.answer}}}$ </answer>") for p, t in hasty)
    # Binomial draws: 400 * 0.3 = 120 worked (sd 9.2); 280 * 0.25 = 70 right (sd 7.2); bounds at ~4 sd.
    assert 80 < len(worked) < 160
    assert 40 < right < 100


def test_missing_checkpoint_says_how_to_rebuild(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "WARMUP_MODEL_DIR", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="build_demo_model.py"):
        demo.warmup_model_path()


@pytest.mark.skipif(not (demo.WARMUP_MODEL_DIR / "model.safetensors").is_file(),
                    reason="the warm-up checkpoint is not built (python scripts/build_demo_model.py)")
def test_shipped_checkpoint_loads_and_answers_in_format(rng_seed):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = demo.warmup_model_path()
    assert sum(f.stat().st_size for f in path.iterdir()) <= 5 * 1024 * 1024
    meta = json.loads((path / "warmup.json").read_text())
    assert meta["eval"]["format_rate"] > 0.8
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    problems = ar.generate_problems(8, split="eval", level=meta["config"]["level"], seed=rng_seed)
    texts = [tok.apply_chat_template(ar.problem_messages(p), add_generation_prompt=True, tokenize=False)
             for p in problems]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        greedy = model.generate(**enc, do_sample=False, max_new_tokens=48, eos_token_id=eos,
                                pad_token_id=tok.pad_token_id)
        sampled = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=48, num_return_sequences=4, eos_token_id=eos,
                                 pad_token_id=tok.pad_token_id)
    width = enc["input_ids"].shape[1]
    for out, need in ((greedy, 7), (sampled, 24)):  # of 8 greedy and 32 sampled responses
        responses = [extract_response(t) for t in tok.batch_decode(out[:, width:])]
        assert sum(map(is_well_formed, responses)) >= need, responses
