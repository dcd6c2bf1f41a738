"""lmm_r1_ascend.plan: the per-device memory estimate, its verdict and the change that fits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmm_r1_ascend.config import load_config
from lmm_r1_ascend.plan import GB, estimate, main, shape_of

FULL = "qwen2.5-vl-3b-shape:layers=36,vision_layers=32"
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "real_shape_cpu.jsonl"


def _cfg(recipe="fre_text", *overrides):
    return load_config(recipe, overrides=list(overrides))


def test_hub_id_of_the_paper_model_is_known_offline():
    shape = shape_of("Qwen/Qwen2.5-VL-3B-Instruct")
    assert shape == shape_of(FULL)
    assert shape.vocab == 151936 and shape.hidden == 2048 and shape.tied and shape.layers == 36
    assert shape.largest_layer == shape.embed == 151936 * 2048  # the embedding is what ZeRO-3 gathers whole


def test_zero3_model_states_agree_with_deepspeeds_own_estimator():
    ds = pytest.importorskip("deepspeed.runtime.zero.stage3")
    cfg = _cfg("fre_text", "distributed.train_engine=deepspeed", "distributed.zero_stage=3")
    est = estimate(cfg, devices=8, device_memory_gb=64, backend="cuda")
    shape = shape_of(FULL)
    _, want, _ = ds.estimate_zero3_model_states_mem_needs(shape.params, shape.largest_layer, 8, 1,
                                                          cpu_offload=False, cpu_offload_params=False)
    ours = (est.parts["weights"] + est.parts["gradients"] + est.parts["optimizer"]) * GB
    # DeepSpeed counts 18 B/param / N + 4 B x largest layer; we count 20 B/param / N (its ZeRO-2
    # breakdown: bf16 weights + bf16 grads + fp32 grads + fp32 master + Adam) + 2 B x largest layer.
    assert abs(ours / want - 1) < 0.10, (ours / GB, want / GB)
    assert est.deepspeed_gb["zero3_per_device"] == pytest.approx(want / GB, abs=1e-3)


def test_torch_engine_states_are_four_copies_in_the_model_dtype():
    cfg = _cfg("fre_text", "model.dtype=bfloat16")
    est = estimate(cfg, devices=1, device_memory_gb=80, backend="cuda")
    n = shape_of(FULL).params
    assert est.parts["weights"] == pytest.approx(2 * n / GB, abs=1e-3)
    assert est.parts["gradients"] + est.parts["optimizer"] == pytest.approx(6 * n / GB, abs=2e-3)
    frozen = estimate(_cfg("fre_text", "model.dtype=bfloat16", "model.freeze_prefixes=[model.visual]"),
                      devices=1, device_memory_gb=80, backend="cuda")
    assert frozen.parts["optimizer"] == pytest.approx(4 * (n - shape_of(FULL).vision) / GB, abs=2e-3)


def test_activations_scale_with_tokens_and_checkpointing_cuts_them():
    base = ["distributed.train_engine=deepspeed", "distributed.zero_stage=3"]
    on = estimate(_cfg("fre_text", *base), devices=8, device_memory_gb=64)
    half = estimate(_cfg("fre_text", *base, "trainer.max_tokens_per_micro_batch=8192"), devices=8, device_memory_gb=64)
    off = estimate(_cfg("fre_text", *base, "model.gradient_checkpointing=false"), devices=8, device_memory_gb=64)
    assert half.parts["activations"] == pytest.approx(on.parts["activations"] / 2, rel=1e-3)
    assert off.parts["activations"] > 10 * on.parts["activations"]
    # 36 layers x 16384 tokens x (10 x 2048 + 4 x 11008 + 4 x 256) values x 2 B, plus the final norm's three H rows.
    assert off.parts["activations"] == pytest.approx(
        (36 * 16384 * (10 * 2048 + 4 * 11008 + 4 * 256) + 16384 * 3 * 2048) * 2 / GB, rel=1e-3)


def test_verdict_and_the_smallest_change_that_fits():
    assert main(["--recipe", "fre_text", "--devices", "8", "--device-memory", "64",
                 "distributed.train_engine=deepspeed", "distributed.zero_stage=3"]) == 0
    cfg = _cfg("fre_text", "distributed.train_engine=deepspeed", "distributed.zero_stage=2")
    from lmm_r1_ascend.plan import smallest_change

    shape = shape_of(FULL)
    assert not estimate(cfg, devices=8, device_memory_gb=32).fits
    change = smallest_change(cfg, devices=8, device_memory_gb=32, backend="npu", shape=shape)
    assert change and not change.startswith("nothing")
    overrides = [c for c in change.split() if "=" in c]
    devices = int(change.split()[1]) if change.startswith("--devices") else 8
    fixed = _cfg("fre_text", "distributed.train_engine=deepspeed", "distributed.zero_stage=2", *overrides)
    assert estimate(fixed, devices=devices, device_memory_gb=32).fits


def test_offload_frees_device_memory_on_accelerators_but_not_on_cpu():
    """On CPU the host DeepSpeed offloads to is the same RAM: the total keeps the offloaded state."""
    base = ["model.pretrain=qwen2.5-vl-3b-shape:layers=1,vision_layers=1", "model.dtype=bfloat16",
            "distributed.train_engine=deepspeed", "distributed.zero_stage=3", "trainer.max_tokens_per_micro_batch=1024"]
    for backend in ("cuda", "cpu"):
        plain = estimate(_cfg("mgt_sokoban", *base), devices=2, device_memory_gb=24, backend=backend, steps=1)
        off = estimate(_cfg("mgt_sokoban", *base, "distributed.offload_optimizer=true"), devices=2, device_memory_gb=24,
                       backend=backend, steps=1)
        assert off.host_gb > 3
        if backend == "cuda":
            assert off.total_gb < plain.total_gb - 3 and "offloaded" not in off.parts
        else:
            assert off.parts["offloaded"] == off.host_gb and off.total_gb >= plain.total_gb - 0.05
            assert any("same RAM" in n for n in off.notes)


def _plan(*args):
    return subprocess.run([sys.executable, "-m", "lmm_r1_ascend.plan", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args,needle", [
    (["--recipe", "fre_txt"], "unknown recipe 'fre_txt'"),
    (["--recipe", "fre_text", "--device-memory", "-8"], "--device-memory must be a positive number of GB"),
    (["--recipe", "fre_text", "--device-memory", "lots"], "invalid float value: 'lots'"),
    (["--recipe", "fre_text", "--devices", "0"], "--devices must be >= 1"),
    (["--recipe", "fre_text", "trainer.max_token=3"], "unknown config key 'trainer.max_token'"),
])
def test_user_errors_are_one_line(args, needle):
    proc = _plan(*args)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "[WARNING]" not in line]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert needle in lines[0]


def test_json_output_and_exit_status_when_it_does_not_fit():
    proc = _plan("--recipe", "mgt_geo", "--devices", "1", "--device-memory", "24", "--json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert not out["fits"] and out["change"] and out["total_gb"] > 24
    assert {"weights", "gradients", "optimizer", "critic", "reference", "rollout", "activations",
            "logprob_buffers"} <= set(out["parts"])


@pytest.mark.skipif(not RESULTS.exists(), reason="no recorded real-shape runs")
def test_estimates_of_the_recorded_runs_are_within_25_percent():
    """Re-estimate every recorded CPU run (benchmarks/bench_real_shape.py) from its own command.

    The measured figure is the row's measured_gb where the benchmark wrote one (the sampled
    peak RSS + swap of the largest rank when the host swapped, which RSS alone undercounts),
    else metrics.jsonl's peak RSS."""
    from lmm_r1_ascend.plan import estimate_from_overrides

    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("rc") == 0 and r.get("peak_gb")]
    assert len(rows) >= 3
    for r in rows:
        overrides = r["command"].split(" --device cpu ", 1)[1].split()
        est = estimate_from_overrides(r["recipe"], overrides, devices=2 if r["engine"] == "zero3" else 1,
                                      device_memory_gb=24, backend="cpu", steps=1)
        measured = r.get("measured_gb") or r["peak_gb"]
        assert abs(est.total_gb / measured - 1) <= 0.25, (r["recipe"], r["engine"], r["model"], est.total_gb,
                                                          measured)


def test_a_swapping_run_is_measured_by_its_ranks_rss_plus_swap():
    """bench_real_shape.measured_gb: metrics.jsonl's peak RSS when the host did not swap; when it did,
    the larger of that and the biggest rank's sampled RSS + swap (swapped pages are still the rank's)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_real_shape", RESULTS.parents[1] / "bench_real_shape.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = {"peak_gb": 12.2, "sampled_rank_peak_footprint_gb": [13.4, 11.7], "sampled_host_swap_used_peak_gb": 0.0}
    assert bench.measured_gb(row) == (12.2, "RSS")
    assert bench.measured_gb({**row, "sampled_host_swap_used_peak_gb": 1.2}) == (13.4, "RSS+swap")
    assert bench.measured_gb({**row, "peak_gb": 14.0, "sampled_host_swap_used_peak_gb": 1.2}) == (14.0, "RSS+swap")
    assert bench.measured_gb({"peak_gb": 7.5}) == (7.5, "RSS")  # rows recorded before the swap sampling
