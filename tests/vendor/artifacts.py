"""Vendor artefacts the `vendor` tests read: fetched once with pip into a cache, never committed.

    path = fetch(TORCH_NPU)              # the wheel's path (downloaded on first use)
    text = read_member(path, "torch_npu/_op_plugin_docs.py")

The cache is ~/.cache/lmm-r1-ascend/vendor/<artefact>/ (LMM_R1_VENDOR_CACHE overrides the
root). Each artefact is a pinned requirement plus how pip should fetch it (a binary wheel
for one platform tag, or an sdist); what is read from it is platform-independent text (op
schemas, Python sources). A fetch that fails raises ArtifactUnavailable with pip's last line;
tests/vendor/conftest.py turns that into a skip, or a failure under CI=true.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "LMM_R1_VENDOR_CACHE"
FETCH_TIMEOUT_S = 600


class ArtifactUnavailable(RuntimeError):
    """The artefact is not in the cache and pip could not download it."""


@dataclass(frozen=True)
class Artifact:
    """A pinned package file. kind "wheel": a binary wheel for `platform` and this Python;
    kind "sdist": the source distribution. `pattern` is the glob its file name matches."""

    name: str
    requirement: str
    kind: str
    pattern: str
    platform: str | None = None


# The pinned torch-npu (requirements-npu.txt). Its x86_64 wheel carries the same op schemas,
# Meta kernels and docs as the aarch64 one, and pip fetches it on any machine.
TORCH_NPU = Artifact(
    name="torch-npu-2.10.0.post4",
    requirement="torch-npu==2.10.0.post4",
    kind="wheel",
    pattern="torch_npu-2.10.0.post4-*.whl",
    platform="manylinux_2_28_x86_64",
)

# The pinned vllm-ascend (requirements-npu.txt and docker/Dockerfile.npu: 0.23.0; its .post1 is a
# source-only release). Its wheels (cp310-cp312, 27 MB) carry the plugin's Python sources, the same
# on every platform; tests/vendor/test_runtime_vendor.py parses them with ast.
VLLM_ASCEND = Artifact(
    name="vllm-ascend-0.23.0",
    requirement="vllm-ascend==0.23.0",
    kind="wheel",
    pattern="vllm_ascend-0.23.0-*.whl",
    platform="manylinux_2_34_x86_64",
)


def cache_root() -> Path:
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "lmm-r1-ascend" / "vendor"


def _pip_command(artifact: Artifact, dest: Path) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "download", artifact.requirement, "--no-deps", "-d", str(dest),
           "--disable-pip-version-check", "--progress-bar", "off"]
    if artifact.kind == "wheel":
        cmd += ["--only-binary=:all:", "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}"]
        if artifact.platform:
            cmd += ["--platform", artifact.platform]
    elif artifact.kind == "sdist":
        cmd += ["--no-binary=:all:", "--no-build-isolation"]
    else:
        raise ValueError(f"artifact {artifact.name}: kind must be 'wheel' or 'sdist', got {artifact.kind!r}")
    return cmd


def fetch(artifact: Artifact) -> Path:
    """The artefact's file in the cache, downloading it with pip the first time."""
    dest = cache_root() / artifact.name
    found = sorted(dest.glob(artifact.pattern)) if dest.is_dir() else []
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(_pip_command(artifact, dest), capture_output=True, text=True, timeout=FETCH_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ArtifactUnavailable(f"{artifact.requirement}: pip download did not run ({exc})") from exc
    found = sorted(dest.glob(artifact.pattern))
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise ArtifactUnavailable(f"{artifact.requirement}: pip download failed (exit {proc.returncode}): {last}")
    return found[0]


def read_member(path: Path, member: str) -> str:
    """One text file from a wheel (zip) or an sdist (tar.gz); member is its path inside the archive
    (for an sdist, relative to the top folder)."""
    if path.suffix == ".whl" or zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return zf.read(member).decode("utf-8")
    with tarfile.open(path) as tf:
        top = tf.getnames()[0].split("/")[0]
        extracted = tf.extractfile(f"{top}/{member}")
        if extracted is None:
            raise KeyError(f"{member} is not a file in {path.name}")
        return extracted.read().decode("utf-8")
