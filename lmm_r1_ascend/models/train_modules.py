"""The trained models' packed forwards as single nn.Modules, which the training engines wrap.

Under DeepSpeed ZeRO-3 a parameter exists whole only inside the forward of the module
handed to the engine, and gradient accumulation over micro-batches is correct only when
each forward goes through the engine (DeepSpeed advances its micro-step bookkeeping in the
engine's forward). Our packed log-probs read the output head's weight directly (chunked,
so the full logits never exist), which would happen outside any forward. So the whole
computation, backbone and head, is the forward of one wrapper module. The same wrappers
serve the single-process torch engine, so every mode runs the same code.

State-dict keys of a wrapper carry its attribute prefix (``policy.`` / ``critic.``);
`strip_prefix` / `add_prefix` convert to and from the model's own names (checkpoints,
weight sync and Hugging Face exports use the model's names).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lmm_r1_ascend.models.forward import PackedInputs, Sample, packed_log_probs, packed_values


class PolicyLogProbs(nn.Module):
    """forward(samples) -> {"log_probs": (T_resp,) float32, "entropy": (T_resp,) float32 if asked}:
    the response tokens of all samples, concatenated in sample order."""

    prefix = "policy."

    def __init__(self, policy: nn.Module, temperature: float):
        super().__init__()
        self.policy, self.temperature = policy, float(temperature)

    def forward(self, samples: Sequence[Sample] | PackedInputs, return_entropy: bool = False) -> dict[str, torch.Tensor]:
        out = packed_log_probs(self.policy, samples, temperature=self.temperature, return_entropy=return_entropy)
        res = {"log_probs": torch.cat(out.log_probs)}
        if return_entropy:
            res["entropy"] = torch.cat(out.entropy)
        return res


class CriticValues(nn.Module):
    """forward(samples) -> (T_resp,) float32 values of the states before each response token."""

    prefix = "critic."

    def __init__(self, critic: nn.Module):
        super().__init__()
        self.critic = critic

    def forward(self, samples: Sequence[Sample] | PackedInputs) -> torch.Tensor:
        return torch.cat(packed_values(self.critic, samples))


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Wrapper keys -> the model's own keys (every key must carry the prefix)."""
    bad = [k for k in state if not k.startswith(prefix)]
    if bad:
        raise ValueError(f"state-dict key {bad[0]!r} lacks the wrapper prefix {prefix!r}")
    return {k[len(prefix):]: v for k, v in state.items()}


def add_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}
