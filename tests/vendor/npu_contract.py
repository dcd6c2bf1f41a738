"""The pinned torch-npu wheel's contracts for the torch_npu ops this project calls, made runnable on CPU.

- ``schemas(wheel)``: each op's schema string from the wheel's
  torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml.
- ``bind(wheel)``: defines those schemas, verbatim, in the test-only torch.library namespace
  ``npu_vendor_test`` with the emulation (lmm_r1_ascend.kernels.npu_emulation) as the
  kernel, and returns the ops. torch_npu itself exports ``torch_npu.<op> =
  torch.ops.npu.<op>`` (torch_npu/_init/core/_exports.py in the wheel), so a call through
  ``torch.ops.npu_vendor_test.<op>`` is parsed by the same dispatcher code as on an NPU: a
  wrong keyword, type or arity fails the same way. ``install(ops)`` puts them in place of
  the emulation's module attributes, which is where EmulatedNpuBackend's kernels look them
  up, so the project's own NPU code paths run through the wheel's schemas.
- ``meta_kernels(wheel)``: the wheel's Meta kernels (torch_npu/op_plugin/meta/
  _meta_registrations.py) for those ops, executed from the wheel's source with the few
  torch_npu internals they import stubbed.
- ``op_doc(wheel, op)``: the op's documentation string from torch_npu/_op_plugin_docs.py.
"""

from __future__ import annotations

import ast
import collections
import functools
import math
import types
import warnings
from pathlib import Path

import torch
import yaml

from artifacts import read_member

OPS = ("npu_fusion_attention", "npu_rms_norm", "npu_rotary_mul", "npu_swiglu")
NAMESPACE = "npu_vendor_test"
SCHEMA_FILE = "torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml"
META_FILE = "torch_npu/op_plugin/meta/_meta_registrations.py"
DOCS_FILE = "torch_npu/_op_plugin_docs.py"

# How often each schema-bound op ran its kernel in this process (a test asserts its path was live).
CALLS: collections.Counter = collections.Counter()

_BOUND: dict[str, object] = {}
_LIBRARY = None  # kept alive: dropping the Library object would deregister the ops


def _emulation_kernels() -> dict:
    # The submodules, not the package: install() replaces the package's attributes.
    from lmm_r1_ascend.kernels.npu_emulation import fused_ops, fusion_attention

    return {"npu_fusion_attention": fusion_attention.npu_fusion_attention, "npu_rms_norm": fused_ops.npu_rms_norm,
            "npu_rotary_mul": fused_ops.npu_rotary_mul, "npu_swiglu": fused_ops.npu_swiglu}


@functools.lru_cache(maxsize=4)
def schemas(wheel: Path) -> dict[str, str]:
    """{op: schema} for OPS, exactly as the wheel's codegen YAML writes them (overload-less name)."""
    doc = yaml.safe_load(read_member(wheel, SCHEMA_FILE))
    found: dict[str, str] = {}
    for section in doc.values():
        if not isinstance(section, list):
            continue
        for entry in section:
            func = entry.get("func") if isinstance(entry, dict) else None
            if func and func.split("(", 1)[0] in OPS:
                found.setdefault(func.split("(", 1)[0], func)
    missing = [op for op in OPS if op not in found]
    if missing:
        raise LookupError(f"{SCHEMA_FILE} in {wheel.name} has no schema for {missing}")
    return found


def bind(wheel: Path) -> types.SimpleNamespace:
    """The schema-bound ops (defined once per process), as a namespace like the torch_npu module."""
    global _LIBRARY
    if not _BOUND:
        lib = torch.library.Library(NAMESPACE, "DEF")
        kernels = _emulation_kernels()
        for op, schema in schemas(wheel).items():
            lib.define(schema)
            lib.impl(op, _counted(op, kernels[op]), "CompositeImplicitAutograd")
            _BOUND[op] = getattr(getattr(torch.ops, NAMESPACE), op)
        _LIBRARY = lib
    return types.SimpleNamespace(**_BOUND)


def _counted(op: str, fn):
    def kernel(*args, **kwargs):
        CALLS[op] += 1
        return fn(*args, **kwargs)

    return kernel


def install(ops, setter=setattr) -> None:
    """Put ``ops`` (a namespace with OPS) in place of the emulation module's ops. ``setter`` is
    ``monkeypatch.setattr`` in a test (undone afterwards) or ``setattr`` in a spawned rank."""
    from lmm_r1_ascend.kernels import npu_emulation

    for op in OPS:
        setter(npu_emulation, op, getattr(ops, op))


def _parse(source: str) -> ast.Module:
    with warnings.catch_warnings():  # the vendor's docstrings hold invalid escapes ("\_", "\s")
        warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
        return ast.parse(source)


class _ErrCode:
    def __getattr__(self, name):
        return name


@functools.lru_cache(maxsize=4)
def meta_kernels(wheel: Path) -> dict:
    """{op: the wheel's Meta kernel} for OPS.

    The module registers kernels into the "npu" library at import and imports torch_npu
    internals, neither of which exists here; so its function definitions and plain top-level
    assignments are executed (decorators dropped), with stubs for ErrCode / ops_error / the
    SoC and CANN version queries, and the kernels are found by their ``@impl(m, "<op>")``.
    """
    tree = _parse(read_member(wheel, META_FILE))
    names: dict[str, str] = {}
    body = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                if (isinstance(dec, ast.Call) and getattr(dec.func, "id", None) == "impl" and len(dec.args) == 2
                        and isinstance(dec.args[1], ast.Constant) and dec.args[1].value in OPS):
                    names[dec.args[1].value] = node.name
            node.decorator_list = []
            body.append(node)
        elif isinstance(node, ast.Assign) and not isinstance(node.value, ast.Call):
            body.append(node)
    ns = {"torch": torch, "math": math, "warnings": warnings, "ErrCode": _ErrCode(), "ops_error": lambda *a: "",
          "get_soc_version": lambda: 0, "get_cann_version": lambda: "", "__name__": "torch_npu_meta_from_wheel"}
    exec(compile(ast.Module(body=body, type_ignores=[]), META_FILE, "exec"), ns)  # noqa: S102 (the wheel's source)
    missing = [op for op in OPS if op not in names]
    if missing:
        raise LookupError(f"{META_FILE} in {wheel.name} registers no Meta kernel for {missing}")
    return {op: ns[fn] for op, fn in names.items()}


@functools.lru_cache(maxsize=16)
def op_doc(wheel: Path, op: str) -> str:
    """The docstring torch_npu attaches to ``op`` (``_add_torch_npu_docstr("<op>", \"\"\"...\"\"\")``)."""
    tree = _parse(read_member(wheel, DOCS_FILE))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_add_torch_npu_docstr"
                and len(node.args) == 2 and isinstance(node.args[0], ast.Constant) and node.args[0].value == op):
            return node.args[1].value
    raise LookupError(f"{DOCS_FILE} documents no {op}")
