"""Code-health figures of a checkout, counted from the source's syntax trees (nothing is run).

    python scripts/code_metrics.py                 # this checkout
    python scripts/code_metrics.py --root /tmp/wt  # another one (a `git worktree` of an older commit)
    python scripts/code_metrics.py --list          # also name every counted item (file:line)

Figures (issue 30's before/after table):
- functions over 80 lines: def line to last line (decorators not counted), any nesting level;
- files over 400 lines;
- `Any` in the annotations (arguments, returns, annotated assignments) of the core interfaces:
  engines/base.py, rollout/base.py, distributed/rollout_client.py, workers/roles.py, trainer/*.py;
- string comparisons (==, !=, in, not in, match-case) against a train-engine name, a policy-loss
  name or a device name, in lmm_r1_ascend/ (backends/ and kernels/, the device seam, excluded).
  The names come from the checkout's own registries (engines.registry.TRAIN_ENGINES,
  algorithms.losses.POLICY_LOSSES, backends.backend_names()) plus the device types and
  collective backends a core module could test for (cuda, npu, xpu, mps, gloo, nccl, hccl);
- unreferenced functions: module-level functions and methods whose name occurs nowhere else
  in the repository's .py files, decorated ones (registered by name) left out: a candidate
  list, since a name shared with another use hides a dead one;
- import circles and upward arrows, by tests/unit/test_layering.py's own graph.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import sys
from collections import Counter
from pathlib import Path

FUNCTION_LINES, FILE_LINES = 80, 400
PACKAGE_DIRS = ("lmm_r1_ascend", "backends", "kernels")
CORE_INTERFACES = ("lmm_r1_ascend/engines/base.py", "lmm_r1_ascend/rollout/base.py",
                   "lmm_r1_ascend/distributed/rollout_client.py", "lmm_r1_ascend/workers/roles.py",
                   "lmm_r1_ascend/trainer/*.py")
EXTRA_DEVICE_NAMES = ("cpu", "cuda", "npu", "xpu", "mps", "gloo", "nccl", "hccl")


def python_files(root: Path, dirs: tuple[str, ...] = PACKAGE_DIRS) -> list[Path]:
    return sorted(p for d in dirs for p in (root / d).rglob("*.py") if "__pycache__" not in p.parts)


def long_functions(files: list[Path], root: Path) -> list[str]:
    out = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > FUNCTION_LINES:
                    out.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({n} lines)")
    return out


def long_files(files: list[Path], root: Path) -> list[str]:
    sizes = ((p, len(p.read_text(encoding="utf-8").splitlines())) for p in files)
    return [f"{p.relative_to(root)} ({n} lines)" for p, n in sizes if n > FILE_LINES]


def _annotations(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg):
                if arg is not None and arg.annotation is not None:
                    yield arg.annotation
            if node.returns is not None:
                yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


def _mentions_any(annotation: ast.AST) -> int:
    count = 0
    for node in ast.walk(annotation):
        if isinstance(node, ast.Name) and node.id == "Any":
            count += 1
        elif isinstance(node, ast.Attribute) and node.attr == "Any":
            count += 1
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted annotation
            try:
                count += _mentions_any(ast.parse(node.value, mode="eval"))
            except SyntaxError:
                pass
    return count


def any_in_interfaces(root: Path) -> list[str]:
    out = []
    for pattern in CORE_INTERFACES:
        for path in sorted(root.glob(pattern)):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for ann in _annotations(tree):
                out += [f"{path.relative_to(root)}:{ann.lineno}"] * _mentions_any(ann)
    return out


def registry_names(root: Path) -> dict[str, set[str]]:
    """The checkout's own names, imported from root (run with that checkout first on sys.path)."""
    sys.path.insert(0, str(root))
    import lmm_r1_ascend

    # backends/ and kernels/ sit beside the package (pyproject's package-dir mapping): without this
    # an installed checkout's mapping would serve lmm_r1_ascend.backends from that checkout, not root
    lmm_r1_ascend.__path__.append(str(root))
    from lmm_r1_ascend.algorithms.losses import POLICY_LOSSES
    from lmm_r1_ascend.backends import backend_names
    from lmm_r1_ascend.engines.registry import TRAIN_ENGINES

    return {"train-engine": set(TRAIN_ENGINES), "policy-loss": set(POLICY_LOSSES.names()),
            "device": set(backend_names()) | set(EXTRA_DEVICE_NAMES)}


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for e in node.elts for s in _strings(e)]
    return []


def _compared_strings(tree: ast.AST):
    """(line, string) for every string literal an ==, !=, in, not in or a match case compares with."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and all(
                isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
            for side in (node.left, *node.comparators):
                for s in _strings(side):
                    yield node.lineno, s
        elif isinstance(node, ast.MatchValue):
            for s in _strings(node.value):
                yield node.lineno, s


def name_comparisons(root: Path, names: dict[str, set[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {kind: [] for kind in names}
    for path in python_files(root, ("lmm_r1_ascend",)):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, s in _compared_strings(tree):
            for kind, group in names.items():
                if s in group:
                    out[kind].append(f"{path.relative_to(root)}:{line} {s!r}")
    return out


def unreferenced_functions(root: Path) -> list[str]:
    every = [p for p in root.rglob("*.py") if not any(part.startswith(".") or part == "__pycache__"
                                                       for part in p.relative_to(root).parts)]
    words = Counter(w for p in every for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", p.read_text(encoding="utf-8")))
    out = []
    for path in python_files(root):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bodies = [tree.body] + [n.body for n in tree.body if isinstance(n, ast.ClassDef)]
        for body in bodies:
            for node in body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.decorator_list \
                        and not node.name.startswith("__") \
                        and words[node.name] <= 1:
                    out.append(f"{path.relative_to(root)}:{node.lineno} {node.name}")
    return out


def layering(root: Path) -> tuple[list, list]:
    spec = importlib.util.spec_from_file_location("_layering", root / "tests/unit/test_layering.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    g = mod.graph()
    return mod.circles(g), mod.upward_arrows(g)


def measure(root: Path) -> dict[str, list]:
    files = python_files(root)
    found = {"functions > 80 lines": long_functions(files, root), "files > 400 lines": long_files(files, root),
             "Any in core interface annotations": any_in_interfaces(root)}
    for kind, hits in name_comparisons(root, registry_names(root)).items():
        where = "" if kind != "device" else " (outside backends/, kernels/)"
        found[f"{kind} name comparisons{where}"] = hits
    found["unreferenced functions (candidates)"] = unreferenced_functions(root)
    found["import circles"], found["upward arrows"] = layering(root)
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="the checkout to measure")
    ap.add_argument("--list", action="store_true", help="name every counted item")
    args = ap.parse_args(argv)
    for name, items in measure(args.root.resolve()).items():
        print(f"{name}: {len(items)}")
        if args.list:
            for item in items:
                print(f"    {item}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
