"""``python -m lmm_r1_ascend.reward``: score responses from the command line.

A thin entry point; everything lives in ``lmm_r1_ascend.rewards.cli`` (see its docstring).
"""

from __future__ import annotations

from lmm_r1_ascend.rewards.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
