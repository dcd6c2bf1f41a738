"""AlgorithmConfig: every knob of the RL math, with RECIPE.md's names and defaults."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lmm_r1_ascend.algorithms.advantages import ADVANTAGE_ESTIMATORS, AdvantageEstimator
from lmm_r1_ascend.algorithms.aggregation import AGG_MODES
from lmm_r1_ascend.algorithms.kl import KL_ESTIMATORS
from lmm_r1_ascend.algorithms.losses import POLICY_LOSSES
from lmm_r1_ascend.algorithms.rollout_correction import ROLLOUT_CORRECTIONS, check_bounds

NORMALIZATIONS = ("auto", "whiten", "center", "none")
OLD_LOGPROBS = ("recompute", "rollout")


@dataclass
class AlgorithmConfig:
    """RL algorithm settings. Defaults are the LMM-R1 recipe's common hyperparameters
    (FRE-Text's estimator); stages override what differs.

    advantage_estimator: gae | reinforce | reinforce_baseline | rloo | group_norm (grpo) | dr_grpo.
    n_samples_per_prompt: samples per prompt (a group); group estimators need >= 2.
    gamma, lambd: discount and GAE lambda.
    reward_clip_range: (low, high) clamp of the scalar reward (after the group baseline,
        as the original does); None to disable.
    advantage_normalization: "auto" (whiten, except none for group_norm and dr_grpo),
        "whiten", "center" (subtract the mean only) or "none"; over all response tokens.
    init_kl_coef: KL penalty folded into token rewards (0 disables; needs a reference).
    kl_estimator: k1 | k2 | k3 for the reward penalty. kl_clamp: clamp of the estimate.
    kl_target, kl_horizon: adaptive KL controller (None: fixed coefficient).
    use_kl_loss, kl_loss_coef, kl_loss_estimator: KL as a loss term instead of (or as
        well as) the reward penalty. k3 by default: k1's gradient is zero in expectation.
    policy_loss: "ppo", "gspo" (sequence-ratio clipping, Zheng et al. 2025) or a registered one;
        each loss reads its own keys below (losses.PolicyLossFn.params).
    eps_clip: clip range; eps_clip_low/high override either side (ppo; DAPO's clip-higher
        is eps_clip_high > eps_clip_low). gspo_clip_low/high: gspo's (much smaller) range.
    dual_clip: dual-clip constant c > 1, or None (ppo only). value_clip: critic clip, or None.
    entropy_loss_coef: entropy bonus weight (loss -= coef * entropy).
    loss_agg_mode: token-mean | seq-mean-token-mean | seq-mean-token-sum |
        seq-mean-token-sum-norm (Dr. GRPO, divides by loss_agg_constant, e.g. generate_max_len).
    old_logprobs: where the PPO ratio's old log-probs come from: "recompute" (the actor
        recomputes them before the update; the engine's are kept as the behaviour policy)
        or "rollout" (the engine's, as they were sampled; saves one forward pass).
    rollout_correction: ["none"] or any of token_tis | seq_tis | token_mask | seq_mask |
        icepop (their weights multiply), see rollout_correction.py; needs recompute.
    rollout_correction_bounds: [low, high] ratio band of the corrections (0 <= low <= 1 <= high).
    mismatch_warn_threshold: warn once when mean |p_rollout - p_trainer| exceeds this.
    dynamic_sampling: DAPO's filter: drop prompt groups whose rewards are all equal and
        draw more prompts, up to max_sample_batches draws per step (needs n_samples_per_prompt >= 2).
    """

    advantage_estimator: str = "reinforce_baseline"
    n_samples_per_prompt: int = 16
    gamma: float = 1.0
    lambd: float = 1.0
    reward_clip_range: tuple[float, float] | None = (-10.0, 10.0)
    advantage_normalization: str = "auto"
    whiten_eps: float = 1e-8
    init_kl_coef: float = 0.001
    kl_estimator: str = "k1"
    kl_clamp: float | None = 10.0
    kl_target: float | None = None
    kl_horizon: float = 10000.0
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.001
    kl_loss_estimator: str = "k3"
    policy_loss: str = "ppo"
    eps_clip: float = 0.2
    eps_clip_low: float | None = None
    eps_clip_high: float | None = None
    dual_clip: float | None = None
    value_clip: float | None = 0.2
    entropy_loss_coef: float = 0.0
    loss_agg_mode: str = "token-mean"
    loss_agg_constant: float | None = None
    old_logprobs: str = "recompute"
    rollout_correction: list[str] = field(default_factory=lambda: ["none"])
    rollout_correction_bounds: tuple[float, float] = (0.5, 5.0)
    mismatch_warn_threshold: float = 0.01
    gspo_clip_low: float = 3e-4
    gspo_clip_high: float = 4e-4
    dynamic_sampling: bool = False
    max_sample_batches: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.reward_clip_range, list):  # YAML gives lists
            self.reward_clip_range = tuple(self.reward_clip_range)
        if isinstance(self.rollout_correction_bounds, list):
            self.rollout_correction_bounds = tuple(self.rollout_correction_bounds)
        if isinstance(self.rollout_correction, str):
            self.rollout_correction = [self.rollout_correction]
        self.validate()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlgorithmConfig:
        """Build from a mapping (e.g. a YAML section); unknown keys are an error."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"unknown algorithm config key(s) {unknown}; valid keys: {', '.join(valid)}")
        return cls(**dict(data))

    @property
    def estimator(self) -> AdvantageEstimator:
        return ADVANTAGE_ESTIMATORS.get(self.advantage_estimator)

    @property
    def uses_critic(self) -> bool:
        return self.estimator.uses_critic

    @property
    def uses_reference(self) -> bool:
        """A frozen reference model is needed: KL in the reward or as a loss term."""
        return self.init_kl_coef > 0 or self.use_kl_loss

    @property
    def corrections(self) -> list[str]:
        """The rollout corrections to apply (rollout_correction without "none")."""
        return [n for n in self.rollout_correction if n != "none"]

    @property
    def clip_low(self) -> float:
        return self.eps_clip if self.eps_clip_low is None else self.eps_clip_low

    @property
    def clip_high(self) -> float:
        return self.eps_clip if self.eps_clip_high is None else self.eps_clip_high

    @property
    def resolved_normalization(self) -> str:
        """"whiten", "center" or "none" after resolving "auto" for the estimator."""
        if self.advantage_normalization != "auto":
            return self.advantage_normalization
        return "whiten" if self.estimator.whiten else "none"

    def validate(self) -> AlgorithmConfig:
        """Check every field; raise ValueError naming the key, the value and a fix."""
        spec = ADVANTAGE_ESTIMATORS.get(self.advantage_estimator)
        KL_ESTIMATORS.get(self.kl_estimator)
        _named(KL_ESTIMATORS, self.kl_loss_estimator, "kl_loss_estimator")
        AGG_MODES.get(self.loss_agg_mode)
        policy_loss = POLICY_LOSSES.get(self.policy_loss)
        if self.advantage_normalization not in NORMALIZATIONS:
            raise ValueError(
                f"unknown advantage_normalization {self.advantage_normalization!r}; valid: {', '.join(NORMALIZATIONS)}"
            )
        if isinstance(self.n_samples_per_prompt, bool) or not isinstance(self.n_samples_per_prompt, int):
            raise ValueError(f"n_samples_per_prompt must be an int, got {self.n_samples_per_prompt!r}")
        if self.n_samples_per_prompt < 1:
            raise ValueError(f"n_samples_per_prompt must be >= 1, got {self.n_samples_per_prompt}")
        if spec.needs_groups and self.n_samples_per_prompt < 2:
            raise ValueError(
                f"advantage_estimator {self.advantage_estimator!r} uses a baseline from the other samples of "
                f"the same prompt and needs n_samples_per_prompt >= 2 (got {self.n_samples_per_prompt}); "
                "raise n_samples_per_prompt or use 'reinforce' / 'gae'"
            )
        for key in ("gamma", "lambd"):
            _in_range(self, key, 0.0, 1.0)
        for key in ("init_kl_coef", "kl_loss_coef"):
            _in_range(self, key, 0.0, math.inf)
        _finite(self, "entropy_loss_coef")
        _positive(self, "eps_clip")
        for key in ("eps_clip_low", "eps_clip_high", "value_clip", "kl_clamp", "kl_target", "loss_agg_constant"):
            if getattr(self, key) is not None:
                _positive(self, key)
        if self.clip_low >= 1:
            raise ValueError(f"eps_clip_low (or eps_clip) must be < 1 so that 1 - eps > 0, got {self.clip_low}")
        if self.dual_clip is not None:
            _finite(self, "dual_clip")
        if self.dual_clip is not None and not self.dual_clip > 1:
            raise ValueError(f"dual_clip must be a number > 1 (or null to disable), got {self.dual_clip!r}")
        _positive(self, "kl_horizon")
        _positive(self, "whiten_eps")
        rc = self.reward_clip_range
        if rc is not None and (len(rc) != 2 or not rc[0] < rc[1]):
            raise ValueError(f"reward_clip_range must be [low, high] with low < high (or null), got {rc!r}")
        self._validate_mismatch()
        for key in ("gspo_clip_low", "gspo_clip_high"):
            _positive(self, key)
        if self.gspo_clip_low >= 1:
            raise ValueError(f"gspo_clip_low must be < 1, got {self.gspo_clip_low}")
        if policy_loss.check is not None:  # what the chosen loss rejects (gspo: dual_clip)
            policy_loss.check(self)
        if not isinstance(self.dynamic_sampling, bool):
            raise ValueError(f"dynamic_sampling must be true or false, got {self.dynamic_sampling!r}")
        if isinstance(self.max_sample_batches, bool) or not isinstance(self.max_sample_batches, int) \
                or self.max_sample_batches < 1:
            raise ValueError(f"max_sample_batches must be an int >= 1, got {self.max_sample_batches!r}")
        if self.dynamic_sampling and self.n_samples_per_prompt < 2:
            raise ValueError("dynamic_sampling keeps prompt groups whose rewards differ and needs "
                             f"n_samples_per_prompt >= 2 (got {self.n_samples_per_prompt})")
        return self

    def _validate_mismatch(self) -> None:
        if self.old_logprobs not in OLD_LOGPROBS:
            raise ValueError(f"old_logprobs must be one of {', '.join(OLD_LOGPROBS)}, got {self.old_logprobs!r}")
        names = list(self.rollout_correction)
        if not names:
            raise ValueError('rollout_correction must name at least one correction, or be ["none"]')
        for name in names:
            if name != "none":
                _named(ROLLOUT_CORRECTIONS, name, "rollout_correction")
        if "none" in names and len(names) > 1:
            raise ValueError(f"rollout_correction: 'none' cannot be combined with other corrections, got {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"rollout_correction names a correction twice: {names}")
        b = self.rollout_correction_bounds
        if len(b) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b):
            raise ValueError(f"rollout_correction_bounds must be [low, high], got {b!r}")
        check_bounds(*b)
        if self.corrections and self.old_logprobs == "rollout":
            raise ValueError(
                f"rollout_correction {self.corrections} compares the trainer's recomputed log-probs with the "
                "engine's, so it needs old_logprobs: recompute (got rollout)")
        _positive(self, "mismatch_warn_threshold")


def _named(registry, name: str, key: str) -> None:
    if name not in registry:
        raise ValueError(f"unknown {key} {name!r}; valid names: {', '.join(registry.names())}")


def _finite(cfg: AlgorithmConfig, key: str) -> None:
    value = getattr(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")


def _positive(cfg: AlgorithmConfig, key: str) -> None:
    _finite(cfg, key)
    if not getattr(cfg, key) > 0:
        raise ValueError(f"{key} must be > 0, got {getattr(cfg, key)!r}")


def _in_range(cfg: AlgorithmConfig, key: str, low: float, high: float) -> None:
    value = getattr(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{key} must be a number in [{low}, {high}], got {value!r}")
