"""The install layout: backends/ and kernels/ are only ever lmm_r1_ascend.backends / .kernels."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run_from_root(code: str) -> subprocess.CompletedProcess:
    # `python -c` puts the current directory first on sys.path: the case that can confuse probes.
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_mapped_packages_resolve_to_repository_root_dirs():
    import lmm_r1_ascend.backends as backends
    import lmm_r1_ascend.kernels as kernels

    assert Path(kernels.__file__).parent == ROOT / "kernels"
    assert Path(backends.__file__).parent == ROOT / "backends"


def test_transformers_does_not_take_our_kernels_for_hugging_face_kernels():
    proc = _run_from_root(
        "import sys\n"
        "from transformers.utils import import_utils as iu\n"
        "assert not iu.is_kernels_available(), 'transformers thinks HF kernels is installed'\n"
        "m = sys.modules.get('kernels')\n"
        "assert m is None or not hasattr(m, '__version__'), 'our kernels package must not carry a __version__'\n"
        "import lmm_r1_ascend.kernels as k\n"
        "assert k.__name__ == 'lmm_r1_ascend.kernels'\n"
        "print('ok')\n"
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.parametrize("pkg", ["kernels", "backends"])
def test_top_level_import_has_no_side_effects(pkg):
    """transformers may import our package under the bare name; that must register or probe nothing."""
    proc = _run_from_root(
        "import sys\n"
        f"before = set(sys.modules)\nimport {pkg}\nnew = set(sys.modules) - before\n"
        "heavy = sorted(n for n in new if n.split('.')[0] in ('torch_npu', 'flash_attn', 'vllm', 'deepspeed', 'ray'))\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_every_package_directory_is_listed_in_pyproject():
    """A subpackage missing from the explicit list would vanish from non-editable installs (Docker)."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    mapping = {"lmm_r1_ascend": "lmm_r1_ascend", "backends": "lmm_r1_ascend.backends", "kernels": "lmm_r1_ascend.kernels"}
    found = set()
    for top, dotted in mapping.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((dotted, *rel)))
    assert found == listed, f"missing from pyproject: {sorted(found - listed)}; listed but absent: {sorted(listed - found)}"
