"""Training engines by registry (issue 30): the class-level facts each engine owns, and the
one-line hint when distributed.train_engine=deepspeed meets a machine without DeepSpeed."""

from __future__ import annotations

import importlib.util
import random
from types import SimpleNamespace

import pytest
import torch

from lmm_r1_ascend.config.errors import SetupError
from lmm_r1_ascend.engines import DeepSpeedEngine, TorchEngine
from lmm_r1_ascend.engines.registry import TRAIN_ENGINES, train_engine_class
from lmm_r1_ascend.train import main as train_main


def _without_deepspeed(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "deepspeed" else real(name, *a, **k))


def test_every_schema_name_has_an_engine_and_unknown_names_fail():
    import dataclasses
    import typing

    from lmm_r1_ascend.config.schema import DistributedConfig

    hints = typing.get_type_hints(DistributedConfig)
    assert {f.name for f in dataclasses.fields(DistributedConfig)} >= {"train_engine"}
    assert set(typing.get_args(hints["train_engine"])) == set(TRAIN_ENGINES)
    assert train_engine_class("torch") is TorchEngine and train_engine_class("deepspeed") is DeepSpeedEngine
    with pytest.raises(ValueError, match="unknown train engine 'fsdp'"):
        train_engine_class("fsdp")


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_engine_facts_follow_the_zero_stage(zero):
    dist = SimpleNamespace(zero_stage=zero)
    assert DeepSpeedEngine.describe(dist) == f"deepspeed ZeRO-{zero}" and TorchEngine.describe(dist) == "torch"
    assert DeepSpeedEngine.shards_weights(dist) == (zero == 3) and not TorchEngine.shards_weights(dist)
    assert DeepSpeedEngine.resumes_on_any_world_size(dist) == (zero != 0)
    assert DeepSpeedEngine.data_parallel and not TorchEngine.data_parallel


def test_checkpoint_bytes_match_the_saved_state_of_a_torch_engine(tmp_path):
    """TorchEngine's checkpoint_bytes_per_param against what it really saves: weights + AdamW moments."""
    n = random.randint(200, 400)
    net = torch.nn.Linear(n, 1, bias=False)
    eng = TorchEngine(net, lr=1e-3)
    net(torch.randn(2, n)).sum().backward()
    eng.step()
    moments = sum(t.numel() * t.element_size() for s in eng.optimizer.state.values()
                  for t in s.values() if t.dim())
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    assert TorchEngine.checkpoint_bytes_per_param(4) * n == weights + moments


def test_a_missing_deepspeed_is_one_setup_error(monkeypatch):
    _without_deepspeed(monkeypatch)
    optim = SimpleNamespace(adam_betas=(0.9, 0.95), weight_decay=0.0, max_norm=1.0, lr_scheduler="constant",
                            min_lr_ratio=0.1, lr_warmup_ratio=0.0)
    with pytest.raises(SetupError, match=r"needs DeepSpeed, which is not installed: pip install"):
        DeepSpeedEngine.from_config(torch.nn.Linear(2, 1), optim, SimpleNamespace(zero_stage=2), lr=1e-3,
                                    total_steps=1)
    TorchEngine.require()  # nothing to probe


def test_a_run_without_deepspeed_ends_in_the_hint_line(monkeypatch, capsys, tmp_path):
    """The whole CLI: the hint reaches the user as one error line, before any rank starts."""
    _without_deepspeed(monkeypatch)
    rc = train_main(["--recipe", "demo_fre", "model.pretrain=tiny-qwen2", "data.prompt_data=[demo:arithmetic]",
                     "distributed.train_engine=deepspeed", f"output_dir={tmp_path}", "trainer.max_steps=1"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and "needs DeepSpeed, which is not installed" in errors[0], (rc, err)
