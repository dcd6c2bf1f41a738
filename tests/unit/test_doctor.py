"""doctor: a human report and a JSON object on CPU; one-line errors for unusable devices."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lmm_r1_ascend.backends.npu import NpuBackend


def _doctor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmm_r1_ascend.doctor", *args],
                          capture_output=True, text=True, timeout=180)


def test_json_report_on_cpu():
    proc = _doctor("--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["backend"]["name"] == "cpu" and report["backend"]["device_count"] == 1
    assert report["kernels"]["attention"]["implementation"] == "batched"
    assert list(report["kernels"]) == ["attention", "decode_attention", "logprobs", "fused_ops"]  # what the core calls
    assert report["kernels"]["decode_attention"]["implementation"] == "matmul"
    assert report["backend"]["ray_actor_options"] == {}
    sp = report["sequence_parallel"]  # both modes, over the backend's own varlen kernel
    assert sp["ring"]["implementation"] == "ring[batched]" and sp["ulysses"]["implementation"] == "ulysses[batched]"
    assert "gloo" in sp["ring"]["reason"] and "divide" in sp["ulysses"]["reason"]
    assert "LMM_R1_ATTENTION" not in report["environment"]  # read by nothing, so not shown
    for pkg in ("torch", "transformers", "deepspeed", "vllm", "vllm-ascend", "ray", "torch-npu", "math-verify"):
        assert pkg in report["versions"]
    assert report["versions"]["torch"].startswith("2.")
    assert "DS_ACCELERATOR" in report["environment"]


def test_human_report_shows_fallbacks_for_emulated_npu():
    proc = _doctor("--device", "npu-emulated")
    assert proc.returncode == 0, proc.stderr
    assert "backend     npu-emulated" in proc.stdout
    assert "npu_fusion" in proc.stdout and "emulated" in proc.stdout
    assert "kernels chosen:" in proc.stdout and "logprobs         chunked" in proc.stdout
    assert "packing" not in proc.stdout and "collectives gloo" in proc.stdout
    assert "ring[npu_fusion]" in proc.stdout and "ulysses[npu_fusion]" in proc.stdout
    assert "OMP_NUM_THREADS" in proc.stdout  # device variables are the CPU's: tensors live there


def test_npu_without_cann_gives_one_line_and_no_traceback():
    if NpuBackend.probe()[0]:
        pytest.skip("a real NPU is present")
    proc = _doctor("--device", "npu")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "torch_npu/CANN is missing" in lines[0]
