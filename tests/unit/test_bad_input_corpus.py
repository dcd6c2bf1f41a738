"""The bad-input corpus (tests/corpus): reward responses and configs real users produce, each
with the status or the one-line error it must give (the data rows' corpus is run by
test_data_bad_input.py). A new failure mode found in the field goes into these files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lmm_r1_ascend.config import ConfigError, load_config
from lmm_r1_ascend.rewards import RewardInput
from lmm_r1_ascend.rewards.math_reward import MathReward

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
REWARD_CASES = [json.loads(line) for line in (CORPUS / "rewards" / "math.jsonl").read_text().splitlines() if line]
CONFIG_CASES = json.loads((CORPUS / "configs" / "bad_overrides.json").read_text())


def _response(case):
    if "response_repeat" in case:  # [prefix, unit, times, suffix]: large inputs stay small on disk
        head, unit, times, tail = case["response_repeat"]
        return head + unit * times + tail
    return case["response"]


@pytest.fixture(scope="module")
def reward():
    with MathReward(workers=1, timeout_s=10.0) as r:  # the training default: math-verify in a worker process
        yield r


def test_every_reward_case_gets_its_status_and_never_crashes(reward):
    outs = reward([RewardInput(response=_response(c), label=c["label"]) for c in REWARD_CASES])
    assert len(outs) == len(REWARD_CASES)
    for case, out in zip(REWARD_CASES, outs):
        want = case["status"] if isinstance(case["status"], list) else [case["status"]]
        assert out.status in want, (case["why"], out.status, out.detail)
        if "total" in case:
            assert out.total == pytest.approx(case["total"]), (case["why"], out.total)
        assert isinstance(out.total, float) and out.total == out.total  # a float, never NaN


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[" ".join(c["overrides"]) for c in CONFIG_CASES])
def test_every_bad_config_is_one_clear_line(case):
    with pytest.raises(ConfigError) as err:
        load_config("demo_fre", overrides=case["overrides"])
    message = str(err.value)
    assert "\n" not in message and message.strip()
    assert re.search(case["error"], message), message
