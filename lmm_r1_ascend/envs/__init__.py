"""Environments for agent-style tasks: Sokoban (generator, simulator, renderer, solver).

Names are imported lazily, so ``python -m lmm_r1_ascend.envs`` (the Sokoban CLI,
``__main__.py``) imports only what it uses.
"""

from __future__ import annotations

_EXPORTS = {"ACTIONS", "Sokoban", "fixed_room", "load_level", "save_level", "validate_room"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        from lmm_r1_ascend.envs import sokoban

        return getattr(sokoban, name)
    raise AttributeError(f"module 'lmm_r1_ascend.envs' has no attribute {name!r}")
