"""Non-finite values never reach the weights: an optimizer step whose loss or gradient norm is
NaN/inf is skipped (no update, no schedule step, counted), a checkpoint is never written from
non-finite weights, and non-finite rewards score 0 with status nonfinite_reward."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.multiprocessing as mp

from lmm_r1_ascend.distributed.net import free_port
from lmm_r1_ascend.engines import TorchEngine
from lmm_r1_ascend.engines.base import NonFiniteError

KW = dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.01, max_norm=0.5, total_steps=5, warmup_ratio=0.0)


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _loss(net, poison: str | None = None) -> torch.Tensor:
    x, y = torch.ones(3, 4), torch.zeros(3, 2)
    out = net(x)
    if poison == "grad":  # NaN gradients (and loss)
        out = out * float("nan")
    loss = ((out - y) ** 2).mean()
    if poison == "loss":  # a non-finite loss whose gradient alone would be finite
        loss = loss + torch.tensor(float("inf"))
    return loss


def _snapshot(eng: TorchEngine):
    return ([p.detach().clone() for p in eng.params], copy.deepcopy(eng.optimizer.state_dict()),
            copy.deepcopy(eng.scheduler.state_dict()), eng.lr)


def _same_state(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            if not isinstance(y, dict) or not _same_state(x, y):
                return False
        elif isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize("poison", ["grad", "loss"])
def test_torch_engine_skips_a_nonfinite_step_and_keeps_applying_finite_ones(poison):
    eng = TorchEngine(_net(), **KW)
    eng.backward(_loss(eng.module))
    assert eng.step() > 0 and not eng.last_step_skipped  # one finite step: optimizer state exists
    params, opt, sched, lr = _snapshot(eng)

    eng.backward(_loss(eng.module), last=False)
    eng.backward(_loss(eng.module, poison))  # one poisoned micro-batch of two
    norm = eng.step()
    assert not torch.isfinite(torch.tensor(norm)) and eng.last_step_skipped and eng.skipped_steps == 1
    assert all(torch.equal(a, p) for a, p in zip(params, eng.params)), "a skipped step moved the weights"
    assert _same_state(opt, eng.optimizer.state_dict()), "a skipped step changed the optimizer state"
    assert _same_state(sched, eng.scheduler.state_dict()) and eng.lr == lr, "the schedule advanced on a skip"
    assert all(p.grad is None for p in eng.params), "the poisoned gradients were not cleared"

    eng.backward(_loss(eng.module))
    assert torch.isfinite(torch.tensor(eng.step())) and not eng.last_step_skipped and eng.skipped_steps == 1
    assert any(not torch.equal(a, p) for a, p in zip(params, eng.params)), "finite steps must still apply"
    assert eng.lr != lr


def test_skip_count_survives_save_and_load(tmp_path):
    eng = TorchEngine(_net(), **KW)
    eng.backward(_loss(eng.module, "grad"))
    eng.step()
    eng.save(tmp_path)
    other = TorchEngine(_net(), **KW)
    other.load(tmp_path)
    assert other.skipped_steps == 1 and other.steps == 1


def test_torch_engine_refuses_to_save_nonfinite_weights(tmp_path):
    eng = TorchEngine(_net(), **KW)
    with torch.no_grad():
        eng.params[0][0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="non-finite"):
        eng.save(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


class Out:
    """A stand-in for a role's loss output: the loss tensor and its metrics."""

    def __init__(self, loss):
        self.loss = loss

    def metrics(self):
        return {"loss": float(self.loss.detach())}


class Micro:
    class batch:  # noqa: N801 - a stand-in for ExperienceBatch
        action_counts = [1]


def test_roles_report_skipped_steps():
    from lmm_r1_ascend.workers import roles

    eng = TorchEngine(_net(), **KW)
    clean = roles._train_micro_batches(eng, [Micro(), Micro()], None, True, lambda m: Out(_loss(eng.module)), "actor")
    assert clean.result()["actor/skipped_steps"] == 0.0
    bad = iter([_loss(eng.module), _loss(eng.module, "grad")])
    skipped = roles._train_micro_batches(eng, [Micro(), Micro()], None, True, lambda m: Out(next(bad)), "actor")
    assert skipped.result()["actor/skipped_steps"] == 1.0


def test_the_test_wrapper_plants_nan_into_the_named_step_only(monkeypatch):
    """tests/fault_hooks.plant_nan_loss: the named role's step 2 is skipped; step 1 and 3 and other roles are not."""
    from fault_hooks import plant_nan_loss

    from lmm_r1_ascend.workers import roles

    plant_nan_loss(monkeypatch, {"actor": {2}})
    skipped = {}
    for prefix in ("actor", "critic"):
        eng = TorchEngine(_net(), **KW)
        skipped[prefix] = [roles._train_micro_batches(eng, [Micro(), Micro()], None, True,
                                                      lambda m: Out(_loss(eng.module)), prefix
                                                      ).result()[f"{prefix}/skipped_steps"] for _ in range(3)]
    assert skipped == {"actor": [0.0, 1.0, 0.0], "critic": [0.0, 0.0, 0.0]}


def test_nonfinite_rewards_score_zero_with_a_status():
    from lmm_r1_ascend.rewards.scoring import reward_metrics, score_outputs
    from lmm_r1_ascend.rewards.types import RewardOutput

    outs = [RewardOutput(total=1.0, components={"accuracy": 1.0}, status="correct"),
            RewardOutput(total=float("nan"), components={"accuracy": 0.0}, status="correct"),
            RewardOutput(total=0.5, components={"accuracy": float("inf")}, status="wrong")]
    scored = score_outputs(outs)
    assert scored.totals.tolist() == [1.0, 0.0, 0.0]
    assert scored.info["reward_accuracy"].tolist() == [1.0, 0.0, 0.0]
    assert scored.statuses == ["correct", "nonfinite_reward", "nonfinite_reward"]
    assert "total=nan" in scored.outputs[1].detail and "accuracy=inf" in scored.outputs[2].detail

    class Sample:
        class prompt:  # noqa: N801
            datasource = "x"

    m = reward_metrics([Sample()] * 3, scored)
    assert m["reward/status/nonfinite_reward"] == pytest.approx(2 / 3)
    assert torch.isfinite(torch.tensor(m["reward/mean"]))


# ---------------------------------------------------------------- DeepSpeed, one rank
def _ds_run(rank: int, port: int, out: str) -> None:  # spawned: one process, a gloo world of 1
    os.environ.update(DS_ACCELERATOR="cpu", LOCAL_RANK="0", RANK="0", WORLD_SIZE="1")
    import logging

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    from lmm_r1_ascend.engines.deepspeed_engine import DeepSpeedEngine

    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    res = {}
    for stage in (0, 2):
        eng = DeepSpeedEngine(_net(), zero_stage=stage, **KW)
        rows = []
        for poison in (None, "grad", "loss", None):
            eng.backward(_loss(eng.module), last=False)
            eng.backward(_loss(eng.module, poison), last=True)
            norm = eng.step()
            rows.append({"norm": norm, "lr": eng.lr, "skipped": eng.last_step_skipped,
                         "weights": {k: v.clone() for k, v in eng.full_state_dict().items()}})
        with torch.no_grad():
            next(eng.unwrapped.parameters()).view(-1)[0] = float("nan")
        try:
            eng.save(os.path.join(out, f"z{stage}"))
            saved = "saved"
        except NonFiniteError as exc:
            saved = str(exc)
        res[stage] = {"rows": rows, "skipped_steps": eng.skipped_steps, "save": saved,
                      "saved_dir": os.path.exists(os.path.join(out, f"z{stage}", "engine"))}
    torch.save(res, os.path.join(out, "res.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("stage", [0, 2])
def test_deepspeed_skips_nonfinite_steps_single_rank(tmp_path_factory, stage):
    pytest.importorskip("deepspeed")
    out = tmp_path_factory.getbasetemp() / "ds_nonfinite"
    if not (out / "res.pt").exists():
        out.mkdir(exist_ok=True)
        mp.start_processes(_ds_run, args=(free_port(), str(out)), nprocs=1, start_method="spawn")
    res = torch.load(out / "res.pt", weights_only=False)[stage]
    rows = res["rows"]
    assert [r["skipped"] for r in rows] == [False, True, True, False]
    assert res["skipped_steps"] == 2
    for k in rows[0]["weights"]:  # the two skipped steps left weights and lr as the first step did
        assert torch.equal(rows[0]["weights"][k], rows[1]["weights"][k])
        assert torch.equal(rows[0]["weights"][k], rows[2]["weights"][k])
    assert rows[1]["lr"] == rows[0]["lr"] == rows[2]["lr"] and rows[3]["lr"] != rows[0]["lr"]
    assert any(not torch.equal(rows[0]["weights"][k], rows[3]["weights"][k]) for k in rows[0]["weights"])
    assert all(torch.isfinite(v).all() for v in rows[3]["weights"].values())
    assert "non-finite" in res["save"] and not res["saved_dir"]
