"""The trainer hands multi-turn samples' per-turn env rewards to the experience batch.

Without it gae / reinforce would credit a trajectory's whole return at its last sampled token;
with it each turn's reward sits at that turn's last sampled token (experience/multi_turn.py).
"""

from __future__ import annotations

import torch

from lmm_r1_ascend.data.types import PromptItem
from lmm_r1_ascend.rollout.base import RolloutSample
from lmm_r1_ascend.rollout.multi_turn import Trajectory
from lmm_r1_ascend.trainer.ppo import PPOTrainer


def _sample(i: int, mask: list[int], trajectory: Trajectory | None) -> RolloutSample:
    n = len(mask)
    s = RolloutSample(prompt_index=i, sample_index=0, prompt_ids=torch.tensor([1, 2]),
                      response_ids=torch.arange(3, 3 + n), logprobs=torch.zeros(n),
                      action_mask=torch.tensor(mask, dtype=torch.bool), finish_reason="stop",
                      prompt=PromptItem(prompt_ids=[1, 2], prompt_text="ab"))
    s.trajectory = trajectory
    return s


def test_experience_carries_per_turn_rewards_of_multi_turn_samples():
    g = torch.Generator().manual_seed(0)
    r = [float(x) for x in torch.randn(4, generator=g)]
    samples = [_sample(0, [1, 1, 0, 0, 1], Trajectory(turn_ends=[1, 4], turn_rewards=r[:2])),
               _sample(1, [1, 0, 1, 1], Trajectory(turn_ends=[0, 3], turn_rewards=r[2:]))]
    batch = PPOTrainer._experience(None, samples, torch.tensor([r[0] + r[1], r[2] + r[3]]), {})
    want = [torch.tensor([0.0, r[0], 0.0, 0.0, r[1]]), torch.tensor([r[2], 0.0, 0.0, r[3]])]
    assert batch.step_rewards is not None
    for got, w in zip(batch.step_rewards, want):
        torch.testing.assert_close(got, w)


def test_single_response_samples_have_no_step_rewards():
    samples = [_sample(0, [1, 1], None), _sample(1, [1], None)]
    assert PPOTrainer._experience(None, samples, torch.tensor([1.0, 0.0]), {}).step_rewards is None
