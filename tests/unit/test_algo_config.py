"""AlgorithmConfig: RECIPE.md defaults, registries by name, and clear validation errors."""

from __future__ import annotations

import dataclasses

import pytest

from lmm_r1_ascend.algorithms import ADVANTAGE_ESTIMATORS, AlgorithmConfig


def test_defaults_are_the_recipe_common_hyperparameters():
    cfg = AlgorithmConfig()
    # RECIPE.md "Common": n 16, gamma 1, lambda 1, eps_clip 0.2, value_clip 0.2, reward clip +-10,
    # k1 folded into the reward (not a loss term); init_kl 0.001 (all stages but Sokoban).
    assert (cfg.n_samples_per_prompt, cfg.gamma, cfg.lambd, cfg.eps_clip, cfg.value_clip) == (16, 1.0, 1.0, 0.2, 0.2)
    assert cfg.reward_clip_range == (-10.0, 10.0)
    assert (cfg.kl_estimator, cfg.use_kl_loss, cfg.init_kl_coef) == ("k1", False, 0.001)
    assert cfg.advantage_estimator == "reinforce_baseline" and cfg.loss_agg_mode == "token-mean"
    assert (cfg.clip_low, cfg.clip_high) == (0.2, 0.2)


def test_estimator_names_and_derived_settings():
    names = {"gae", "reinforce", "reinforce_baseline", "rloo", "group_norm", "grpo", "dr_grpo"}
    assert set(ADVANTAGE_ESTIMATORS.names()) == names
    assert AlgorithmConfig(advantage_estimator="gae").uses_critic
    assert not AlgorithmConfig(advantage_estimator="rloo").uses_critic
    assert AlgorithmConfig(init_kl_coef=0.001).uses_reference
    assert AlgorithmConfig(init_kl_coef=0.0, use_kl_loss=True).uses_reference
    assert not AlgorithmConfig(init_kl_coef=0.0, use_kl_loss=False).uses_reference
    for name, want in [("gae", "whiten"), ("rloo", "whiten"), ("reinforce", "whiten"),
                       ("group_norm", "none"), ("grpo", "none"), ("dr_grpo", "none")]:
        assert AlgorithmConfig(advantage_estimator=name).resolved_normalization == want
    forced = AlgorithmConfig(advantage_estimator="group_norm", advantage_normalization="center")
    assert forced.resolved_normalization == "center"
    cfg = AlgorithmConfig(eps_clip=0.2, eps_clip_high=0.28)
    assert (cfg.clip_low, cfg.clip_high) == (0.2, 0.28)


def test_from_dict_accepts_yaml_shapes_and_rejects_unknown_keys():
    cfg = AlgorithmConfig.from_dict({"advantage_estimator": "gae", "reward_clip_range": [-5, 5]})
    assert cfg.reward_clip_range == (-5, 5)
    with pytest.raises(ValueError, match=r"unknown algorithm config key\(s\) \['eps_clp'\]; valid keys: advantage_"):
        AlgorithmConfig.from_dict({"eps_clp": 0.2})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"advantage_estimator": "ppo"}, r"unknown advantage estimator 'ppo'.*valid names: dr_grpo, gae, group_norm"),
        ({"kl_estimator": "k9"}, r"unknown KL estimator 'k9'.*valid names: k1, k2, k3"),
        ({"kl_loss_estimator": "kl"}, r"unknown kl_loss_estimator 'kl'; valid names: k1, k2, k3"),
        ({"loss_agg_mode": "mean"}, r"unknown loss aggregation mode 'mean'"),
        ({"policy_loss": "ppo2"}, r"unknown policy loss 'ppo2'.*valid names: gspo, ppo"),
        ({"advantage_normalization": "batch"}, r"valid: auto, whiten, center, none"),
        ({"n_samples_per_prompt": 1}, r"'reinforce_baseline' uses a baseline .* needs n_samples_per_prompt >= 2"),
        ({"advantage_estimator": "group_norm", "n_samples_per_prompt": 1}, r"needs n_samples_per_prompt >= 2"),
        ({"n_samples_per_prompt": 0, "advantage_estimator": "gae"}, r"n_samples_per_prompt must be >= 1"),
        ({"n_samples_per_prompt": 2.0}, r"n_samples_per_prompt must be an int"),
        ({"eps_clip": -0.2}, r"eps_clip must be > 0"),
        ({"eps_clip_low": 1.0}, r"must be < 1"),
        ({"eps_clip_high": 0.0}, r"eps_clip_high must be > 0"),
        ({"value_clip": -0.2}, r"value_clip must be > 0"),
        ({"dual_clip": 1.0}, r"dual_clip must be a number > 1"),
        ({"gamma": 1.5}, r"gamma must be a number in \[0.0, 1.0\]"),
        ({"lambd": -0.1}, r"lambd must be a number in"),
        ({"init_kl_coef": -0.001}, r"init_kl_coef must be a number in \[0.0, inf\]"),
        ({"kl_target": 0.0}, r"kl_target must be > 0"),
        ({"kl_horizon": 0}, r"kl_horizon must be > 0"),
        ({"kl_clamp": -1.0}, r"kl_clamp must be > 0"),
        ({"reward_clip_range": (10, -10)}, r"reward_clip_range must be \[low, high\] with low < high"),
        ({"entropy_loss_coef": float("nan")}, r"entropy_loss_coef must be a finite number"),
        ({"loss_agg_constant": 0}, r"loss_agg_constant must be > 0"),
        ({"old_logprobs": "engine"}, r"old_logprobs must be one of recompute, rollout, got 'engine'"),
        ({"rollout_correction": ["tis"]},
         r"unknown rollout_correction 'tis'; valid names: icepop, seq_mask, seq_tis, token_mask, token_tis"),
        ({"rollout_correction": "tis"}, r"unknown rollout_correction 'tis'"),
        ({"rollout_correction": ["none", "token_tis"]}, r"rollout_correction: 'none' cannot be combined"),
        ({"rollout_correction": ["token_tis", "token_tis"]}, r"rollout_correction names a correction twice"),
        ({"rollout_correction": []}, r"rollout_correction must name at least one correction"),
        ({"rollout_correction_bounds": [1.2, 5]}, r"rollout_correction_bounds must be \[low, high\] with 0 <= low"),
        ({"rollout_correction_bounds": [0.5, 0.9]}, r"rollout_correction_bounds must be \[low, high\] with 0 <= low"),
        ({"rollout_correction_bounds": [-0.5, 2.0]}, r"rollout_correction_bounds must be \[low, high\]"),
        ({"rollout_correction_bounds": [0.5, 2.0, 3.0]}, r"rollout_correction_bounds must be \[low, high\]"),
        ({"rollout_correction_bounds": [0.5, "2"]}, r"rollout_correction_bounds must be \[low, high\]"),
        ({"rollout_correction": ["token_tis"], "old_logprobs": "rollout"},
         r"rollout_correction \['token_tis'\] .* needs old_logprobs: recompute"),
        ({"mismatch_warn_threshold": 0.0}, r"mismatch_warn_threshold must be > 0"),
        ({"mismatch_warn_threshold": -0.1}, r"mismatch_warn_threshold must be > 0"),
        ({"policy_loss": "gspo", "dual_clip": 3.0}, r"policy_loss 'gspo' .* takes no dual_clip"),
        ({"policy_loss": "gspo", "gspo_clip_low": 0.0}, r"gspo_clip_low must be > 0"),
        ({"policy_loss": "gspo", "gspo_clip_high": -1e-4}, r"gspo_clip_high must be > 0"),
        ({"policy_loss": "gspo", "gspo_clip_low": 1.0}, r"gspo_clip_low must be < 1"),
        ({"max_sample_batches": 0}, r"max_sample_batches must be an int >= 1, got 0"),
        ({"max_sample_batches": 2.0}, r"max_sample_batches must be an int >= 1"),
        ({"dynamic_sampling": "yes"}, r"dynamic_sampling must be true or false"),
        ({"dynamic_sampling": True, "advantage_estimator": "reinforce", "n_samples_per_prompt": 1},
         r"dynamic_sampling .* needs n_samples_per_prompt >= 2 \(got 1\)"),
    ],
)
def test_validation_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        AlgorithmConfig(**overrides)


def test_validate_after_mutation():
    cfg = AlgorithmConfig()
    cfg.eps_clip = -1.0
    with pytest.raises(ValueError, match="eps_clip must be > 0"):
        cfg.validate()
    assert dataclasses.replace(AlgorithmConfig(), advantage_estimator="gae", n_samples_per_prompt=1).validate()


def test_mismatch_and_gspo_defaults():
    cfg = AlgorithmConfig()
    assert cfg.old_logprobs == "recompute"
    assert cfg.rollout_correction == ["none"] and cfg.corrections == []
    assert cfg.rollout_correction_bounds == (0.5, 5.0)
    assert cfg.mismatch_warn_threshold == 0.01
    assert (cfg.gspo_clip_low, cfg.gspo_clip_high) == (3e-4, 4e-4)  # the GSPO paper's range
    assert (cfg.dynamic_sampling, cfg.max_sample_batches) == (False, 4)
    # the default is not shared between instances
    cfg.rollout_correction.append("x")
    assert AlgorithmConfig().rollout_correction == ["none"]


def test_mismatch_fields_accept_yaml_shapes():
    cfg = AlgorithmConfig(rollout_correction="token_tis")
    assert cfg.rollout_correction == ["token_tis"] and cfg.corrections == ["token_tis"]
    assert AlgorithmConfig(rollout_correction="none").corrections == []
    cfg = AlgorithmConfig.from_dict({"rollout_correction": ["token_tis", "seq_mask"],
                                     "rollout_correction_bounds": [0.8, 2]})
    assert cfg.corrections == ["token_tis", "seq_mask"]
    assert cfg.rollout_correction_bounds == (0.8, 2) and isinstance(cfg.rollout_correction_bounds, tuple)
    # the band edges themselves are allowed: [1, 1] keeps only equal probabilities, [0, high] never masks low
    assert AlgorithmConfig(rollout_correction_bounds=[1, 1]).rollout_correction_bounds == (1, 1)
    assert AlgorithmConfig(rollout_correction_bounds=(0.0, 3.0)).rollout_correction_bounds == (0.0, 3.0)
    # old_logprobs=rollout is fine without a correction; gspo with its own range; DAPO sampling
    assert AlgorithmConfig(old_logprobs="rollout").corrections == []
    assert AlgorithmConfig(policy_loss="gspo", gspo_clip_high=0.01).gspo_clip_high == 0.01
    assert AlgorithmConfig(dynamic_sampling=True, max_sample_batches=1).dynamic_sampling


def test_mismatch_validation_after_mutation():
    cfg = AlgorithmConfig()
    cfg.rollout_correction = ["icepop"]
    cfg.old_logprobs = "rollout"
    with pytest.raises(ValueError, match="needs old_logprobs: recompute"):
        cfg.validate()
