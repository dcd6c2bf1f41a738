"""Format reward (RECIPE.md regex) and response extraction (Qwen chatml)."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmm_r1_ascend.rewards.extraction import extract_response
from lmm_r1_ascend.rewards.format import FORMAT_REGEX, format_reward, is_well_formed

# The recipe's definition, written out independently of the module under test.
RECIPE = re.compile(r"^<think>((?!</think>).)*</think><answer>((?!</answer>).)*</answer>\Z", re.DOTALL)


def recipe_format(s: str) -> bool:
    return bool(RECIPE.match(s)) and s.count("<think>") == 1 and s.count("<answer>") == 1


CASES = [
    ("<think>a</think><answer>b</answer>", True),
    ("<think></think><answer></answer>", True),
    ("<think>\nline 1\nline 2\n</think><answer>\n$\\boxed{2}$\n</answer>", True),  # newlines
    ("<think>a</answer>b</think><answer>c</answer>", True),  # only </think> is banned inside think
    ("<think>a</think><answer>b</think></answer>", True),  # only </answer> is banned inside answer
    ("<think>多语言 ✓</think><answer>½</answer>", True),
    (" <think>a</think><answer>b</answer>", False),  # leading text
    ("<think>a</think><answer>b</answer>\n", False),  # trailing newline
    ("<think>a</think><answer>b</answer>x", False),  # trailing text
    ("<think>a</think> <answer>b</answer>", False),  # text between </think> and <answer>
    ("<think>a</think>\n<answer>b</answer>", False),
    ("<think>a<think>b</think><answer>c</answer>", False),  # nested <think>
    ("<think>a</think></think><answer>c</answer>", False),  # duplicate </think>
    ("<think>a</think><answer>b</answer><answer>c</answer>", False),  # duplicate answer
    ("<think>a</think><answer>b<answer>c</answer>", False),  # nested <answer>
    ("<think>a</think><answer>b</answer></answer>", False),
    ("<answer>b</answer><think>a</think>", False),  # wrong order
    ("<think>a</think>", False),
    ("<answer>b</answer>", False),
    ("<think>a<answer>b</answer>", False),
    ("", False),
]


@pytest.mark.parametrize("text,ok", CASES)
def test_format_cases(text, ok):
    assert is_well_formed(text) is ok
    assert recipe_format(text) is ok  # the table itself agrees with the recipe
    assert format_reward(text) == (0.5 if ok else 0.0)


def test_weight_disable_and_non_text():
    good = "<think>a</think><answer>b</answer>"
    assert format_reward(good, weight=1.0) == 1.0
    assert format_reward(good, enabled=False) == 0.0
    assert format_reward(None) == 0.0 and format_reward(b"<think>") == 0.0  # type: ignore[arg-type]
    assert FORMAT_REGEX.pattern == RECIPE.pattern


FRAGMENTS = ["<think>", "</think>", "<answer>", "</answer>", "a", " ", "\n", "<", ">", "/", "think", "answer"]


def test_fast_check_equals_recipe_regex_on_random_strings(rng_seed):
    rng = random.Random(rng_seed)
    for _ in range(3000):
        s = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 9)))
        if rng.random() < 0.5:  # bias towards nearly well-formed strings
            s = "<think>" + s + "</think><answer>" + "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 4))) + "</answer>"
        assert is_well_formed(s) == recipe_format(s), repr(s)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join))
def test_fast_check_equals_recipe_regex_hypothesis(s):
    assert is_well_formed(s) == recipe_format(s)


def test_megabyte_response_is_quick():
    import time

    s = "<think>" + "x" * 1_000_000 + "</think><answer>2</answer>"
    t = time.perf_counter()
    assert is_well_formed(s)
    assert time.perf_counter() - t < 0.1  # linear str.find: milliseconds (the regex takes ~1 s)


# --- extraction ---------------------------------------------------------------

CHATML = (
    "<|im_start|>system\nYou are helpful.<|im_end|>\n"
    "<|im_start|>user\nWhat is 1+1?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def test_chatml_response_after_header_without_end_tokens():
    text = CHATML + "<think> 1+1=2 </think><answer>$\\boxed{2}$</answer><|im_end|>" + "<|endoftext|>" * 5
    assert extract_response(text) == "<think> 1+1=2 </think><answer>$\\boxed{2}$</answer>"


def test_multi_turn_prompt_uses_the_last_header():
    prior = CHATML + "earlier answer<|im_end|>\n<|im_start|>user\nAnd 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert extract_response(prior + "  four \n<|im_end|>") == "four"


def test_truncated_response_and_plain_text():
    assert extract_response(CHATML + "<think> still thinking") == "<think> still thinking"
    assert extract_response("  <think>a</think><answer>b</answer><|im_end|>") == "<think>a</think><answer>b</answer>"


def test_exact_prompt_cut_and_other_templates():
    prompt = "User: hi\nAssistant: "
    assert extract_response(prompt + "hello</s>", "plain", prompt=prompt) == "hello"
    assert extract_response("<｜User｜>q<｜Assistant｜>ans<｜end▁of▁sentence｜>", "deepseek") == "ans"


def test_extraction_errors():
    with pytest.raises(ValueError, match="unknown chat template"):
        extract_response("x", "llama99")
    with pytest.raises(TypeError, match="str"):
        extract_response(None)  # type: ignore[arg-type]
