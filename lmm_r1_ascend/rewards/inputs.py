"""From sampled responses to the reward layer's inputs, shared by training and evaluation."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from lmm_r1_ascend.rewards.extraction import extract_response
from lmm_r1_ascend.rewards.types import RewardInput


def reward_inputs(samples: Sequence[Any], tokenizer: Any) -> list[RewardInput]:
    """One RewardInput per rollout sample (anything with prompt_index, prompt_ids (P,) and
    response_ids (R,) int64 tensors, and a PromptItem ``prompt``): the response cut out of the
    decoded prompt + response, with the prompt's label, datasource and meta. Samples of one
    prompt share its decoded text (decoded once)."""
    inputs, prompts = [], {}
    for s in samples:
        if s.prompt_index not in prompts:
            prompts[s.prompt_index] = tokenizer.decode(s.prompt_ids.tolist())
        prompt = prompts[s.prompt_index]
        full = tokenizer.decode(torch.cat((s.prompt_ids, s.response_ids)).tolist())
        inputs.append(RewardInput(response=extract_response(full, prompt=prompt), label=s.prompt.label,
                                  query=full, prompt=prompt, datasource=s.prompt.datasource, meta=s.prompt.meta))
    return inputs
