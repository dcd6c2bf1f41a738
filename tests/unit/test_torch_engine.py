"""TorchEngine: the shared engine interface on one process (save/load, full weights)."""

from __future__ import annotations

import math

import pytest
import torch

from lmm_r1_ascend.engines import TorchEngine, TrainingEngine, build_optimizer

KW = dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.01, max_norm=0.5, total_steps=5, warmup_ratio=0.2)


def _net() -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    net.register_buffer("offset", torch.randn(2))
    return net


def _step(engine: TorchEngine, x: torch.Tensor, y: torch.Tensor, parts: int = 2) -> float:
    for k, idx in enumerate(torch.arange(len(x)).chunk(parts)):
        loss = ((engine.module(x[idx]) + engine.module.offset - y[idx]) ** 2).sum() / len(x)
        engine.backward(loss, last=k == parts - 1)
    return engine.step()


def test_step_returns_the_pre_clip_norm_of_the_accumulated_gradient(rng_seed):
    net = _net()
    eng = TorchEngine(net, **{**KW, "warmup_ratio": 0.0})  # no warmup: the first step moves the weights
    x, y = torch.randn(6, 4), torch.randn(6, 2)
    before = [p.detach().clone() for p in net.parameters()]
    # Reference: the gradient of the whole-batch loss, by autograd on a copy.
    ref = _net()
    ref.load_state_dict(net.state_dict())
    loss = ((ref(x) + ref.offset - y) ** 2).sum() / len(x)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    want = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    # float32 gradients summed over 2 micro-batches vs one pass: a few ulps of relative difference.
    assert _step(eng, x, y) == pytest.approx(want, rel=1e-5)
    assert eng.steps == 1 and all(p.grad is None for p in net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_save_load_resumes_exactly(tmp_path, rng_seed):
    x, y = torch.randn(6, 4), torch.randn(6, 2)
    net = _net()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    eng = TorchEngine(net, **KW)
    _step(eng, x, y)
    eng.save(tmp_path / "ckpt")
    weights, lr1 = eng.full_state_dict(), eng.lr
    norm = _step(eng, x * 2, y)
    after = eng.full_state_dict()

    net2 = _net()
    net2.load_state_dict(start)  # other optimizer history: only load() brings it back
    eng2 = TorchEngine(net2, **KW)
    eng2.load_full_state_dict(weights)
    eng2.load(tmp_path / "ckpt")
    assert eng2.steps == 1 and eng2.lr == lr1 != eng.lr  # warmup then cosine: the lr moves every step
    # Same state, same inputs, same ops: bit-identical.
    assert _step(eng2, x * 2, y) == norm
    assert all(torch.equal(after[k], v) for k, v in eng2.full_state_dict().items())
    assert eng2.lr == eng.lr and eng2.steps == eng.steps == 2


def test_state_dict_round_trip_still_works(rng_seed):
    eng = TorchEngine(_net(), **KW)
    _step(eng, torch.randn(4, 4), torch.randn(4, 2))
    eng2 = TorchEngine(_net(), **KW)
    eng2.load_state_dict(eng.state_dict())
    assert eng2.steps == 1 and eng2.lr == eng.lr


def test_full_weights_are_detached_cpu_copies_of_every_entry(rng_seed):
    net = _net()
    eng = TorchEngine(net, **KW)
    full = eng.full_state_dict()
    assert list(full) == list(net.state_dict())  # parameters and the buffer
    assert all(not t.requires_grad and t.device.type == "cpu" for t in full.values())
    full["0.weight"].add_(1.0)  # a copy: the model is untouched
    assert not torch.equal(full["0.weight"], net[0].weight)
    it = list(eng.iter_full_weights(bucket_bytes=1))
    assert [n for n, _ in it] == list(full)
    assert all(torch.equal(t, net.state_dict()[n]) and not t.requires_grad for n, t in it)
    eng.load_full_state_dict(full)
    assert torch.equal(net[0].weight, full["0.weight"])


def test_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="engine.pt"):
        TorchEngine(_net(), **KW).load(tmp_path)
    frozen = _net().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        TorchEngine(frozen, **KW)
    with pytest.raises(ValueError, match="lr > 0"):
        build_optimizer(list(_net().parameters()), lr=0.0, betas=(0.9, 0.95), weight_decay=0.0, total_steps=1,
                        scheduler="constant", min_lr_ratio=0.1, warmup_ratio=0.0)


def test_satisfies_the_engine_interface():
    assert isinstance(TorchEngine(_net(), **KW), TrainingEngine)
