"""pytest's default import mode needs every test module's basename to be unique across tests/:
two `test_x.py` in different folders stop the whole run at collection (CI did, 2026-12-07)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert not [n for n, k in names.items() if k > 1], f"rename one of each: {sorted(n for n, k in names.items() if k > 1)}"
