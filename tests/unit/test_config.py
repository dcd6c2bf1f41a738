"""Config: recipes load with the paper's numbers; overrides are typed; errors are one line."""

from __future__ import annotations

import pytest

from lmm_r1_ascend.config import ConfigError, list_recipes, load_config, to_dict
from lmm_r1_ascend.config.loader import parse_overrides

PAPER = {  # RECIPE.md stage table: estimator, actor lr, critic lr, init_kl, train batch, gen max, episodes
    "fre_text": ("reinforce_baseline", 4e-7, None, 0.001, 256, 4096, 2),
    "fre_multi": ("reinforce_baseline", 1e-6, None, 0.001, 256, 4096, 2),
    "mgt_geo": ("gae", 1e-6, 9e-6, 0.001, 256, 4096, 2),
    "mgt_percereason": ("reinforce_baseline", 4e-7, None, 0.001, 256, 8192, 2),
    "mgt_sokoban": ("gae", 1e-6, 5e-6, 0.0, 128, 8192, 4),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_recipes_match_the_stage_table(name):
    cfg = load_config(name)
    est, lr, critic_lr, kl, batch, gen, episodes = PAPER[name]
    assert cfg.algorithm.advantage_estimator == est and cfg.optim.actor_lr == lr
    if critic_lr is not None:
        assert cfg.optim.critic_lr == critic_lr and cfg.algorithm.uses_critic
    assert cfg.algorithm.init_kl_coef == kl and cfg.trainer.train_batch_size == batch
    assert cfg.rollout.max_new_tokens == gen and cfg.trainer.num_episodes == episodes
    # Common hyperparameters of every stage.
    assert cfg.algorithm.n_samples_per_prompt == 16 and cfg.rollout.temperature == 1.0
    assert cfg.algorithm.eps_clip == 0.2 and cfg.algorithm.reward_clip_range == (-10.0, 10.0)
    assert cfg.optim.adam_betas == (0.9, 0.95) and cfg.optim.max_norm == 1.0 and cfg.seed == 42
    assert cfg.stage == ("fre" if name.startswith("fre") else "mgt")
    assert name in list_recipes() and list_recipes()[name]


def test_sokoban_freezes_the_vision_tower_and_mgt_starts_from_fre():
    assert load_config("mgt_sokoban").model.freeze_prefixes == ["model.visual"]
    assert load_config("mgt_geo").model.init_from == "outputs/fre_text"


def test_overrides_are_parsed_and_typed():
    cfg = load_config("fre_text", overrides=["optim.actor_lr=1e-6", "trainer.max_steps=3", "data.prompt_data=a.jsonl",
                                             "optim.adam_betas=[0.8, 0.9]", "reward.routes={geo: math}"])
    assert cfg.optim.actor_lr == 1e-6 and cfg.trainer.max_steps == 3
    assert cfg.data.prompt_data == ["a.jsonl"] and cfg.optim.adam_betas == (0.8, 0.9)
    assert cfg.reward.routes == {"geo": "math"}
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


def test_config_file_and_round_trip(tmp_path):
    f = tmp_path / "my.yaml"
    f.write_text("trainer:\n  max_steps: 7\nalgorithm:\n  advantage_estimator: rloo\n")
    cfg = load_config("fre_text", config_file=str(f), overrides=["trainer.max_steps=9"])
    assert cfg.trainer.max_steps == 9 and cfg.algorithm.advantage_estimator == "rloo"
    import yaml

    again = load_config(config_file=str(_dump(tmp_path, yaml.safe_dump(to_dict(cfg)))))
    assert again == cfg


def _dump(tmp_path, text):
    p = tmp_path / "resolved.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("overrides,match", [
    (["trainer.max_step=3"], r"unknown config key 'trainer.max_step' \(did you mean 'trainer.max_steps'\?\)"),
    (["optim.actor_lr=abc"], r"optim.actor_lr: expected float, got 'abc'"),
    (["trainer.tensorboard=maybe"], r"trainer.tensorboard: expected true/false"),
    (["trainer.max_steps=1.5"], r"trainer.max_steps: expected int"),
    (["algorithm.n_samples_per_prompt=1"], r"needs n_samples_per_prompt >= 2"),
    (["trainer.train_batch_size=100"], r"must divide the samples of one rollout"),
    (["stage=rl"], r"stage: must be one of fre, mgt, sft"),
    (["rollout.engine=sglang"], r"rollout.engine: must be one of hf, vllm"),
    (["noequals"], r"is not key=value"),
])
def test_bad_config_is_one_clear_line(overrides, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_config("fre_text", overrides=overrides)
    assert "\n" not in str(err.value)


def test_every_literal_key_is_checked_against_its_allowed_values():
    """Each Literal-typed key (found by walking the schema, so a new one is covered) refuses a value
    outside typing.get_args, from an override and from a config built in Python, in one line
    naming the key, the value and every allowed value; and takes each allowed value."""
    import dataclasses
    import typing

    from lmm_r1_ascend.config import TrainConfig
    from lmm_r1_ascend.config.loader import validate

    def literal_keys(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if typing.get_origin(tp) is typing.Literal:
                yield prefix + f.name, typing.get_args(tp)
            elif dataclasses.is_dataclass(tp):
                yield from literal_keys(tp, f"{prefix}{f.name}.")

    keys = dict(literal_keys(TrainConfig))
    assert {"stage", "data.on_bad_line", "rollout.async_mode", "distributed.mode", "distributed.zero_stage"} <= set(keys)
    for key, allowed in keys.items():
        want = f"{key}: must be one of {', '.join(map(str, allowed))}, got "
        bad = "nope" if isinstance(allowed[0], str) else 99
        with pytest.raises(ConfigError) as err:
            load_config("fre_text", overrides=[f"{key}={bad}"])
        assert str(err.value) == want + repr(bad)
        cfg = load_config("fre_text")
        section, _, name = key.rpartition(".")
        setattr(cfg if not section else getattr(cfg, section), name, bad)
        with pytest.raises(ConfigError) as err:
            validate(cfg)
        assert str(err.value) == want + repr(bad)
    # the same type, not only an equal value: YAML's true is not zero_stage 1
    with pytest.raises(ConfigError, match=r"distributed.zero_stage: must be one of 0, 1, 2, 3, got True"):
        load_config("fre_text", overrides=["distributed.zero_stage=true"])
    for allowed in keys["distributed.placement_strategy"]:
        assert load_config("fre_text", overrides=[f"distributed.placement_strategy={allowed}"])


def test_bad_recipe_and_files(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown recipe 'fre_txt' \(did you mean 'fre_text'\?\)"):
        load_config("fre_txt")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(config_file=str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(config_file=str(bad))


def test_recipes_extend_a_parent_and_state_only_what_differs(tmp_path):
    fre, dapo, gspo = load_config("demo_fre"), load_config("demo_dapo"), load_config("demo_gspo")
    assert dapo.recipe == "demo_dapo" and dapo.model.pretrain == fre.model.pretrain == "demo-fre"
    assert dapo.rollout.max_new_tokens == fre.rollout.max_new_tokens  # inherited
    a = dapo.algorithm
    assert a.dynamic_sampling and a.clip_high > a.clip_low and a.advantage_estimator == "group_norm"
    assert dapo.reward.overlong_shaping and a.loss_agg_mode == "token-mean"
    assert gspo.algorithm.policy_loss == "gspo" and gspo.algorithm.loss_agg_mode == "seq-mean-token-mean"
    child = tmp_path / "child.yaml"  # a user's file may extend a recipe too, and beats it
    child.write_text("extends: demo_dapo\ntrainer:\n  max_steps: 7\n")
    cfg = load_config(config_file=str(child))
    assert cfg.trainer.max_steps == 7 and cfg.algorithm.dynamic_sampling
    same = tmp_path / "demo_fre.yaml"  # a file named like its parent is not a circle
    same.write_text("extends: demo_fre\n")
    assert load_config(config_file=str(same)).model.pretrain == "demo-fre"


def test_extends_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: [demo_fre, demo_dapo]\n")
    with pytest.raises(ConfigError, match="extends must name one built-in recipe"):
        load_config(config_file=str(bad))
    bad.write_text("extends: demo_fr\n")
    with pytest.raises(ConfigError, match=r"unknown recipe 'demo_fr' \(did you mean 'demo_fre'\?\)"):
        load_config(config_file=str(bad))


def test_extends_circle_is_an_error(tmp_path, monkeypatch):
    from lmm_r1_ascend.config import loader

    (tmp_path / "a.yaml").write_text("extends: b\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    monkeypatch.setattr(loader, "recipe_path", lambda name: tmp_path / f"{name}.yaml")
    with pytest.raises(ConfigError, match=r"circle: a -> b -> a"):
        load_config(config_file=str(tmp_path / "a.yaml"))


@pytest.mark.parametrize("overrides,match", [
    (["reward.overlong_shaping=true", "reward.overlong_buffer_len=0"], r"overlong_buffer_len \(0\) must be in \[1,"),
    (["reward.overlong_shaping=true", "reward.overlong_buffer_len=5000"], r"rollout.max_new_tokens = 4096"),
    (["reward.overlong_shaping=true", "reward.overlong_penalty=-1"], r"overlong_penalty must be a finite number >= 0"),
    (["algorithm.rollout_correction=tis"], r"unknown rollout_correction 'tis'"),
    (["algorithm.old_logprobs=rollout", "algorithm.rollout_correction=token_tis"], r"needs old_logprobs: recompute"),
])
def test_mismatch_and_shaping_keys_are_checked(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("fre_text", overrides=overrides)
