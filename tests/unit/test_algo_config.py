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
        ({"policy_loss": "gspo"}, r"unknown policy loss 'gspo'.*valid names: ppo"),
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
