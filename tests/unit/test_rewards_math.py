"""Math reward: format + math-verify accuracy, table-driven, scored as ONE batch through
the worker pool (so the table also checks order and isolation inside a batch).

Expected values are hand-decided from the recipe's rules (RECIPE.md, "Rewards"):
format 0.5 iff the response is exactly <think>..</think><answer>..</answer>; accuracy 1
iff the response's (boxed-first) answer equals the label mathematically.
"""

from __future__ import annotations

import time

import pytest

from lmm_r1_ascend.rewards.math_accuracy import wrap_label
from lmm_r1_ascend.rewards.math_reward import MathReward, label_text
from lmm_r1_ascend.rewards.types import RewardInput


def wrap(answer: str, think: str = "reasoning") -> str:
    return f"<think> {think} </think><answer> {answer} </answer>"


# (label, response, format, accuracy, status)
CASES = [
    # equivalent forms
    ("\\frac{1}{2}", wrap("$\\boxed{0.5}$"), 0.5, 1.0, "correct"),
    ("0.5", wrap("$\\boxed{\\frac{1}{2}}$"), 0.5, 1.0, "correct"),
    ("\\frac{3}{4}", wrap("$\\boxed{\\dfrac{3}{4}}$"), 0.5, 1.0, "correct"),
    ("\\frac{1}{3}", wrap("$\\boxed{0.333333}$"), 0.5, 1.0, "correct"),  # 6-digit rounding
    ("50\\%", wrap("$\\boxed{0.5}$"), 0.5, 1.0, "correct"),
    ("0.12", wrap("$\\boxed{12\\%}$"), 0.5, 1.0, "correct"),
    ("2\\sqrt{2}", wrap("$\\boxed{\\sqrt{8}}$"), 0.5, 1.0, "correct"),
    ("\\{1,2\\}", wrap("$\\boxed{\\{2,1\\}}$"), 0.5, 1.0, "correct"),
    ("(1,2]", wrap("$\\boxed{(1,2]}$"), 0.5, 1.0, "correct"),
    ("x=2", wrap("$\\boxed{2}$"), 0.5, 1.0, "correct"),
    ("2", wrap("$\\boxed{x=2}$"), 0.5, 1.0, "correct"),
    ("30^\\circ", wrap("$\\boxed{30}$"), 0.5, 1.0, "correct"),
    ("10\\text{ cm}", wrap("$\\boxed{10}$"), 0.5, 1.0, "correct"),  # units
    ("2x", wrap("$\\boxed{x+x}$"), 0.5, 1.0, "correct"),
    ("\\frac{1}{2}", wrap("$\\boxed{\\frac{1}{\\sqrt{4}}}$"), 0.5, 1.0, "correct"),  # nested braces
    ("\\pi", wrap("$\\boxed{π}$"), 0.5, 1.0, "correct"),  # unicode in the answer
    ("\\frac{1}{2}", wrap("$\\boxed{\\frac{1}{2}}$", think="答案是一半 — ½"), 0.5, 1.0, "correct"),
    ("$\\boxed{60}$", wrap("The angle is $\\boxed{60}$ degrees, as shown."), 0.5, 1.0, "correct"),
    # wrong answers
    ("3", wrap("$\\boxed{4}$"), 0.5, 0.0, "wrong"),
    ("(1,2]", wrap("$\\boxed{[1,2]}$"), 0.5, 0.0, "wrong"),
    ("\\frac{1}{3}", wrap("$\\boxed{0.33}$"), 0.5, 0.0, "wrong"),
    ("90^\\circ", wrap("$\\boxed{\\frac{\\pi}{2}}$"), 0.5, 0.0, "wrong"),
    # well-formed LaTeX is required of the prediction (malformed_operators off)
    ("1/2", wrap("$\\boxed{\\frac12}$"), 0.5, 0.0, "wrong"),
    # several boxes: in one math environment boxed="all" makes them a set; in separate
    # environments the last one is the answer (math-verify's extraction, as in the original)
    ("3", wrap("$\\boxed{2} or maybe \\boxed{3}$"), 0.5, 0.0, "wrong"),
    ("3", wrap("$\\boxed{2}$ or maybe $\\boxed{3}$"), 0.5, 1.0, "correct"),
    ("\\{2,3\\}", wrap("$\\boxed{2}$ and $\\boxed{3}$"), 0.5, 1.0, "correct"),
    # format failures do not touch accuracy
    ("2", "$\\boxed{2}$", 0.0, 1.0, "correct"),  # missing tags
    ("2", "<think>a</think><think>b</think><answer>$\\boxed{2}$</answer>", 0.0, 1.0, "correct"),
    ("2", "<think>a</think>\n<answer>$\\boxed{2}$</answer>", 0.0, 1.0, "correct"),  # text between
    ("2", "<think>a</think><answer>$\\boxed{2}$</answer> trailing", 0.0, 1.0, "correct"),
    # nothing to parse
    ("2", wrap("it is two"), 0.5, 0.0, "no_answer"),
    ("2", wrap("$\\boxed{2$"), 0.5, 0.0, "wrong"),  # unbalanced: only a raw string
    # multiple choice (VerMulti): letters are compared
    ("B", wrap("$\\boxed{B}$"), 0.5, 1.0, "correct"),
    ("(B)", wrap("B"), 0.5, 1.0, "correct"),
    ("B: 60", wrap("$\\boxed{(b)}$"), 0.5, 1.0, "correct"),
    ("$\\boxed{C}$", wrap("$\\boxed{B. 60}$"), 0.5, 0.0, "wrong"),
    ("D.", wrap("I am not sure"), 0.5, 0.0, "no_answer"),
    # labels that cannot be parsed: 0 and flagged (the original gave 1.0)
    ("\\frac{", wrap("$\\boxed{2}$"), 0.5, 0.0, "bad_label"),
    ("$$", wrap("$\\boxed{2}$"), 0.5, 0.0, "bad_label"),
    ("   ", wrap("$\\boxed{2}$"), 0.5, 0.0, "bad_label"),
    (None, wrap("$\\boxed{2}$"), 0.5, 0.0, "bad_label"),
    (["2"], wrap("$\\boxed{2}$"), 0.5, 0.0, "bad_label"),
    (60, wrap("$\\boxed{60}$"), 0.5, 1.0, "correct"),  # numeric labels are written out
    # a response that is not text
    ("2", 2, 0.0, 0.0, "bad_input"),
    ("2", None, 0.0, 0.0, "bad_input"),
]


@pytest.fixture(scope="module")
def math_reward():
    with MathReward(workers=2, timeout_s=5.0) as m:
        yield m


def test_table_in_one_batch(math_reward):
    outs = math_reward([RewardInput(response=r, label=lab) for lab, r, *_ in CASES])
    bad = []
    for (lab, resp, fmt, acc, status), o in zip(CASES, outs):
        got = (o.components["format"], o.components["accuracy"], o.status)
        if got != (fmt, acc, status) or o.total != fmt + acc:
            bad.append(f"label={lab!r} response={resp!r}: got {got} total {o.total}, want {(fmt, acc, status)} ({o.detail})")
    assert not bad, "\n".join(bad)


def test_weights_and_disabled_format():
    o = MathReward(workers=0, format_weight=0.25, accuracy_weight=2.0).score_one("7", wrap("$\\boxed{7}$"))
    assert (o.components, o.total) == ({"format": 0.25, "accuracy": 2.0}, 2.25)
    o = MathReward(workers=0, use_format=False).score_one("7", wrap("$\\boxed{7}$"))
    assert (o.components, o.total) == ({"format": 0.0, "accuracy": 1.0}, 1.0)


def test_in_process_mode_matches_pool(math_reward):
    samples = [RewardInput(response=r, label=lab) for lab, r, *_ in CASES[:12]]
    seq = MathReward(workers=0)(samples)
    assert [o.total for o in seq] == [o.total for o in math_reward(samples)]


def test_counts_accumulate(math_reward):
    before = dict(math_reward.counts)
    math_reward([RewardInput(wrap("$\\boxed{1}$"), "1"), RewardInput(wrap("$\\boxed{1}$"), None)])
    assert math_reward.counts["correct"] - before.get("correct", 0) == 1
    assert math_reward.counts["bad_label"] - before.get("bad_label", 0) == 1


def test_huge_and_adversarial_answers_do_not_hold_up_the_batch():
    """A 1 MB response and an answer that sends sympy into a 10^(10^10) computation
    return within the limit (plus about a second), next to normal answers."""
    limit = 2.0
    huge = wrap("$\\boxed{5}$", think="word " * 200_000)  # ~1 MB
    busy = wrap("$\\boxed{10^{10^{10}}}$")
    with MathReward(workers=2, timeout_s=limit) as m:
        m.score_one("1", "$\\boxed{1}$")  # start the workers outside the timed part
        t0 = time.monotonic()
        outs = m([RewardInput(busy, "3"), RewardInput(huge, "5")] +
                 [RewardInput(wrap(f"$\\boxed{{{i}}}$"), str(i)) for i in range(20)])
        wall = time.monotonic() - t0
    assert len(huge) > 1_000_000
    assert outs[0].status == "timeout" and outs[0].total == 0.5  # format still counts
    assert outs[1].status == "correct" and outs[1].total == 1.5
    assert all(o.status == "correct" for o in outs[2:])
    assert wall < limit + 1.5  # one second of slack for a loaded 2-core machine


def test_label_helpers():
    assert wrap_label("5") == "$5$" and wrap_label(" $5$ ") == "$5$" and wrap_label("\\boxed{5}") == "$\\boxed{5}$"
    assert label_text(3) == "3" and label_text(0.5) == "0.5" and label_text(True) is None
    assert label_text("") is None and label_text({"a": 1}) is None


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="workers"):
        MathReward(workers=-1)
