"""Rollout engines by name: "module:Class" targets imported on first use (as backends/registry.py
names backends), so that this package's base module imports no engine and an engine with heavy
dependencies (vLLM) is imported only when chosen.

    cls = engine_class(cfg.rollout.engine)          # the class: its config-level facts
    engine = cls.from_config(cfg.rollout, EngineRun(cfg.seed, cfg.device, n), actor_path, device, dtype)
    register_engine("mine", "my_pkg.engine:MyEngine")   # selectable as rollout.engine=mine
"""

from __future__ import annotations

import importlib

from lmm_r1_ascend.rollout.base import RolloutEngine

_ENGINES: dict[str, str | type[RolloutEngine]] = {
    "hf": "lmm_r1_ascend.rollout.hf_engine:HFRolloutEngine",
    "vllm": "lmm_r1_ascend.rollout.vllm_engine:VLLMRolloutEngine",
}


def register_engine(name: str, target: str | type[RolloutEngine]) -> None:
    """Make rollout.engine=`name` select `target` (a RolloutEngine subclass or "module:Class").
    Re-registering a name replaces it."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"engine name must be a non-empty string, got {name!r}")
    if isinstance(target, str):
        if target.count(":") != 1 or not all(target.split(":")):
            raise ValueError(f"engine target must be 'module:Class', got {target!r}")
    elif not (isinstance(target, type) and issubclass(target, RolloutEngine)):
        raise TypeError(f"engine target must be a RolloutEngine subclass or 'module:Class', got {target!r}")
    _ENGINES[name] = target


def available_engines() -> list[str]:
    return sorted(_ENGINES)


def engine_class(name: str) -> type[RolloutEngine]:
    """The class registered as `name` (its module imported now)."""
    if name not in _ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; choose one of {available_engines()} "
                         "(or register one with lmm_r1_ascend.rollout.registry.register_engine)")
    target = _ENGINES[name]
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        if not (isinstance(cls, type) and issubclass(cls, RolloutEngine)):
            raise TypeError(f"rollout engine {name!r}: {target} is not a RolloutEngine subclass")
        _ENGINES[name] = target = cls
    return target
