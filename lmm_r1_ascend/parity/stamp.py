"""The environment stamped into every parity result: device, kernels, versions, date.

Nothing personal goes in: no host name, user name or absolute path.
"""

from __future__ import annotations

import datetime
import platform
from typing import Any

import torch


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def describe_kernels(kernels) -> dict[str, dict[str, Any]]:
    """{op: {"name", "reason", "rejected": [[name, why], ...]}} for every choice of the KernelSet
    ``kernels`` (backend.select_kernels()), ops sorted by name."""
    return {c.op: {"name": c.name, "reason": c.reason, "rejected": [list(r) for r in c.rejected]}
            for c in sorted(kernels, key=lambda c: c.op)}


def attention_implementations(backend) -> dict[str, tuple[bool, str]]:
    """Every attention implementation ``backend`` knows: name -> (usable here, reason).

    The names come from the backend's own candidate list (``KernelChoice.candidates``), so a
    new implementation shows up here without a change.
    """
    from lmm_r1_ascend.backends.base import BackendUnavailable

    names = backend.select_kernels().attention.candidates
    out = {}
    for name in names:
        try:
            reason = backend.select_kernels({"attention": name}).attention.reason
            out[name] = (True, reason.removeprefix("requested explicitly; "))
        except BackendUnavailable as exc:
            out[name] = (False, str(exc))
    return out


def environment(backend, *, device: torch.device, kernels, dtype: torch.dtype, seed: int,
                plant: str | None) -> dict[str, Any]:
    """A JSON-able description of where and how a parity run ran (kernels: the run's KernelSet)."""
    from lmm_r1_ascend.backends.stack import stack_versions

    versions = {"python": platform.python_version()}
    versions.update({k: v for k, v in stack_versions().items() if v != "not installed"})
    env = {
        "backend": backend.name,
        "device": str(device),
        "device_type": backend.device_type,
        "kernels": describe_kernels(kernels),
        "attention_candidates": {name: ("usable: " if ok else "unusable: ") + why
                                 for name, (ok, why) in attention_implementations(backend).items()},
        "dtype": str(dtype).removeprefix("torch."),
        "seed": int(seed),
        "deterministic": True,
        "torch_threads": torch.get_num_threads(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "versions": versions,
        "date_utc": utc_now(),
        "plant": plant,
    }
    if backend.emulation_note:
        env["note"] = backend.emulation_note
    return env
