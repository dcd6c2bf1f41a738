"""benchmarks/gpu_kit.py: its helpers (fast) and the whole kit on CPU at the small shape (slow)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "benchmarks" / "gpu_kit.py"


def _kit():
    spec = importlib.util.spec_from_file_location("gpu_kit", KIT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_table_and_flops_per_token():
    kit = _kit()
    assert kit.peak_tflops("NVIDIA H200") == 989.0 and kit.peak_tflops("Ascend910B3") == 313.0
    assert kit.peak_tflops("Intel Xeon") is None  # CPU: no MFU rather than a made-up one
    from lmm_r1_ascend.models.shape_models import shape_config
    from lmm_r1_ascend.plan import model_shape

    shape = model_shape(shape_config("qwen2.5-vl-3b-text-shape", 36, 0))
    # Independent count: 36 layers x (attention + MLP matmuls) + the 151,936 x 2048 head, x 6 for fwd + bwd.
    layer = 2048 * 2048 * 2 + 2 * 2048 * 256 + 3 * 2048 * 11008
    biases_norms = 2048 + 2 * 256 + 2 * 2048
    want = 6 * (36 * (layer + biases_norms) + 151936 * 2048) + 6 * 36 * 2048 * 1000
    assert kit.flops_per_token(shape, 1000) == pytest.approx(want, rel=1e-9)


def test_lengths_vary_so_padding_costs_something():
    lengths = _kit().lengths_for(16384, 16)
    assert len(lengths) == 16 and abs(sum(lengths) / 16384 - 1) < 0.1
    assert max(lengths) * len(lengths) > 1.4 * sum(lengths)


@pytest.mark.slow
def test_the_kit_runs_on_cpu_at_the_small_shape(tmp_path):
    """~90 s: every step of the kit on CPU (cuda tests skip, parity on cpu, 1-layer actor, hf rollout)."""
    proc = subprocess.run([sys.executable, str(KIT), "--device", "cpu", "--small", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    files = list(tmp_path.glob("gpu_kit_cpu_small_*.json"))
    assert files, proc.stderr[-3000:]
    report = json.loads(files[0].read_text())
    assert proc.returncode == 0, json.dumps(report["steps"], indent=1)[-3000:]
    steps = report["steps"]
    assert set(steps) == {"tests", "parity", "actor", "logprobs", "rollout", "weight_sync"}
    assert steps["actor"]["packed"]["tokens_per_s"] > 0 and steps["actor"]["padded"]["tokens_per_s"] > 0
    assert steps["actor"]["padded_tokens"] > steps["actor"]["real_tokens"]
    # 2048 tokens > the 1024-token chunk: the full fp32 logits (2048 x 151,936 x 4 B = 1.2 GB) and their
    # gradient cost the naive path more than chunks of 1024 do.
    assert steps["logprobs"]["naive"]["extra_peak_gb"] > steps["logprobs"]["chunked"]["extra_peak_gb"]
    assert steps["rollout"]["generated_tokens"] > 0 and steps["weight_sync"]["gb_per_s"] > 0
    assert report["versions"]["torch"] and report["date"]
