"""Recipes (YAML) + `key=value` overrides -> a checked TrainConfig, with one-line errors.

    cfg = load_config(recipe="fre_text", overrides=["train.actor_lr=1e-6"])

Unknown keys (with a close-match suggestion), wrong types and bad values raise ConfigError
whose message names the key and, for files, the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from lmm_r1_ascend.config.schema import TrainConfig
from lmm_r1_ascend.rollout.registry import available_engines, engine_class

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"


class ConfigError(ValueError):
    """A user-caused configuration problem; the message is one line meant for users."""


def list_recipes() -> dict[str, str]:
    """recipe name -> its first comment line (a one-line description)."""
    out = {}
    for path in sorted(RECIPE_DIR.glob("*.yaml")):
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        out[path.stem] = first.lstrip("# ").strip()
    return out


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys, got {type(data).__name__}")
    return data


def recipe_path(name: str) -> Path:
    path = RECIPE_DIR / f"{name}.yaml"
    if not path.exists():
        close = difflib.get_close_matches(name, list(list_recipes()), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown recipe '{name}'{hint}; recipes: {', '.join(list_recipes())}")
    return path


def _with_parents(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A recipe or config file merged over the recipe its `extends:` names (and so on up):
    a variant states only what differs from its parent."""
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends must name one built-in recipe, got {parent!r}")
    chain = (*seen, path.resolve())
    parent_path = recipe_path(parent)
    if parent_path.resolve() in chain:
        names = " -> ".join(p.stem for p in (*chain, parent_path))
        raise ConfigError(f"{path}: recipes extend each other in a circle: {names}")
    return deep_merge(_with_parents(parent_path, chain), data)


def deep_merge(base: dict, update: Mapping) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(items: Sequence[str]) -> dict:
    """["a.b=1", "c=[x, y]"] -> {"a": {"b": 1}, "c": ["x", "y"]} (values parsed as YAML)."""
    tree: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not key=value (e.g. trainer.max_steps=10)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override of '{part}'")
        node[parts[-1]] = value
    return tree


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against annotation `tp`, converting only lossless YAML cases (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        return _literal(value, typing.get_args(tp), key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return build(tp, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            if origin is list and isinstance(value, str):  # a single path where a list is expected
                value = [value]
            else:
                raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {list(value)!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp) or (Any, Any)
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads "1e-6" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _literal(value: Any, allowed: tuple, key: str) -> Any:
    """`value` when it is one of a Literal key's `allowed` values (equal and of the same type: true
    is not 1); else one line naming the key, the value and every allowed value."""
    if any(value == a and type(value) is type(a) for a in allowed):
        return value
    raise ConfigError(f"{key}: must be one of {', '.join(str(a) for a in allowed)}, got {value!r}")


def _check_literals(obj: Any, prefix: str = "") -> None:
    """Every Literal-typed key of the dataclass tree `obj` (a config built in Python skips _coerce)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if typing.get_origin(hints[f.name]) is typing.Literal:
            _literal(value, typing.get_args(hints[f.name]), f"{prefix}{f.name}")
        elif dataclasses.is_dataclass(value):
            _check_literals(value, f"{prefix}{f.name}.")


def build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Construct dataclass `cls` from a mapping, checking every key and type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown config key '{prefix}{key}'{hint}; valid keys here: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(value, hints[name], f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # the dataclass's own validation (e.g. AlgorithmConfig)
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {exc}") from None


def to_dict(cfg: Any) -> dict:
    """A plain, YAML-safe dict (tuples become lists)."""
    def plain(x):
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x
    return plain(dataclasses.asdict(cfg))


def validate(cfg: TrainConfig) -> TrainConfig:
    """Cross-field checks the dataclasses cannot do alone (and the Literal keys of a config built in Python)."""
    _check_literals(cfg)
    n = cfg.algorithm.n_samples_per_prompt
    samples = cfg.rollout.rollout_batch_size * n
    if cfg.trainer.train_batch_size > samples or samples % cfg.trainer.train_batch_size:
        raise ConfigError(
            f"trainer.train_batch_size ({cfg.trainer.train_batch_size}) must divide the samples of one rollout "
            f"(rollout.rollout_batch_size x algorithm.n_samples_per_prompt = {samples})")
    if cfg.rollout.engine not in available_engines():
        raise ConfigError(f"rollout.engine: must be one of {', '.join(available_engines())}, got '{cfg.rollout.engine}'")
    if cfg.rollout.micro_rollout_batch_size < 1:
        raise ConfigError(f"rollout.micro_rollout_batch_size: must be >= 1, got {cfg.rollout.micro_rollout_batch_size}")
    _validate_distributed(cfg)
    _validate_async(cfg)
    _validate_sft(cfg)
    r = cfg.reward
    if r.overlong_shaping and not 0 < r.overlong_buffer_len <= cfg.rollout.max_new_tokens:
        raise ConfigError(f"reward.overlong_buffer_len ({r.overlong_buffer_len}) must be in [1, rollout.max_new_tokens "
                          f"= {cfg.rollout.max_new_tokens}] when reward.overlong_shaping is on")
    if r.overlong_shaping and not (math.isfinite(r.overlong_penalty) and r.overlong_penalty >= 0):
        raise ConfigError(f"reward.overlong_penalty must be a finite number >= 0, got {r.overlong_penalty}")
    _validate_eval(cfg)
    _validate_env(cfg)
    for key in ("max_prompt_len",):
        if getattr(cfg.data, key) < 1:
            raise ConfigError(f"data.{key}: must be >= 1")
    if cfg.rollout.max_new_tokens < 1 or cfg.rollout.temperature <= 0:
        raise ConfigError("rollout.max_new_tokens must be >= 1 and rollout.temperature > 0")
    return cfg


def _validate_env(cfg: TrainConfig) -> None:
    """env.*: the multi-turn rollout's limits, a known environment, and the settings it cannot run with."""
    e = cfg.env
    if e.file and not e.name:
        raise ConfigError(f"env.file={e.file} is set but env.name is empty: name the environment it registers")
    if not e.name:
        return
    from lmm_r1_ascend.envs.registry import env_names, load_env_file
    from lmm_r1_ascend.rollout.multi_turn import MultiTurnLimits

    if e.file:  # the user's file runs here, as it will in every process that plays the env
        try:
            names = load_env_file(e.file)
        except ValueError as exc:
            raise ConfigError(f"env.file: {exc}") from None
        e.file = str(Path(e.file).expanduser().resolve())  # engine actors elsewhere load the very same file
        if e.name not in names:
            raise ConfigError(f"env.name: '{e.name}' is not registered by env.file {e.file}; it registers: "
                              f"{', '.join(names)}")
    elif e.name not in env_names():
        raise ConfigError(f"env.name: unknown environment '{e.name}'; registered: {', '.join(env_names())} "
                          "(your own environment: env.file=PATH.py)")
    try:
        MultiTurnLimits(e.max_turns, e.max_images, e.max_image_pixels, e.max_response_tokens, e.timeout_s)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.stage == "sft":
        raise ConfigError("env.name is set but stage=sft trains on reference responses: multi-turn rollout is RL "
                          "only (stage fre or mgt), or leave env.name empty")
    if cfg.reward.overlong_shaping:
        raise ConfigError("reward.overlong_shaping measures one response against rollout.max_new_tokens; a "
                          "multi-turn trajectory is bounded by env.max_response_tokens instead: turn it off")
    if cfg.rollout.engine == "vllm" and e.max_images > 8:
        raise ConfigError(f"env.max_images={e.max_images} is over the vllm engine's 8 images per prompt "
                          "(limit_mm_per_prompt): lower it")


def _validate_distributed(cfg: TrainConfig) -> None:
    d = cfg.distributed
    if d.world_size < 1:
        raise ConfigError(f"distributed.world_size: must be >= 1, got {d.world_size}")
    if d.mode == "local" and d.world_size != 1:
        raise ConfigError(f"distributed.world_size={d.world_size} needs distributed.mode=ray (local mode is one rank)")
    if d.world_size > 1 and d.train_engine != "deepspeed":
        raise ConfigError(f"distributed.world_size={d.world_size} trains data-parallel through DeepSpeed: "
                          "set distributed.train_engine=deepspeed")
    if d.offload_params and d.zero_stage != 3:
        raise ConfigError("distributed.offload_params needs distributed.zero_stage=3")
    if d.mode == "local" and not d.colocate_models:
        raise ConfigError("distributed.colocate_models=false needs distributed.mode=ray (local mode is one process)")
    if d.mode == "ray" and d.rollout_engines == 0 and engine_class(cfg.rollout.engine).devices_per_engine(cfg.rollout) > 1:
        raise ConfigError("rollout.vllm_tensor_parallel_size > 1 needs engine actors of their own "
                          "(distributed.rollout_engines >= 1): rank 0, which hosts the engine otherwise, has one device")
    if d.colocate_rollout and (d.mode != "ray" or d.rollout_engines != 0):
        raise ConfigError("distributed.colocate_rollout=true puts an engine in every training rank: it needs "
                          "distributed.mode=ray and distributed.rollout_engines=0")
    if d.rollout_engines < 0:
        raise ConfigError(f"distributed.rollout_engines: must be >= 0, got {d.rollout_engines}")
    if d.mode == "local" and d.rollout_engines > 1:
        raise ConfigError("distributed.rollout_engines > 1 needs distributed.mode=ray")
    if d.weight_sync_bucket_mb < 1 or d.cpus_per_rank < 1 or d.timeout_s <= 0:
        raise ConfigError("distributed.weight_sync_bucket_mb and cpus_per_rank must be >= 1, timeout_s > 0")
    sp = d.sequence_parallel_size
    if isinstance(sp, bool) or not isinstance(sp, int) or sp < 1:
        raise ConfigError(f"distributed.sequence_parallel_size: must be an int >= 1, got {sp!r}")
    if d.world_size % sp:
        raise ConfigError(f"distributed.sequence_parallel_size={sp} must divide distributed.world_size="
                          f"{d.world_size}: each data-parallel replica is split over {sp} ranks")
    replicas = d.world_size // sp
    per_rank = cfg.trainer.train_batch_size // replicas
    if per_rank < 1:
        raise ConfigError(f"trainer.train_batch_size ({cfg.trainer.train_batch_size}) must be >= the data-parallel "
                          f"replicas (distributed.world_size / sequence_parallel_size = {replicas}): "
                          "every rank needs samples (the ranks of one SP group share theirs)")


def _validate_async(cfg: TrainConfig) -> None:
    r, d = cfg.rollout, cfg.distributed
    s = r.max_staleness
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise ConfigError(f"rollout.max_staleness: must be an int >= 1 (sync mode is staleness 0), got {s!r}")
    if r.async_mode == "one_step_off" and s != 1:
        raise ConfigError(f"rollout.max_staleness={s} with async_mode=one_step_off, which is one version by "
                          "definition: use rollout.async_mode=bounded to allow more")
    if r.async_mode == "sync":
        return
    if d.mode != "ray" or d.rollout_engines < 1:
        where = "in this process" if d.mode == "local" else "inside the training ranks (rollout_engines=0)"
        raise ConfigError(f"rollout.async_mode={r.async_mode} generates while the ranks train, which needs rollout "
                          f"engines on devices of their own, but this placement runs them {where}: set "
                          "distributed.mode=ray and distributed.rollout_engines >= 1, or rollout.async_mode=sync")
    if cfg.algorithm.old_logprobs != "recompute":
        raise ConfigError(f"rollout.async_mode={r.async_mode} trains on samples from older weights: the PPO ratio "
                          "needs the trainer's recomputed log-probs as its proximal policy (decoupled PPO), so "
                          f"set algorithm.old_logprobs=recompute (got {cfg.algorithm.old_logprobs})")


def _validate_sft(cfg: TrainConfig) -> None:
    """Stage sft trains the actor alone on one reference per row, at temperature 1 (trainer/sft.py)."""
    if cfg.stage != "sft":
        return
    a = cfg.algorithm
    wrong = [text for bad, text in (
        (a.n_samples_per_prompt != 1, "algorithm.n_samples_per_prompt=1 (one reference per row)"),
        (a.init_kl_coef != 0 or a.use_kl_loss, "algorithm.init_kl_coef=0 and use_kl_loss=false (no reference model)"),
        (a.uses_critic, "an algorithm.advantage_estimator without a critic (e.g. reinforce)"),
        (cfg.rollout.temperature != 1.0, "rollout.temperature=1 (the actor's log-probs are the cross-entropy's)"),
        (cfg.rollout.async_mode != "sync", "rollout.async_mode=sync (nothing is generated while training)"),
        (not cfg.data.response_key, "data.response_key (the field holding the reference response)"),
    ) if bad]
    if wrong:
        raise ConfigError("stage sft needs " + "; ".join(wrong) + " (recipe demo_sft sets them)")


def _validate_eval(cfg: TrainConfig) -> None:
    t, e = cfg.trainer, cfg.eval
    if t.max_consecutive_skips < 0:
        raise ConfigError(f"trainer.max_consecutive_skips must be >= 0 (0: never stop), got {t.max_consecutive_skips}")
    if t.on_save_error not in ("stop", "skip"):
        raise ConfigError(f"trainer.on_save_error: must be stop or skip, got '{t.on_save_error}'")
    if t.eval_steps < 0:
        raise ConfigError(f"trainer.eval_steps must be >= 0 (0: never), got {t.eval_steps}")
    if (t.eval_steps or t.eval_before_train) and not cfg.data.eval_data:
        raise ConfigError("trainer.eval_steps / eval_before_train need data.eval_data (held-out jsonl files)")
    if t.best_metric and not t.eval_steps:
        raise ConfigError(f"trainer.best_metric={t.best_metric!r} needs trainer.eval_steps > 0")
    if t.best_metric and not t.best_metric.startswith("eval/"):
        raise ConfigError(f"trainer.best_metric must name an eval metric such as eval/all/accuracy, got {t.best_metric!r}")
    if e.n_samples < 1 or e.batch_prompts < 1 or e.limit < 0 or e.max_new_tokens < 0:
        raise ConfigError("eval.n_samples and eval.batch_prompts must be >= 1, eval.limit and eval.max_new_tokens >= 0")
    if not (math.isfinite(e.temperature) and e.temperature >= 0):
        raise ConfigError(f"eval.temperature must be >= 0 (0: greedy), got {e.temperature}")


def load_config(recipe: str | None = None, config_file: str | None = None,
                overrides: Sequence[str] = (), base: Mapping | None = None) -> TrainConfig:
    """Merge, in order: defaults, `base`, the recipe, the config file, the overrides."""
    data: dict = dict(base or {})
    if recipe:
        data = deep_merge(data, _with_parents(recipe_path(recipe)))
        data["recipe"] = recipe
    if config_file:
        data = deep_merge(data, _with_parents(Path(config_file)))
    data = deep_merge(data, parse_overrides(overrides))
    return validate(build(TrainConfig, data))
