"""One PPO step of each paper algorithm at Qwen2.5-VL-3B's real widths (vocab 151,936, hidden 2048,
vision 1280 with window attention), 1 text layer and 1 vision block, on CPU through the train CLI
(benchmarks/bench_real_shape.py): reinforce_baseline with the KL reference, gae with the critic,
Sokoban's frozen vision tower; and fre_multi under DeepSpeed ZeRO-3 with 2 ranks. Each run's peak
memory per rank must lie within 25 % of lmm_r1_ascend.plan's estimate. ~2 min a run on 2 cores."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_real_shape", ROOT / "benchmarks" / "bench_real_shape.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from lmm_r1_ascend.models.shape_models import build_tokenizer
    from lmm_r1_ascend.workers.builders import resolve_model_name

    bench = _bench()
    model = "qwen2.5-vl-3b-shape:layers=1,vision_layers=1"
    resolve_model_name(model)
    root = tmp_path_factory.mktemp("real_shape")
    args = argparse.Namespace(prompts=2, prompt_tokens=320, samples=2, max_new_tokens=8, micro_tokens=1024,
                              gradient_checkpointing=True, dtype="auto", timeout=1500)
    data = bench.write_data(root / "data", build_tokenizer(), args.prompts, args.prompt_tokens)
    return bench, model, data, root, args


@pytest.mark.slow
@pytest.mark.parametrize("recipe,engine", [("fre_multi", "torch"), ("mgt_geo", "torch"), ("mgt_sokoban", "torch"),
                                           ("fre_multi", "zero3")])
def test_one_real_shape_step(setup, recipe, engine):
    bench, model, data, root, args = setup
    if engine == "zero3":
        pytest.importorskip("ray")
        pytest.importorskip("deepspeed")
    row = bench.one_run(recipe, engine, model, data, root, args)
    assert row["rc"] == 0, row.get("error")
    assert row["peak_gb"] > 1.0 and row["step_s"] > 0
    assert abs(row["plan_error"]) <= 0.25, row
