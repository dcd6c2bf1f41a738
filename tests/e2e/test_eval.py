"""Evaluation end to end on CPU: the eval CLI on the shipped warm-up model against the figures
scripts/build_demo_model.py recorded for it, compare's table and PNG, and validation during
training (eval rows at the right steps, identical after a resume, best/ only on improvement)."""

from __future__ import annotations

import json

import pytest

from lmm_r1_ascend.config import load_config
from lmm_r1_ascend.demo.data import prepare_demo_data
from lmm_r1_ascend.eval import main as eval_main
from lmm_r1_ascend.trainer.ppo import PPOTrainer

WARMUP = "lmm_r1_ascend/demo/assets/fre-warmup/warmup.json"


def _eval(tmp_path, name, *args):
    out = tmp_path / name
    assert eval_main(["--model", "demo-fre", "--data", "demo:arithmetic-eval", "--limit", "64",
                      "--max-new-tokens", "48", "--out", str(out), "--no-progress", *args]) == 0
    return json.loads((out / "summary.json").read_text()), [json.loads(x) for x in (out / "samples.jsonl").open()]


def test_eval_cli_reproduces_the_warmup_models_recorded_figures(tmp_path, capsys):
    from pathlib import Path

    recorded = json.loads((Path(__file__).resolve().parents[2] / WARMUP).read_text())["eval"]
    greedy, rows = _eval(tmp_path, "greedy")
    # greedy decoding is deterministic: the same 64 prompts give exactly the recorded accuracy (18/64)
    assert greedy["figures"]["all"]["accuracy"] == pytest.approx(recorded["greedy_accuracy"], abs=1e-9)
    assert len(rows) == 64 and {"prompt", "response", "label", "status", "correct", "answer"} <= rows[0].keys()
    assert greedy["stamp"]["model_hash"] and greedy["stamp"]["data"][0]["sha256"]
    assert "accuracy" in capsys.readouterr().out
    sampled, rows = _eval(tmp_path, "sampled", "--n", "8", "--temperature", "1.0")
    f = sampled["figures"]["all"]
    assert len(rows) == 512 and f["n_prompts"] == 64
    # Another RNG stream than the recording's: per-prompt pass@8 is a Bernoulli with p ~ 0.75 over
    # 64 prompts (std ~0.054), pass@1 averages 512 samples clustered in 64 prompts (std ~0.03);
    # the tolerances are ~2.5 std.
    assert f["pass@1"] == pytest.approx(recorded["pass@1"], abs=0.08)
    assert f["pass@8"] == pytest.approx(recorded["pass@8"], abs=0.14)
    assert f["pass@1"] <= f["pass@2"] <= f["pass@4"] <= f["pass@8"] and f["format_rate"] > 0.95
    assert f["maj@1"] == pytest.approx(f["pass@1"])  # one vote is one sample

    png = tmp_path / "table.png"
    from lmm_r1_ascend.eval import main

    assert main(["compare", str(tmp_path / "greedy"), str(tmp_path / "sampled"), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| benchmark | greedy | sampled |" in out and "(" in out
    assert png.stat().st_size > 1000


def test_eval_cli_errors_are_one_line(tmp_path, capsys):
    assert eval_main(["--model", "demo-fre", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)]) == 2
    assert "data file not found" in capsys.readouterr().err
    assert eval_main(["compare", str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().err


SMALL = ["device=cpu", "rollout.rollout_batch_size=2", "algorithm.n_samples_per_prompt=4", "trainer.train_batch_size=8",
         "trainer.max_steps=3", "trainer.save_steps=1", "trainer.tensorboard=false", "trainer.save_hf=false",
         "reward.workers=1", "trainer.eval_steps=1", "trainer.eval_before_train=true", "eval.limit=8",
         "eval.n_samples=2", "trainer.best_metric=eval/all/accuracy", "optim.actor_lr=1e-3"]


def _eval_rows(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("eval/")} for r in rows if "eval/all/accuracy" in r}


def test_validation_during_training_resumes_exactly_and_keeps_the_best(tmp_path):
    cfg = lambda out: prepare_demo_data(load_config("demo_fre", overrides=[*SMALL, f"output_dir={out}"]))  # noqa: E731
    quiet = dict(log=lambda s: None)
    PPOTrainer(cfg(tmp_path / "a"), **quiet).fit(progress=False)
    straight = _eval_rows(tmp_path / "a")
    assert sorted(straight) == [0, 1, 2, 3]  # before training, then every step
    for row in straight.values():
        assert {"eval/all/pass@1", "eval/all/pass@2", "eval/all/maj@2", "eval/demo_arithmetic/accuracy",
                "eval/all/response_length"} <= row.keys()
    values = [straight[s]["eval/all/accuracy"] for s in range(4)]
    best = json.loads((tmp_path / "a" / "best" / "best.json").read_text())
    assert best["value"] == max(values) and best["step"] == values.index(max(values))  # first maximum: strict gains only
    assert (tmp_path / "a" / "best" / "model.safetensors").exists()

    PPOTrainer(cfg(tmp_path / "b"), **quiet).fit(progress=False, stop_after=1)
    PPOTrainer(cfg(tmp_path / "b"), **quiet).fit(progress=False)
    resumed = _eval_rows(tmp_path / "b")
    assert resumed.keys() == straight.keys()
    for step in straight:
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6, abs=1e-9), step
    assert json.loads((tmp_path / "b" / "best" / "best.json").read_text()) == best
