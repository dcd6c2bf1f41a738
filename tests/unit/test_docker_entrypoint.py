"""The image entrypoint (docker/entrypoint.sh), run for real with a stand-in `python` that
records its calls: doctor on the training device first, then the train CLI; escape hatches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # the sibling checker module, under any pytest import mode
    sys.path.insert(0, _HERE)

from docker_checks import write_file as _write  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


STUB_PYTHON = """#!/usr/bin/env bash
echo "$* | cann=${FAKE_CANN:-unset}" >> "$CALLS"
if [ "$1 $2" = "-m lmm_r1_ascend.doctor" ] && [ -n "${DOCTOR_FAILS:-}" ]; then echo "error: no device" >&2; exit 2; fi
"""


def _entrypoint(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    calls = tmp_path / "calls.txt"
    calls.unlink(missing_ok=True)
    stub = _write(tmp_path, "python", STUB_PYTHON, 0o755)
    base = {"PATH": os.environ["PATH"], "PYTHON": str(stub), "CALLS": str(calls),
            "ASCEND_HOME": str(tmp_path / "Ascend"), "LMM_R1_DEVICE": "cuda"}
    result = subprocess.run(["bash", str(ROOT / "docker" / "entrypoint.sh"), *args], env={**base, **env},
                            capture_output=True, text=True, timeout=60)
    return result, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("args,device,train", [
    (("--stage", "fre", "trainer.max_steps=2"), "cuda", "--device cuda --stage fre trainer.max_steps=2"),
    (("--device", "npu-emulated"), "npu-emulated", "--device npu-emulated"),
    (("--device=cpu",), "cpu", "--device=cpu"), (("device=cpu",), "cpu", "device=cpu")])
def test_entrypoint_checks_the_device_then_trains(tmp_path, args, device, train):
    """Without a device argument the image's LMM_R1_DEVICE (cuda here) is checked and passed on."""
    result, calls = _entrypoint(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert calls == [f"-m lmm_r1_ascend.doctor --device {device} | cann=unset",
                     f"-m lmm_r1_ascend.train {train} | cann=unset"]


def test_entrypoint_stops_before_training_when_doctor_fails(tmp_path):
    result, calls = _entrypoint(tmp_path, "--stage", "fre", DOCTOR_FAILS="1")
    assert result.returncode == 2
    assert calls == ["-m lmm_r1_ascend.doctor --device cuda | cann=unset"]
    assert "device 'cuda' is not usable" in result.stderr and "LMM_R1_SKIP_DOCTOR=1" in result.stderr


@pytest.mark.parametrize("args,env,expected", [
    (("--stage", "mgt"), {"LMM_R1_SKIP_DOCTOR": "1", "DOCTOR_FAILS": "1"}, "-m lmm_r1_ascend.train --device cuda --stage mgt"),
    (("--help",), {"DOCTOR_FAILS": "1"}, "-m lmm_r1_ascend.train --help"),
    (("python", "-c", "print(1)"), {"DOCTOR_FAILS": "1"}, "-c print(1)"),
    (("doctor", "--json"), {}, "-m lmm_r1_ascend.doctor --json"),
    (("parity", "compare", "a.json", "b.json"), {}, "-m lmm_r1_ascend.parity compare a.json b.json"),
])
def test_entrypoint_escape_hatches_skip_the_device_check(tmp_path, args, env, expected):
    result, calls = _entrypoint(tmp_path, *args, **env)
    assert result.returncode == 0, result.stderr
    assert calls == [f"{expected} | cann=unset"]


def test_entrypoint_shell_and_cann_environment(tmp_path):
    result, calls = _entrypoint(tmp_path, "shell", "-c", "echo from-shell")
    assert (result.returncode, result.stdout.strip(), calls) == (0, "from-shell", [])
    # CANN's set_env.sh reads unset variables and may end on a false test: neither may stop the entrypoint.
    _write(tmp_path, "Ascend/ascend-toolkit/set_env.sh",
           'export FAKE_CANN="9.1${NOT_SET_ANYWHERE}"\n[ -d /no/such/dir ] && export X=1\n')
    result, calls = _entrypoint(tmp_path, "--stage", "fre")
    assert result.returncode == 0, result.stderr
    assert [c.rsplit("| ", 1)[1] for c in calls] == ["cann=9.1", "cann=9.1"]
