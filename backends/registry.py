"""Find a backend by name: the built-ins, plus third parties through an entry-point group.

A third-party package adds a device like a vLLM platform plugin:
    [project.entry-points."lmm_r1_ascend.backends"]
    mydev = "my_pkg.backend:MyDevBackend"      # a subclass of lmm_r1_ascend.backends.base.Backend
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from lmm_r1_ascend.backends.base import Backend, BackendUnavailable

ENTRY_POINT_GROUP = "lmm_r1_ascend.backends"
AUTO_ORDER = ("npu", "cuda", "cpu")

_BUILTIN = {
    "cpu": "lmm_r1_ascend.backends.cpu:CpuBackend",
    "cuda": "lmm_r1_ascend.backends.cuda:CudaBackend",
    "npu": "lmm_r1_ascend.backends.npu:NpuBackend",
    "npu-emulated": "lmm_r1_ascend.backends.npu:EmulatedNpuBackend",
}
_INSTALL_HINTS = {
    "cuda": "use the CUDA image (docker/Dockerfile.cuda) or `pip install -r requirements-cuda.txt` on a machine with an NVIDIA GPU",
}
_instances: dict[str, Backend] = {}


def backend_names() -> dict[str, str]:
    """name -> "module:Class" for every known backend (built-ins win over plugins of the same name)."""
    names = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    names.update(_BUILTIN)
    return names


def backend_class(name: str) -> type[Backend]:
    names = backend_names()
    if name not in names:
        raise ValueError(f"unknown device '{name}'; choose one of: auto, {', '.join(sorted(names))}")
    module, _, attr = names[name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"backend '{name}' ({names[name]}) is not a subclass of lmm_r1_ascend.backends.base.Backend")
    return cls


def resolve_name(name: str = "auto") -> tuple[str, list[tuple[str, str]]]:
    """The backend name `name` stands for, and for "auto" why each earlier choice was skipped."""
    name = (name or "auto").strip().lower()
    if name != "auto":
        return name, []
    skipped: list[tuple[str, str]] = []
    for candidate in AUTO_ORDER:
        ok, why = backend_class(candidate).probe()
        if ok:
            return candidate, skipped
        skipped.append((candidate, why))
    raise BackendUnavailable("no device is usable, not even the CPU")  # CpuBackend.probe is always True


def get_backend(name: str = "auto") -> Backend:
    """The backend for `name` ("auto" = npu, then cuda, then cpu), one instance per name.

    Raises BackendUnavailable with a one-line, actionable message when the device is
    named explicitly but cannot be used here.
    """
    resolved, _ = resolve_name(name)
    if resolved in _instances:
        return _instances[resolved]
    cls = backend_class(resolved)
    ok, why = cls.probe()
    if not ok:
        hint = getattr(cls, "install_hint", None) or _INSTALL_HINTS.get(resolved, "")
        raise BackendUnavailable(f"device '{resolved}' is not usable here: {why}" + (f"; {hint}" if hint else ""))
    backend = _instances[resolved] = cls()
    return backend
