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


# ---- the launch scripts (scripts/train_{npu,cuda}.sh): the environment training starts with ----------

ENV_STUB_PYTHON = """#!/usr/bin/env bash
if [ "$2" = "lmm_r1_ascend.train" ]; then env > "$ENV_DUMP"; fi
"""
ALLOCATOR = ("PYTORCH_NPU_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")


def _launch(tmp_path: Path, device: str, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run scripts/train_DEVICE.sh with a stand-in python; the environment the train CLI got."""
    dump = tmp_path / "env.txt"
    dump.unlink(missing_ok=True)
    stub = _write(tmp_path, "python", ENV_STUB_PYTHON, 0o755)
    base = {"PATH": os.environ["PATH"], "PYTHON": str(stub), "ENV_DUMP": str(dump),
            "ASCEND_HOME": str(tmp_path / "Ascend")}
    result = subprocess.run(["bash", str(ROOT / "scripts" / f"train_{device}.sh"), "fre_text", *args],
                            env={**base, **env}, capture_output=True, text=True, timeout=60)
    got = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line) if dump.exists() else {}
    return result, got


def test_npu_script_leaves_expandable_segments_off_and_sets_the_hccl_defaults(tmp_path):
    """Sleep mode is the vLLM rollout's default, and expandable segments break it on NPU (ASCEND.md)."""
    _write(tmp_path, "Ascend/ascend-toolkit/set_env.sh",
           'export FAKE_CANN="9.1${NOT_SET_ANYWHERE}"\n[ -d /no/such ] && true\n')
    result, env = _launch(tmp_path, "npu")
    assert result.returncode == 0, result.stderr
    assert [name for name in ALLOCATOR if name in env] == []
    assert (env["HCCL_CONNECT_TIMEOUT"], env["HCCL_EXEC_TIMEOUT"]) == ("1800", "1800")
    assert env["VLLM_ASCEND_ENABLE_NZ"] == "0"
    assert env["FAKE_CANN"] == "9.1"  # CANN's set_env.sh ran despite reading an unset variable
    assert [n for n in ("HCCL_OP_EXPANSION_MODE", "TASK_QUEUE_ENABLE", "CPU_AFFINITY_CONF") if n in env] == []
    result, env = _launch(tmp_path, "npu", HCCL_CONNECT_TIMEOUT="3600")
    assert env["HCCL_CONNECT_TIMEOUT"] == "3600"  # the caller's value wins


def test_npu_script_lets_the_os_pick_hccl_ports_unless_told_otherwise(tmp_path):
    """Default "auto" (several HCCL processes per NPU when colocated); an exported range wins; an
    exported empty value removes the variable (CANN refuses it with MC2 fused MoE ops on A2)."""
    ports = ("HCCL_HOST_SOCKET_PORT_RANGE", "HCCL_NPU_SOCKET_PORT_RANGE")
    result, env = _launch(tmp_path, "npu")
    assert result.returncode == 0, result.stderr
    assert {n: env.get(n) for n in ports} == {n: "auto" for n in ports}
    result, env = _launch(tmp_path, "npu", HCCL_HOST_SOCKET_PORT_RANGE="61000-61050", HCCL_NPU_SOCKET_PORT_RANGE="")
    assert result.returncode == 0, result.stderr
    assert env.get("HCCL_HOST_SOCKET_PORT_RANGE") == "61000-61050" and "HCCL_NPU_SOCKET_PORT_RANGE" not in env


@pytest.mark.parametrize("args,warns", [((), True), (("rollout.vllm_enable_sleep=false",), False)])
def test_npu_script_keeps_a_chosen_allocator_and_warns_while_sleep_mode_is_on(tmp_path, args, warns):
    result, env = _launch(tmp_path, "npu", *args, PYTORCH_NPU_ALLOC_CONF="expandable_segments:True")
    assert result.returncode == 0, result.stderr
    assert env["PYTORCH_NPU_ALLOC_CONF"] == "expandable_segments:True"
    assert ("rollout.vllm_enable_sleep=false" in result.stderr) == warns


@pytest.mark.parametrize("given,expected", [
    ({}, {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}),
    ({"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}, {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}),
    ({"PYTORCH_ALLOC_CONF": "max_split_size_mb:128"}, {"PYTORCH_ALLOC_CONF": "max_split_size_mb:128"}),
])
def test_cuda_script_defaults_expandable_segments_only_when_no_allocator_is_chosen(tmp_path, given, expected):
    """Under the name vLLM's sleep-mode pool reads (PYTORCH_CUDA_ALLOC_CONF; vLLM PR 40812), never next to
    a PYTORCH_ALLOC_CONF the caller chose."""
    result, env = _launch(tmp_path, "cuda", **given)
    assert result.returncode == 0, result.stderr
    assert {name: env[name] for name in ALLOCATOR if name in env} == expected
