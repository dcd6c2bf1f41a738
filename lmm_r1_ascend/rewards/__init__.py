"""Rule-based rewards: format, math accuracy (math-verify in killable worker
processes), multiple choice, Sokoban, custom reward files and HTTP endpoints, one
registry with per-datasource routing, and a CLI (``python -m lmm_r1_ascend.reward``).

Names are imported lazily: importing this package (as every reward worker process
does) loads nothing else, and no process starts until a math reward is first used.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "HttpReward": "custom", "PythonFileReward": "custom",
    "extract_response": "extraction",
    "format_reward": "format", "is_well_formed": "format",
    "MathReward": "math_reward",
    "RewardRouter": "registry", "build_reward": "registry", "register_reward": "registry",
    "SokobanReward": "sokoban", "sokoban_score": "sokoban",
    "RewardError": "types", "RewardFunction": "types", "RewardInput": "types", "RewardOutput": "types",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"lmm_r1_ascend.rewards.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lmm_r1_ascend.rewards' has no attribute {name!r}")
