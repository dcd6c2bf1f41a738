"""Environments by name, like rewards (rewards/registry.py).

    @register_env("sokoban")
    class SokobanEnv(Environment): ...

    env = make_env("sokoban", max_moves=60)   # kwargs go to the class's constructor
    env_names()                               # ["sokoban", ...]
    load_env_file("my_env.py")                # a user's own file: RUNS ITS CODE; -> its names

The built-in environments register themselves when their module is imported; `make_env`
and `env_names` import them first (`_BUILTIN_MODULES`), so a name is found without the
caller importing its module.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmm_r1_ascend.envs.base import Environment

_ENVS: dict[str, type[Environment]] = {}
_BUILTIN_MODULES: tuple[str, ...] = ("lmm_r1_ascend.envs.sokoban_env", "lmm_r1_ascend.envs.football")
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


def load_env_file(path: str | Path) -> list[str]:
    """Import a user's environment file and return the names it registered (sorted).

    The file is ordinary Python that decorates Environment subclasses with
    ``@register_env("name")`` (``from lmm_r1_ascend.envs.registry import register_env``).
    Importing it RUNS ITS CODE with this process's rights, exactly like a custom reward
    file (rewards/custom.py): load only files you trust. Loading the same file again is a
    no-op that returns the same names. ValueError (one line, naming the file) when the file
    is missing or not .py, fails to import (syntax error, an exception, a name another
    class holds), or registers no environment; a failed import leaves no names behind.
    """
    _load_builtins()  # so a user's file colliding with a built-in name fails here, not later
    p = Path(path).expanduser().resolve()
    if not p.is_file() or p.suffix != ".py":
        raise ValueError(f"custom environment file not found or not a .py file: {p}")
    module_name = "lmm_r1_custom_env_" + hashlib.sha1(str(p).encode()).hexdigest()[:12]
    if module_name in sys.modules:
        names = sorted(n for n, cls in _ENVS.items() if cls.__module__ == module_name)
        if names:
            return names
    spec = importlib.util.spec_from_file_location(module_name, p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look classes up here
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any failure of the user's file is one line naming it
        sys.modules.pop(module_name, None)
        for n in [n for n, cls in _ENVS.items() if cls.__module__ == module_name]:
            del _ENVS[n]
        where = f" (line {e.lineno})" if isinstance(e, SyntaxError) and e.lineno else ""
        msg = " ".join(f"{type(e).__name__}: {e.msg if isinstance(e, SyntaxError) else e}".split())
        raise ValueError(f"custom environment file {p} failed to import{where}: {msg}") from None
    names = sorted(n for n, cls in _ENVS.items() if cls.__module__ == module_name)
    if not names:
        sys.modules.pop(module_name, None)
        raise ValueError(f"custom environment file {p} registered no environment: decorate an Environment "
                         "subclass with @register_env('name') (from lmm_r1_ascend.envs.registry)")
    return names
