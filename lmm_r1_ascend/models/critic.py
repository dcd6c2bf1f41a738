"""The critic: a policy backbone (no LM head) and a scalar value head on its last hidden state.

RECIPE.md: value head = Linear(hidden, 1, bias=False) on the last hidden state. RECIPE.md
does not say how it is initialised; we follow the original code's OpenRLHF lineage:
weight ~ Normal(0, std = 1 / (hidden + 1)), so initial values are near 0 (|v| ~ 1/sqrt(H)
for unit-RMS hidden states) whatever the hidden size.

The backbone sits under the attribute ``model``, so the critic's parameter names are the
policy's (``model.visual.*``, ``model.language_model.*`` / ``model.layers.*``) plus
``value_head.weight``: the same freeze prefixes work for both.

A checkpoint is the backbone's own ``save_pretrained`` directory (loadable with
``AutoModel``) plus ``value_head.safetensors`` and a small ``lmm_r1_critic.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

VALUE_HEAD_FILE = "value_head.safetensors"
CRITIC_MARKER_FILE = "lmm_r1_critic.json"


def _hidden_size(config) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.hidden_size)


def init_value_head(head: nn.Linear, generator: torch.Generator | None = None) -> None:
    """Normal(0, 1 / (hidden + 1)) weights, in place (the original code's initialisation)."""
    with torch.no_grad():
        w = torch.empty(head.weight.shape, dtype=torch.float32, device="cpu")
        w.normal_(mean=0.0, std=1.0 / (head.in_features + 1), generator=generator)
        head.weight.copy_(w)  # drawn in fp32 on CPU: the same values on every device and dtype


class Critic(nn.Module):
    """Backbone + value head.

    model: a Hugging Face base model (``Qwen2Model``, ``Qwen2_5_VLModel``, ...), returning
        last hidden states (1, T, H).
    value_head: Linear(H, 1, bias=False) in the backbone's dtype and device.
    """

    def __init__(self, backbone: nn.Module, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.model = backbone
        hidden = _hidden_size(backbone.config)
        ref = next(backbone.parameters())
        self.value_head = nn.Linear(hidden, 1, bias=False, device=ref.device, dtype=ref.dtype)
        init_value_head(self.value_head, generator)

    @property
    def config(self):
        return self.model.config

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) hidden states in the head's dtype -> (...,) float32 values."""
        return self.value_head(hidden).squeeze(-1).float()

    @classmethod
    def from_backbone(cls, backbone: nn.Module, path: str | os.PathLike | None = None, *,
                      generator: torch.Generator | None = None) -> Critic:
        """Wrap ``backbone``; load the value head saved in ``path`` if there is one, else initialise it."""
        critic = cls(backbone, generator=generator)
        head_file = Path(path) / VALUE_HEAD_FILE if path is not None else None
        if head_file is not None and head_file.is_file():
            critic.load_value_head(head_file)
        return critic

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                        generator: torch.Generator | None = None) -> Critic:
        """Load a critic directory (or a policy checkpoint, giving a fresh head) with AutoModel."""
        from transformers import AutoModel

        backbone = AutoModel.from_pretrained(path, dtype=dtype, attn_implementation="sdpa", local_files_only=True)
        return cls.from_backbone(backbone, path, generator=generator)

    def load_value_head(self, file: str | os.PathLike) -> None:
        from safetensors.torch import load_file

        tensors = load_file(str(file))
        weight = tensors.get("weight")
        if weight is None or tuple(weight.shape) != tuple(self.value_head.weight.shape):
            got = None if weight is None else tuple(weight.shape)
            raise ValueError(f"{file}: expected a 'weight' tensor of shape {tuple(self.value_head.weight.shape)} "
                             f"(Linear(hidden, 1)), got {got}; was it saved from a model of another hidden size?")
        with torch.no_grad():
            self.value_head.weight.copy_(weight)

    def save_pretrained(self, out_dir: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the backbone (HF format), the value head and a marker into ``out_dir``.

        state_dict: this module's full state (keys ``model.*`` and ``value_head.weight``) when
        the parameters themselves are partitioned (ZeRO-3); None reads the parameters."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if state_dict is None:
            self.model.save_pretrained(out, safe_serialization=True)
            head = self.value_head.weight.detach()
        else:
            backbone = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
            self.model.save_pretrained(out, safe_serialization=True, state_dict=backbone)
            head = state_dict["value_head.weight"]
        save_file({"weight": head.cpu().contiguous()}, str(out / VALUE_HEAD_FILE))
        (out / CRITIC_MARKER_FILE).write_text(json.dumps({"value_head": VALUE_HEAD_FILE,
                                                          "hidden_size": self.value_head.in_features}))
        return out
