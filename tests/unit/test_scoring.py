"""One scoring path: training (the trainer's score_samples + reward_metrics) and evaluation
(evaluation.runner.evaluate) give the same NaN-bearing batch the same counts."""

from __future__ import annotations

import math
import random

import pytest
import torch

from lmm_r1_ascend.data.types import PromptItem
from lmm_r1_ascend.rewards.types import RewardOutput
from lmm_r1_ascend.rollout.base import RolloutSample


class _Tok:
    """Decodes ids as space-joined numbers (enough for reward_inputs)."""

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


def _batch(n_prompts: int, n: int, seed: int):
    """Samples (prompt-major, n each) and one RewardOutput per sample, some NaN / inf, drawn
    from a fresh RNG: statuses correct / wrong, a format component, totals in [0, 1]."""
    rng = random.Random(seed)
    samples, outs = [], []
    for p in range(n_prompts):
        prompt = PromptItem(prompt_ids=[1, 2, 3 + p], prompt_text="", label="1", datasource="math")
        for k in range(n):
            samples.append(RolloutSample(
                prompt_index=p, sample_index=k, prompt_ids=torch.tensor([1, 2, 3 + p]),
                response_ids=torch.tensor([7] * rng.randint(1, 5)), logprobs=torch.zeros(1),
                action_mask=torch.ones(1, dtype=torch.bool), finish_reason="stop", prompt=prompt))
            status = rng.choice(["correct", "wrong"])
            total = rng.choice([float("nan"), float("inf"), -float("inf"), rng.random(), rng.random()])
            fmt = rng.choice([1.0, 0.0, float("nan")])
            outs.append(RewardOutput(total=total, components={"format": fmt, "accuracy": float(status == "correct")},
                                     status=status))
    return samples, outs


@pytest.mark.parametrize("seed", [0, 1])
def test_eval_and_training_count_a_nan_bearing_batch_alike(seed):
    from lmm_r1_ascend.evaluation.runner import evaluate
    from lmm_r1_ascend.rollout.base import SamplingConfig
    from lmm_r1_ascend.trainer.setup import Components, reward_metrics

    n_prompts, n = 3, 4
    samples, outs = _batch(n_prompts, n, seed)
    assert any(not math.isfinite(o.total) for o in outs)
    tok = _Tok()

    def reward(inputs):
        assert len(inputs) == len(outs)
        return [RewardOutput(o.total, dict(o.components), o.status) for o in outs]

    class Trainer:  # what Components.score_samples reads
        tokenizer = tok

    Trainer.reward = staticmethod(reward)
    scored = Components.score_samples(Trainer(), samples)
    train = reward_metrics(samples, scored)

    result = evaluate([s.prompt for s in samples[::n]], generate=lambda prompts, sampling: samples, reward=reward,
                      tokenizer=tok, sampling=SamplingConfig(n=n, max_new_tokens=8), same=None)
    ev = result.summary["all"]
    total = n_prompts * n
    # reference: a sample is "nonfinite_reward" when its total or any component is NaN / inf
    bad = [not all(math.isfinite(v) for v in (o.total, *o.components.values())) for o in outs]
    want = {"nonfinite_reward": sum(bad)}
    for o, b in zip(outs, bad):
        if not b:
            want[o.status] = want.get(o.status, 0) + 1
    got_train = {k.removeprefix("reward/status/"): round(v * total) for k, v in train.items()
                 if k.startswith("reward/status/")}
    got_eval = {k.removeprefix("status/"): int(v) for k, v in ev.items() if k.startswith("status/")}
    assert got_train == want
    assert got_eval == want
    # a non-finite sample is neither correct nor formatted, and scores 0 in both
    want_correct = sum(o.status == "correct" and not b for o, b in zip(outs, bad))
    assert ev["accuracy"] * total == pytest.approx(want_correct, abs=1e-9)
    want_mean = sum(0.0 if b else o.total for o, b in zip(outs, bad)) / total
    # training's totals are float32 (2^-24 relative rounding per value); eval keeps Python floats
    assert train["reward/mean"] == pytest.approx(want_mean, rel=1e-6, abs=1e-7)
    assert ev["reward_mean"] == pytest.approx(want_mean, rel=1e-12, abs=1e-12)
    want_format = sum(o.components["format"] > 0 and not b for o, b in zip(outs, bad)) / total
    assert ev["format_rate"] == pytest.approx(want_format, abs=1e-12)
    assert train["reward/format"] == pytest.approx(
        sum(0.0 if b else o.components["format"] for o, b in zip(outs, bad)) / total, rel=1e-6)
