"""The import graph follows DESIGN.md's layers: every arrow points down, and no modules import
each other in a circle (counting imports inside functions: a lazy import is still a dependency).

Layers, bottom to top: kernels <- backends <- core modules <- workers <- distributed <-
trainer / parity <- CLIs. Core modules may import each other (without circles).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = {"lmm_r1_ascend": ROOT / "lmm_r1_ascend", "lmm_r1_ascend.backends": ROOT / "backends",
                "lmm_r1_ascend.kernels": ROOT / "kernels"}
CORE = {"algorithms", "config", "data", "demo", "engines", "envs", "evaluation", "experience", "models", "rewards",
        "rollout"}
LAYERS = {"kernels": 0, "backends": 1, **{name: 2 for name in CORE}, "workers": 3, "distributed": 4,
          "trainer": 5, "parity": 5, "experiment": 6}  # experiment/: a CLI package (runs train and eval)
CLI_LAYER = 6  # lmm_r1_ascend/<name>.py at the top: train, doctor, plot, reward


def project_modules() -> dict[str, Path]:
    mods = {}
    for prefix, root in PACKAGE_DIRS.items():
        for path in root.rglob("*.py"):
            parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
            mods[".".join([prefix, *parts])] = path
    return mods


def imports_of(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The project modules `name` imports (a `from pkg import sub` counts the submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # `from pkg import a, b` reads pkg's namespace and imports each named submodule
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in mods:
                target = target.rpartition(".")[0]  # the most specific project module named
            if target and target != name and target.startswith("lmm_r1_ascend"):
                found.add(target)
    return found


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return CLI_LAYER  # the package's __init__: imports nothing of ours (checked below)
    if parts[1] in LAYERS:
        return LAYERS[parts[1]]
    return CLI_LAYER


def graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {name: imports_of(name, path, mods) for name, path in mods.items()}


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(g):
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def upward_arrows(g: dict[str, set[str]]) -> list[str]:
    return [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
            for a, targets in sorted(g.items()) for b in sorted(targets) if layer(b) > layer(a)]


def test_every_import_points_down_the_layers():
    upward = upward_arrows(graph())
    assert not upward, "imports that run back up the layers (DESIGN.md):\n" + "\n".join(upward)


def test_no_import_circles():
    found = circles(graph())
    assert not found, "modules that import each other in a circle:\n" + "\n".join(", ".join(c) for c in found)


def test_the_checker_sees_circles_and_upward_arrows():
    # the two checks above must be able to fail: a planted circle and a planted upward arrow
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(planted) == [["a", "b", "c"]]
    g = graph()
    g["lmm_r1_ascend.workers.roles"] = g["lmm_r1_ascend.workers.roles"] | {"lmm_r1_ascend.trainer.ppo"}
    assert upward_arrows(g) == ["lmm_r1_ascend.workers.roles (layer 3) imports lmm_r1_ascend.trainer.ppo (layer 5)"]
    assert layer("lmm_r1_ascend.trainer.ppo") > layer("lmm_r1_ascend.distributed.cluster") > \
        layer("lmm_r1_ascend.workers.builders") > layer("lmm_r1_ascend.rollout.base") > \
        layer("lmm_r1_ascend.backends.cpu") > layer("lmm_r1_ascend.kernels.attention")


def test_every_package_directory_has_a_layer():
    dirs = {p.name for p in (ROOT / "lmm_r1_ascend").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert dirs <= set(LAYERS), f"give these packages a layer in this test (DESIGN.md): {sorted(dirs - set(LAYERS))}"


def test_package_and_seam_inits_import_nothing_of_ours():
    # DESIGN.md: backends/ and kernels/ __init__ have no side effects (transformers may import
    # our kernels/ as a top-level "kernels"); the package __init__ stays import-light
    g = graph()
    assert not g["lmm_r1_ascend"], g["lmm_r1_ascend"]
    assert g["lmm_r1_ascend.kernels"] <= set(), g["lmm_r1_ascend.kernels"]
