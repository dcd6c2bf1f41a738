"""Every config key is read by something (DESIGN.md, torchtune's rule): a field of the config
dataclasses that no code outside its own definition ever reads is a key a user can set and be
silently ignored. Validation does not count (config/schema.py and config/loader.py, and the
validate / __post_init__ / from_dict methods of algorithms/config.py); derived properties do
(AlgorithmConfig.clip_low reads eps_clip).

A read is matched on the key's FULL path, never on its last part alone (any `.temperature` or
`.mode` read anywhere must not make `rollout.some_new.temperature` or `eval.mode` live). The
path of an expression is known when it is built from:
- an attribute `<anything>.<section>` (a section name of TrainConfig: `self.cfg.rollout`),
- a name bound to a section or to the whole config: a parameter annotated with the section's
  class (`rollout: RolloutConfig`, `cfg: TrainConfig`), a name assigned from a section
  (`alg, opt = cfg.algorithm, cfg.optim`), `self` inside the section's own class, a name
  spelled `<section>_cfg`, or a name `cfg` / `config` that is annotated with nothing else,
and then `<path>.<field>` or `getattr(<path>, "<field>")` reads `<path>.<field>`.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
from pathlib import Path

from lmm_r1_ascend.config.schema import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p for d in ("lmm_r1_ascend", "backends", "kernels") for p in (ROOT / d).rglob("*.py")]
NOT_USES = {ROOT / "lmm_r1_ascend" / "config" / "schema.py", ROOT / "lmm_r1_ascend" / "config" / "loader.py"}
VALIDATORS = {"validate", "__post_init__", "from_dict"}
ROOT_NAMES = ("cfg", "config")  # unannotated names that hold the whole TrainConfig by convention


def _leaves(obj, prefix: str) -> list[str]:
    out: list[str] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = f"{prefix}{f.name}"
        out += _leaves(value, path + ".") if dataclasses.is_dataclass(value) else [path]
    return out


def config_fields() -> list[str]:
    """Full paths of every leaf field of TrainConfig ("rollout.temperature"; top-level ones bare)."""
    return _leaves(TrainConfig(), "")


def _sections() -> dict[str, str]:
    """{section class name: its path} for every nested dataclass of TrainConfig; "" for TrainConfig.
    A subclass's bases name the same section (a test's planted subclass keeps the real names)."""
    out: dict[str, str] = {}

    def name(obj, path: str) -> None:
        for cls in type(obj).__mro__[:-1]:
            out.setdefault(cls.__name__, path)

    def walk(obj, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                name(value, prefix + f.name)
                walk(value, prefix + f.name + ".")

    name(TrainConfig(), "")

    walk(TrainConfig(), "")
    return out


class _Reads:
    """Collects the full config paths read in one module."""

    def __init__(self) -> None:
        self.classes = _sections()
        self.top = {path for path in self.classes.values() if path and "." not in path}
        self.paths: set[str] = set()

    def annotated(self, ann: ast.expr | None) -> str | None:
        if ann is None:
            return None
        text = ast.unparse(ann).strip("'\"")
        for part in text.replace("|", " ").replace("[", " ").replace("]", " ").split():
            if part in self.classes:
                return self.classes[part]
        return None

    def path(self, node: ast.expr, aliases: dict[str, str]) -> str | None:
        if isinstance(node, ast.Name):
            return aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.path(node.value, aliases)
            if base is not None:
                return f"{base}.{node.attr}" if base else node.attr
            if node.attr in self.top:
                return node.attr
            if node.attr in ROOT_NAMES:  # self.cfg, c.cfg
                return ""
        return None

    def bind(self, target: ast.expr, value: ast.expr, aliases: dict[str, str]) -> None:
        if isinstance(target, ast.Name):
            path = self.path(value, aliases)
            if path is not None:
                aliases[target.id] = path
        elif isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
            for t, v in zip(target.elts, value.elts):
                self.bind(t, v, aliases)

    def scope(self, node: ast.AST, aliases: dict[str, str], own_class: str | None = None) -> None:
        aliases = dict(aliases)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            params = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            for k, a in enumerate(params):
                path = self.annotated(a.annotation)
                if path is None and a.annotation is None:
                    if k == 0 and own_class is not None and a.arg in ("self", "cls"):
                        path = own_class
                    elif a.arg in ROOT_NAMES:
                        path = ""
                    elif a.arg.endswith("_cfg") and a.arg.removesuffix("_cfg") in self.top:
                        path = a.arg.removesuffix("_cfg")
                aliases.pop(a.arg, None)
                if path is not None:
                    aliases[a.arg] = path
        own, nested = [], []  # this scope's nodes; the functions and classes defined in it
        todo = list(ast.iter_child_nodes(node))
        while todo:
            n = todo.pop()
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                nested.append(n)
                continue
            own.append(n)
            todo.extend(ast.iter_child_nodes(n))
        for child in own:  # bindings anywhere in this scope (not flow-sensitive)
            if isinstance(child, ast.Assign) and len(child.targets) == 1:
                self.bind(child.targets[0], child.value, aliases)
            elif isinstance(child, ast.AnnAssign) and isinstance(child.target, ast.Name):
                path = self.annotated(child.annotation)
                if path is not None:
                    aliases[child.target.id] = path
        for n in nested:  # they see this scope's names (closures, methods of a class here)
            if isinstance(n, ast.ClassDef):
                self.scope(n, aliases, self.classes.get(n.name))
            elif n.name not in VALIDATORS:
                self.scope(n, aliases, own_class)
        for n in own:
            if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load):
                path = self.path(n, aliases)
                if path:
                    self.paths.add(path)
            elif (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "getattr"
                  and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant)):
                base = self.path(n.args[0], aliases)
                if base is not None:
                    self.paths.add(f"{base}.{n.args[1].value}" if base else str(n.args[1].value))


@functools.lru_cache(maxsize=None)
def _tree(path: Path, mtime_ns: int) -> ast.Module:  # parsed once per version of the file
    return ast.parse(path.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=8)
def _reads(config_cls: type, sources: tuple[tuple[Path, int], ...]) -> frozenset[str]:
    reads = _Reads()
    for path, mtime_ns in sources:
        if path not in NOT_USES:
            reads.scope(_tree(path, mtime_ns), {})
    return frozenset(reads.paths)


def attribute_reads(sources: list[Path] | None = None) -> set[str]:
    """Every full config path read in `sources` (default: the package), for the current TrainConfig."""
    return set(_reads(TrainConfig, tuple((p, p.stat().st_mtime_ns) for p in sources or SOURCES)))


def dead_keys(sources: list[Path] | None = None) -> list[str]:
    reads = attribute_reads(sources)
    return [key for key in config_fields() if key not in reads]


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

    before = set(dead_keys())  # empty when the tree is clean; the plant's effect is the difference
    monkeypatch.setitem(globals(), "TrainConfig", WithPlanted)
    assert set(dead_keys()) - before == {"planted.a_key_nothing_reads_zq"}


def test_a_planted_key_with_a_common_last_part_is_dead(monkeypatch):
    """`temperature` and `mode` are read all over the package (rollout.temperature, SamplingConfig,
    distributed.mode, ...): new keys with those last parts are still dead until something reads them."""
    from lmm_r1_ascend.config import schema

    @dataclasses.dataclass
    class SomeNew:
        temperature: float = 1.0

    @dataclasses.dataclass
    class Rollout(schema.RolloutConfig):
        some_new: SomeNew = dataclasses.field(default_factory=SomeNew)

    @dataclasses.dataclass
    class Eval(schema.EvalConfig):
        mode: str = "x"

    @dataclasses.dataclass
    class WithPlanted(TrainConfig):
        rollout: Rollout = dataclasses.field(default_factory=Rollout)
        eval: Eval = dataclasses.field(default_factory=Eval)

    before = set(dead_keys())
    monkeypatch.setitem(globals(), "TrainConfig", WithPlanted)
    assert set(dead_keys()) - before == {"eval.mode", "rollout.some_new.temperature"}


def test_reads_are_matched_on_full_paths(tmp_path):
    """Each binding form the docstring lists makes its read live; a read of the same last part
    on an unrelated object does not."""
    src = tmp_path / "reader.py"
    src.write_text(
        "def a(cfg):\n    return cfg.rollout.temperature\n"
        "def b(sampling):\n    return sampling.top_p, sampling.mode, sampling.seed\n"
        "def c(r: 'RolloutConfig'):\n    return r.top_k\n"
        "def d(self):\n    alg, opt = self.cfg.algorithm, self.cfg.optim\n    return alg.gamma, opt.actor_lr\n"
        "def e(rollout_cfg):\n    return getattr(rollout_cfg, 'max_staleness')\n"
        "def f(x):\n    return x.distributed.mode\n"
        "class EvalConfig:\n    def g(self):\n        return self.limit\n")
    reads = attribute_reads([src])
    assert {"rollout.temperature", "rollout.top_k", "algorithm.gamma", "optim.actor_lr", "rollout.max_staleness",
            "distributed.mode", "eval.limit"} <= reads
    assert not reads & {"rollout.top_p", "eval.mode", "seed", "rollout.seed", "eval.seed"}
