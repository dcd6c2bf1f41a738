"""RL math as pure, device-agnostic functions with registries by name.

Modules: advantages (group baselines, token rewards, returns, GAE), kl (k1/k2/k3 and KL
controllers), whitening, aggregation (loss modes and mini-batch normalisers), losses
(policy / value / entropy / KL; PPO and GSPO), rollout_correction (rollout/trainer
mismatch metrics and importance corrections), shaping (DAPO's overlong penalty and
dynamic-sampling filter), config (AlgorithmConfig), pipeline (rewards ->
advantages for a rollout) and objectives (config-driven actor / critic losses).
"""

from __future__ import annotations

from lmm_r1_ascend.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageEstimator,
    baseline_rewards,
    discounted_returns,
    gae,
    group_norm_rewards,
    last_action_index,
    rloo_rewards,
    token_rewards,
)
from lmm_r1_ascend.algorithms.aggregation import (
    AGG_MODES,
    aggregate,
    broadcast_sequences,
    loss_normaliser,
    sequence_sums,
    token_counts,
)
from lmm_r1_ascend.algorithms.config import AlgorithmConfig
from lmm_r1_ascend.algorithms.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    compute_kl,
    make_kl_controller,
)
from lmm_r1_ascend.algorithms.losses import (
    POLICY_LOSSES,
    PolicyLossFn,
    PolicyLossOutput,
    ValueLossOutput,
    entropy_term,
    gspo_policy_loss,
    kl_loss,
    ppo_policy_loss,
    value_loss,
)
from lmm_r1_ascend.algorithms.objectives import ActorLossOutput, actor_loss, critic_loss
from lmm_r1_ascend.algorithms.pipeline import AdvantageResult, compute_advantages
from lmm_r1_ascend.algorithms.registry import Registry
from lmm_r1_ascend.algorithms.rollout_correction import (
    ROLLOUT_CORRECTIONS,
    CorrectionOutput,
    correction_weights,
    mismatch_metrics,
)
from lmm_r1_ascend.algorithms.shaping import informative_groups, overlong_penalty
from lmm_r1_ascend.algorithms.whitening import masked_mean, masked_sum, whiten

__all__ = [
    "ADVANTAGE_ESTIMATORS", "AGG_MODES", "KL_ESTIMATORS", "POLICY_LOSSES", "ROLLOUT_CORRECTIONS",
    "ActorLossOutput", "AdaptiveKLController", "AdvantageEstimator", "AdvantageResult",
    "AlgorithmConfig", "CorrectionOutput", "FixedKLController", "PolicyLossFn", "PolicyLossOutput", "Registry",
    "ValueLossOutput", "actor_loss", "aggregate", "baseline_rewards", "broadcast_sequences",
    "compute_advantages", "compute_kl", "correction_weights", "critic_loss", "discounted_returns",
    "entropy_term", "gae", "group_norm_rewards", "gspo_policy_loss", "informative_groups",
    "kl_loss", "last_action_index", "loss_normaliser", "make_kl_controller", "masked_mean",
    "masked_sum", "mismatch_metrics", "overlong_penalty", "ppo_policy_loss", "rloo_rewards",
    "sequence_sums", "token_counts",
    "token_rewards", "value_loss", "whiten",
]
