"""DeepSpeedEngine under ZeRO 0-3 equals a single-process TorchEngine on the whole mini-batch.

One spawn (tests/unit/_ds_spawn.py) runs a gloo world of 2 ranks (DS_ACCELERATOR=cpu) and an
independent world of 1; this process computes the reference with TorchEngine and asserts.
Each rank trains on half of every mini-batch, split into an UNEQUAL number of real
micro-batches padded with zero-weighted dummies to the same count, with losses normalised
by the global mini-batch size: the engine's world-size factor must turn DeepSpeed's rank
average into the single-process gradient.

Adam is nearly invariant to a uniform gradient scale, so the parameters alone would not see
a wrong world-size factor: the grad norms (compared at every step) do.
"""

from __future__ import annotations

import os
import random

import pytest
import torch
import torch.multiprocessing as mp

import _ds_spawn as sp
from lmm_r1_ascend.distributed.net import free_port
from lmm_r1_ascend.engines import DeepSpeedEngine, TorchEngine, TrainingEngine, deepspeed_config

# float32: DeepSpeed sums the same per-sample terms in another order (micro-batch partial sums,
# a 2-rank all-reduce, /2 then *2 which is exact), ~1e-7 relative per step; 1e-5 leaves room for
# 3 Adam steps while a missing micro-batch (>= 1/12 of the gradient) or a wrong scale is >= 1e-2 off.
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    seed = int(os.environ.get("LMM_R1_TEST_SEED", random.randrange(2**31)))
    print(f"[seed] test_deepspeed_engine: LMM_R1_TEST_SEED={seed}")
    out = tmp_path_factory.mktemp("ds")
    mp.start_processes(sp.run, args=(3, (free_port(), free_port()), seed, str(out)), nprocs=3,
                       start_method="spawn")
    return seed, [torch.load(out / f"proc{p}.pt", weights_only=False) for p in range(3)]


def reference(seed: int, steps: int = sp.STEPS) -> list[dict]:
    """TorchEngine on the whole mini-batch, one backward per step."""
    net = sp.TinyNet(seed)
    eng = TorchEngine(net, **sp.KW)
    rows = []
    for s in range(steps):
        x, y, w = sp.make_data(seed, s)
        eng.backward(sp.minibatch_loss(net(x), y, w))
        norm = eng.step()
        rows.append({"norm": norm, "lr": eng.lr, "steps": eng.steps, "state": eng.full_state_dict()})
    return rows


def _assert_rows_match(got: list[dict], want: list[dict], rtol: float = RTOL, atol: float = ATOL,
                       norm_rtol: float = RTOL) -> None:
    assert len(got) == len(want)
    for s, (g, w) in enumerate(zip(got, want)):
        assert g["steps"] == w["steps"] and g["lr"] == pytest.approx(w["lr"], rel=1e-12), f"step {s}"
        assert g["norm"] == pytest.approx(w["norm"], rel=norm_rtol), f"step {s}: grad norm"
        assert list(g["state"]) == list(w["state"]), f"step {s}: state-dict keys"
        for k in w["state"]:
            torch.testing.assert_close(g["state"][k].float(), w["state"][k], rtol=rtol, atol=atol,
                                       msg=lambda m, k=k, s=s: f"step {s}, {k}: {m}")


@pytest.mark.parametrize("name", ["z0", "z1", "z2", "z3", "z2_offload", "z3_offload"])
def test_world2_matches_single_process(spawned, name):
    seed, procs = spawned
    want = reference(seed)
    _assert_rows_match(procs[0]["runs"][name], want)
    # Both ranks hold the same replica and report the same norm.
    for a, b in zip(procs[0]["runs"][name], procs[1]["runs"][name]):
        assert a["norm"] == b["norm"]
        assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    # Clipping is exercised (the norms here are ~5-30, max_norm 1.5).
    assert any(r["norm"] > sp.KW["max_norm"] for r in want)


def test_world1_matches_single_process(spawned):
    seed, procs = spawned
    assert procs[2]["world_size"] == 1
    _assert_rows_match(procs[2]["runs"]["z2_ws1"], reference(seed))


def test_bf16_trains_close_to_fp32(spawned):
    seed, procs = spawned
    got, want = procs[0]["runs"]["z2_bf16"], reference(seed)
    assert procs[0]["bf16_module_dtype"] == "torch.bfloat16"
    assert all(t.dtype == torch.bfloat16 for r in got for k, t in r["state"].items() if "scale" not in k)
    # bf16 weights are the fp32 master weights rounded to 8 significant bits (relative error <= 2^-9);
    # bf16 compute moves the Adam updates slightly (observed <= 2e-3 absolute over 3 steps of lr 1e-2)
    # and the grad norm by ~0.2%. rtol 2^-7 (4x the rounding), atol 5e-3 and a 1% norm tolerance
    # leave >= 2x margin; a lost micro-batch changes the norm by >= 8% and moves weights by ~lr.
    _assert_rows_match(got, want, rtol=2**-7, atol=5e-3, norm_rtol=1e-2)


@pytest.mark.parametrize("name", sp.SAVE_CONFIGS)
def test_save_load_resumes_exactly(spawned, name):
    seed, procs = spawned
    run, resumed = procs[0]["runs"][name], procs[0]["resumed"][name]
    assert resumed["steps"] == sp.SAVE_AFTER
    assert resumed["lr"] == run[sp.SAVE_AFTER - 1]["lr"]
    # Same state, same inputs, same reduction order: bit-identical.
    for g, w in zip(resumed["rows"], run[sp.SAVE_AFTER:]):
        assert g["norm"] == w["norm"] and g["lr"] == w["lr"] and g["steps"] == w["steps"]
        assert all(torch.equal(g["state"][k], w["state"][k]) for k in w["state"])


def test_iter_full_weights_zero3_in_buckets(spawned):
    seed, procs = spawned
    p0 = procs[0]
    names = [n for n, _ in p0["z3_iter"]]
    assert names == list(sp.TinyNet(0).state_dict())  # every parameter and the buffer, in order
    # 256-byte buckets: fc1.weight (512 B) | fc1.bias + fc2.weight (64 + 192 B) | fc2.bias + the
    # buffer (buffers are not partitioned, so that gather holds one parameter).
    assert p0["z3_gathers"] == [1, 2, 1]
    last = p0["runs"]["z3"][-1]["state"]
    for n, t in p0["z3_iter"]:
        assert torch.equal(t, last[n]), n
    for n, t in procs[1]["z3_iter"]:
        assert torch.equal(t, last[n]), n
    assert p0["z3_module_dtype"] == "torch.float32"


@pytest.mark.parametrize("stage", [2, 3])
def test_load_full_state_dict_then_step(spawned, stage):
    # The fresh engine had other weights; after loading, one step must equal the reference's
    # first step, so the optimizer's master weights followed the loaded weights.
    seed, procs = spawned
    _assert_rows_match(procs[0][f"z{stage}_loaded"], reference(seed, steps=1))


def test_deepspeed_averages_over_ranks_without_the_world_factor(spawned):
    seed, procs = spawned
    # loss_scale_world=False: the gradient is the rank mean = half the mini-batch gradient.
    assert procs[0]["z2_mean_norm"] == pytest.approx(reference(seed, steps=1)[0]["norm"] / 2, rel=RTOL)


def test_misuse_gives_clear_errors(spawned):
    _, procs = spawned
    err = procs[0]["errors"]
    assert err == procs[1]["errors"]
    assert err["wrong_stage_load"].startswith("ValueError") and "same stage and precision" in err["wrong_stage_load"]
    assert err["missing_load"].startswith("FileNotFoundError")
    assert err["step_without_last"].startswith("RuntimeError") and "last=True" in err["step_without_last"]
    assert err["raw_forward"].startswith("RuntimeError") and "engine.module" in err["raw_forward"]
    assert err["backward_after_last"].startswith("RuntimeError") and "step() first" in err["backward_after_last"]
    assert err["bad_bucket"].startswith("ValueError") and "bucket_bytes" in err["bad_bucket"]
    assert err["bad_keys"].startswith("ValueError") and "missing" in err["bad_keys"]


@pytest.mark.parametrize("kwargs, match", [
    ({"zero_stage": 4}, "zero_stage must be 0, 1, 2 or 3"),
    ({"zero_stage": True}, "zero_stage must be"),
    ({"zero_stage": 2, "offload_params": True}, "offload_params needs zero_stage=3"),
    ({"zero_stage": 0, "offload_optimizer": True}, "offload_optimizer needs zero_stage 1, 2 or 3"),
])
def test_bad_configuration_is_a_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeepSpeedEngine(sp.TinyNet(0), lr=1e-3, **kwargs)


def test_needs_ds_accelerator_and_a_process_group(monkeypatch):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    with pytest.raises(RuntimeError, match="DS_ACCELERATOR is not set"):
        DeepSpeedEngine(sp.TinyNet(0), lr=1e-3)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    with pytest.raises(RuntimeError, match="no process group"):
        DeepSpeedEngine(sp.TinyNet(0), lr=1e-3)


def test_config_accumulates_by_hand_with_a_torch_optimizer():
    cfg = deepspeed_config(zero_stage=3, bf16=True, max_norm=0.7, offload_optimizer=True, offload_params=True)
    assert cfg["gradient_accumulation_steps"] == 1 and "optimizer" not in cfg  # no FusedAdam JIT build
    assert cfg["gradient_clipping"] == 0.7 and cfg["bf16"] == {"enabled": True}
    assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert cfg["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert deepspeed_config(zero_stage=1, bf16=False, max_norm=0.0, offload_optimizer=False,
                            offload_params=False)["gradient_clipping"] == 0.0


def test_both_engines_satisfy_the_interface():
    assert isinstance(TorchEngine(sp.TinyNet(0), lr=1e-3), TrainingEngine)
    for name in ("module", "backward", "step", "lr", "steps", "save", "load", "full_state_dict",
                 "load_full_state_dict", "iter_full_weights"):
        assert hasattr(DeepSpeedEngine, name), name
