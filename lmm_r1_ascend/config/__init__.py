"""Training configuration: dataclasses, YAML recipes, key=value overrides.

The names below load on first use (PEP 562), so `lmm_r1_ascend.config.cli` (argument parsing
for every CLI) can be imported without torch, which the schema's algorithm configs pull in.
"""
from __future__ import annotations

import importlib

_NAMES = {"ConfigError": "loader", "list_recipes": "loader", "load_config": "loader", "to_dict": "loader",
          "TrainConfig": "schema"}

__all__ = ["ConfigError", "TrainConfig", "list_recipes", "load_config", "to_dict"]


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(f"lmm_r1_ascend.config.{_NAMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lmm_r1_ascend.config' has no attribute {name!r}")
