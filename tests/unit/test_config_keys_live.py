"""Every config key is read by something (DESIGN.md, torchtune's rule): a field of the config
dataclasses that no code outside its own definition ever reads is a key a user can set and be
silently ignored. Reads are attribute accesses `<x>.<field>` (or getattr(<x>, "<field>")) in
the package; validation does not count (config/schema.py and config/loader.py, and the
validate / __post_init__ / from_dict methods of algorithms/config.py), derived properties do
(AlgorithmConfig.clip_low reads eps_clip)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from lmm_r1_ascend.config.schema import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p for d in ("lmm_r1_ascend", "backends", "kernels") for p in (ROOT / d).rglob("*.py")]
NOT_USES = {ROOT / "lmm_r1_ascend" / "config" / "schema.py", ROOT / "lmm_r1_ascend" / "config" / "loader.py"}
VALIDATORS = {"validate", "__post_init__", "from_dict"}


def config_fields() -> list[str]:
    """["section.field", ...] for every leaf field of TrainConfig (top-level ones bare)."""
    out: list[str] = []
    for top in dataclasses.fields(TrainConfig):
        default = getattr(TrainConfig(), top.name)
        if dataclasses.is_dataclass(default):
            out += [f"{top.name}.{f.name}" for f in dataclasses.fields(default)]
        else:
            out.append(top.name)
    return out


def _outside_validators(tree: ast.AST):
    """The nodes of `tree`, skipping the bodies of validating functions."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in VALIDATORS:
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def attribute_reads() -> set[str]:
    names: set[str] = set()
    for path in SOURCES:
        if path in NOT_USES:
            continue
        for node in _outside_validators(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                names.add(node.attr)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                  and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
                names.add(str(node.args[1].value))
    return names


def dead_keys() -> list[str]:
    reads = attribute_reads()
    return [key for key in config_fields() if key.rpartition(".")[2] not in reads]


def test_every_config_key_is_read_by_something():
    assert not dead_keys(), ("config keys that nothing reads (wire them or delete them, and the recipes "
                             f"that set them): {dead_keys()}")


def test_the_check_sees_a_dead_key(monkeypatch):
    @dataclasses.dataclass
    class Planted:
        a_key_nothing_reads_zq: int = 0

    @dataclasses.dataclass
    class WithPlanted(TrainConfig):
        planted: Planted = dataclasses.field(default_factory=Planted)

    monkeypatch.setitem(globals(), "TrainConfig", WithPlanted)
    assert dead_keys() == ["planted.a_key_nothing_reads_zq"]
