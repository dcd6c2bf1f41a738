"""ExperienceBatch: a rollout's samples as per-sample variable-length tensors, no padding.

Sample ``i`` has a prompt of ``P_i`` tokens and a response of ``R_i >= 1`` tokens. Every
token-level field holds one 1-D tensor of length ``R_i`` per sample, aligned with
``response_ids``: entry ``j`` belongs to response token ``j``. Scalars per sample are
(B,) tensors. Samples of one prompt share a ``group_id`` and, until advantages are
computed, sit consecutively (the rollout's order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from lmm_r1_ascend.algorithms.config import AlgorithmConfig
from lmm_r1_ascend.algorithms.pipeline import AdvantageResult, compute_advantages

# Token-level fields: list of B tensors (R_i,). The first two are required.
TOKEN_FIELDS = ("action_mask", "log_probs", "ref_log_probs", "values", "advantages", "returns", "kl",
                "rollout_log_probs", "correction_weights", "step_rewards")
OPTIONAL_TOKEN_FIELDS = TOKEN_FIELDS[2:]


@dataclass
class ExperienceBatch:
    """B samples of a rollout.

    prompt_ids: B int64 tensors (P_i,). response_ids: B int64 tensors (R_i,), R_i >= 1.
    action_mask: B bool tensors (R_i,), True on tokens the policy chose and is trained on.
    log_probs: B float tensors (R_i,), the old policy's log-probs: the PPO ratio's
        denominator. The rollout engine's own until the trainer recomputes them
        (algorithm.old_logprobs=recompute), which moves the engine's into rollout_log_probs.
    rewards: (B,) float scalar rewards. group_ids: (B,) int64, the prompt of each sample.
    ref_log_probs, values, advantages, returns, kl: None or B float tensors (R_i,).
    rollout_log_probs: None or B float tensors (R_i,): the behaviour policy's log-probs as the
        rollout engine sampled them, kept beside recomputed log_probs.
    correction_weights: None or B float tensors (R_i,): detached per-token weights of the
        policy-gradient loss from algorithm.rollout_correction (0 drops a token).
    step_rewards: None or B float tensors (R_i,): multi-turn samples' per-turn environment
        rewards at each turn's last sampled token, 0 elsewhere (experience/multi_turn.py);
        gae / reinforce credit them where they were earned (algorithms.pipeline).
    multimodal: None or B dicts of tensors (e.g. pixel_values, image_grid_thw); {} for a
        text-only sample (a multi-turn sample's hold every image of prompt and response).
    info: extra per-sample (B,) tensors (e.g. format reward), carried along by select/cat.
    """

    prompt_ids: list[torch.Tensor]
    response_ids: list[torch.Tensor]
    action_mask: list[torch.Tensor]
    log_probs: list[torch.Tensor]
    rewards: torch.Tensor
    group_ids: torch.Tensor
    ref_log_probs: list[torch.Tensor] | None = None
    values: list[torch.Tensor] | None = None
    advantages: list[torch.Tensor] | None = None
    returns: list[torch.Tensor] | None = None
    kl: list[torch.Tensor] | None = None
    rollout_log_probs: list[torch.Tensor] | None = None
    correction_weights: list[torch.Tensor] | None = None
    step_rewards: list[torch.Tensor] | None = None
    multimodal: list[dict[str, torch.Tensor]] | None = None
    info: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        b = len(self.response_ids)
        if len(self.prompt_ids) != b:
            raise ValueError(f"prompt_ids has {len(self.prompt_ids)} samples but response_ids has {b}")
        for name in ("prompt_ids", "response_ids"):
            for i, t in enumerate(getattr(self, name)):
                if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.is_floating_point() or t.dtype == torch.bool:
                    raise ValueError(f"{name}[{i}] must be a 1-D integer tensor, got {_describe(t)}")
                if t.numel() < 1:
                    raise ValueError(f"{name}[{i}] is empty: every prompt and response needs at least one token")
        lengths = self.response_lengths
        for name in TOKEN_FIELDS:
            seqs = getattr(self, name)
            if seqs is None:
                if name in ("action_mask", "log_probs"):
                    raise ValueError(f"{name} is required")
                continue
            if len(seqs) != b:
                raise ValueError(f"{name} has {len(seqs)} samples but the batch has {b}")
            for i, (t, n) in enumerate(zip(seqs, lengths)):
                if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n,):
                    raise ValueError(f"{name}[{i}] must have shape ({n},) like response_ids[{i}], got {_describe(t)}")
                want_bool = name == "action_mask"
                if want_bool != (t.dtype == torch.bool) or (not want_bool and not t.is_floating_point()):
                    raise ValueError(f"{name}[{i}] must be {'bool' if want_bool else 'floating'}, got {t.dtype}")
        scalars = {"rewards": self.rewards, "group_ids": self.group_ids}
        scalars.update({f"info[{k!r}]": v for k, v in self.info.items()})
        for name, t in scalars.items():
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != (b,):
                raise ValueError(f"{name} must be a ({b},) tensor (one value per sample), got {_describe(t)}")
        if self.multimodal is not None and len(self.multimodal) != b:
            raise ValueError(f"multimodal has {len(self.multimodal)} entries but the batch has {b} samples")

    def __len__(self) -> int:
        return len(self.response_ids)

    @property
    def response_lengths(self) -> list[int]:
        return [int(t.shape[0]) for t in self.response_ids]

    @property
    def sequence_lengths(self) -> list[int]:
        """Prompt + response tokens per sample: what a packed forward processes."""
        return [int(p.shape[0]) + int(r.shape[0]) for p, r in zip(self.prompt_ids, self.response_ids)]

    @property
    def action_counts(self) -> list[int]:
        return [int(m.sum()) for m in self.action_mask]

    def select(self, indices: Sequence[int]) -> ExperienceBatch:
        """A new batch with samples ``indices`` in that order (tensors shared, not copied)."""
        idx = [int(i) for i in indices]
        for i in idx:
            if not -len(self) <= i < len(self):
                raise IndexError(f"sample index {i} out of range for a batch of {len(self)}")
        rows = torch.tensor(idx, dtype=torch.int64)
        kwargs = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "info":
                kwargs[f.name] = {k: v[rows.to(v.device)] for k, v in value.items()}
            elif isinstance(value, torch.Tensor):
                kwargs[f.name] = value[rows.to(value.device)]
            elif value is None:
                kwargs[f.name] = None
            else:
                kwargs[f.name] = [value[i] for i in idx]
        return ExperienceBatch(**kwargs)

    @classmethod
    def cat(cls, batches: Sequence[ExperienceBatch]) -> ExperienceBatch:
        """Concatenate batches; an optional field must be set in all of them or in none."""
        if not batches:
            raise ValueError("cat needs at least one ExperienceBatch")
        kwargs = {}
        for f in dataclasses.fields(cls):
            values = [getattr(b, f.name) for b in batches]
            if f.name == "info":
                keys = set(values[0])
                if any(set(v) != keys for v in values):
                    raise ValueError(f"cannot cat batches with different info keys: {[sorted(v) for v in values]}")
                kwargs[f.name] = {k: torch.cat([v[k] for v in values]) for k in keys}
            elif all(v is None for v in values):
                kwargs[f.name] = None
            elif any(v is None for v in values):
                raise ValueError(f"cannot cat batches where {f.name} is set in some and None in others")
            elif isinstance(values[0], torch.Tensor):
                kwargs[f.name] = torch.cat(values)
            else:
                kwargs[f.name] = [t for v in values for t in v]
        return cls(**kwargs)

    def padded(self, name: str, pad_value: float | bool = 0) -> torch.Tensor:
        """Token field ``name`` as a (B, max R_i) tensor, right-padded with ``pad_value``."""
        seqs = self._token_field(name)
        return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_value)

    def unpadded(self, padded: torch.Tensor) -> list[torch.Tensor]:
        """Inverse of ``padded``: (B, L >= max R_i) -> B tensors (R_i,)."""
        longest = max(self.response_lengths, default=0)
        if padded.dim() != 2 or padded.shape[0] != len(self) or padded.shape[1] < longest:
            raise ValueError(f"expected a (B={len(self)}, L>={longest}) tensor, got {tuple(padded.shape)}")
        return [padded[i, :n] for i, n in enumerate(self.response_lengths)]

    def packed(self, name: str) -> torch.Tensor:
        """Token field ``name`` concatenated over samples: (sum R_i,). See ``response_cu_seqlens``."""
        return torch.cat(self._token_field(name))

    def response_cu_seqlens(self, device: torch.device | str | None = None) -> torch.Tensor:
        """int64 (B+1,) offsets of each response inside ``packed`` tensors, leading 0."""
        lengths = torch.tensor([0, *self.response_lengths], dtype=torch.int64, device=device)
        return lengths.cumsum(0)

    def _token_field(self, name: str) -> list[torch.Tensor]:
        if name not in TOKEN_FIELDS:
            raise ValueError(f"{name!r} is not a token-level field; token fields: {', '.join(TOKEN_FIELDS)}")
        seqs = getattr(self, name)
        if seqs is None:
            raise ValueError(f"{name} is not set on this batch (compute it first)")
        return seqs

    def with_advantages(
        self, cfg: AlgorithmConfig, kl_coef: float | None = None
    ) -> tuple[ExperienceBatch, AdvantageResult]:
        """Compute kl, advantages and returns for this whole rollout (see algorithms.pipeline).

        Group estimators check that samples sit in consecutive blocks of
        ``cfg.n_samples_per_prompt`` with one group id per block. Returns the new batch
        and the padded result (for metrics such as ``mean_kl``).
        """
        if cfg.estimator.needs_groups:
            check_groups(self.group_ids, cfg.n_samples_per_prompt)
        mask = self.padded("action_mask", False)
        has_ref = self.ref_log_probs is not None
        result = compute_advantages(
            cfg,
            self.rewards,
            mask,
            log_probs=self.padded("log_probs") if has_ref else None,
            ref_log_probs=self.padded("ref_log_probs") if has_ref else None,
            values=self.padded("values") if cfg.uses_critic else None,
            kl_coef=kl_coef,
            step_rewards=self.padded("step_rewards") if self.step_rewards is not None else None,
        )
        new = dataclasses.replace(
            self,
            advantages=self.unpadded(result.advantages),
            returns=self.unpadded(result.returns),
            kl=self.unpadded(result.kl),
        )
        return new, result

    def to(self, device: torch.device | str) -> ExperienceBatch:
        """Move every tensor to ``device``."""
        kwargs = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                kwargs[f.name] = value.to(device)
            elif f.name == "info":
                kwargs[f.name] = {k: v.to(device) for k, v in value.items()}
            elif f.name == "multimodal" and value is not None:
                kwargs[f.name] = [{k: v.to(device) for k, v in d.items()} for d in value]
            elif value is not None:
                kwargs[f.name] = [t.to(device) for t in value]
            else:
                kwargs[f.name] = None
        return ExperienceBatch(**kwargs)


def check_groups(group_ids: torch.Tensor, n: int) -> None:
    """Samples must form consecutive blocks of ``n`` sharing one group id, ids distinct per block."""
    ids = group_ids.tolist()
    if len(ids) % n:
        raise ValueError(f"{len(ids)} samples cannot form whole groups of n_samples_per_prompt={n}")
    blocks = [ids[i : i + n] for i in range(0, len(ids), n)]
    for k, block in enumerate(blocks):
        if len(set(block)) != 1:
            raise ValueError(
                f"samples {k * n}..{k * n + n - 1} have group ids {block}: the n samples of a prompt must be "
                "consecutive (compute advantages before shuffling)"
            )
    heads = [b[0] for b in blocks]
    if len(set(heads)) != len(heads):
        raise ValueError("a group id appears in two blocks: each prompt's n samples must be together")


def _describe(t: object) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} tensor of shape {tuple(t.shape)}"
    return type(t).__name__
