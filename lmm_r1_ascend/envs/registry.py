"""Environments by name, like rewards (rewards/registry.py).

    @register_env("sokoban")
    class SokobanEnv(Environment): ...

    env = make_env("sokoban", max_moves=60)   # kwargs go to the class's constructor
    env_names()                               # ["sokoban", ...]

The built-in environments register themselves when their module is imported; `make_env`
and `env_names` import them first (`_BUILTIN_MODULES`), so a name is found without the
caller importing its module.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from lmm_r1_ascend.envs.base import Environment

_ENVS: dict[str, type[Environment]] = {}
_BUILTIN_MODULES: tuple[str, ...] = ("lmm_r1_ascend.envs.sokoban_env",)
_builtins_loaded = False


def register_env(name: str) -> Callable[[type[Environment]], type[Environment]]:
    """Class decorator: make `make_env(name)` build this Environment subclass (sets cls.name).
    Registering a taken name with another class is a ValueError."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"an environment name must be a non-empty string without surrounding spaces, got {name!r}")

    def decorate(cls: type[Environment]) -> type[Environment]:
        if not (isinstance(cls, type) and issubclass(cls, Environment)):
            raise TypeError(f"register_env({name!r}) decorates Environment subclasses, got {cls!r}")
        old = _ENVS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"environment name {name!r} is already registered by {old.__module__}.{old.__qualname__}")
        cls.name = name
        _ENVS[name] = cls
        return cls

    return decorate


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        _builtins_loaded = True


def env_names() -> list[str]:
    """Every registered environment name, sorted."""
    _load_builtins()
    return sorted(_ENVS)


def make_env(name: str, **kwargs: Any) -> Environment:
    """A new environment registered as `name`, built with `kwargs`."""
    _load_builtins()
    if name not in _ENVS:
        raise ValueError(f"unknown environment {name!r}; registered: {sorted(_ENVS)} "
                         "(add one with @register_env or from a Python file with load_env_file)")
    cls = _ENVS[name]
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad kwargs for environment {name!r}: {e}") from None
    return cls(**kwargs)
