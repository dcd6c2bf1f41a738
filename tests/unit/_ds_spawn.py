"""Spawned side of tests/unit/test_deepspeed_engine.py (importable by torch.multiprocessing).

One spawn runs 3 processes: ranks 0 and 1 form a gloo world of size 2 (DS_ACCELERATOR=cpu);
process 2 is an independent world of size 1. Each runs every scenario and saves plain
results to ``out_dir/rank{r}.pt``; the test process computes the references and asserts.
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path

import torch

STEPS = 3
N = 12  # samples per mini-batch
# Hyperparameters shared with the reference. The grad norms are ~5-30 with this data, so max_norm
# clips; the cosine schedule with one warmup step changes the lr at every step.
KW = dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.01, max_norm=1.5, total_steps=4,
          scheduler="cosine_with_min_lr", min_lr_ratio=0.1, warmup_ratio=0.25)
# name -> (zero_stage, extra engine kwargs) for the world-size-2 equality runs
CONFIGS = {
    "z0": (0, {}), "z1": (1, {}), "z2": (2, {}), "z3": (3, {}),
    "z2_offload": (2, {"offload_optimizer": True}),
    "z3_offload": (3, {"offload_optimizer": True, "offload_params": True}),
    "z2_bf16": (2, {"bf16": True}),
}
SAVE_AFTER = 2  # save/load configs: save after this many steps, resume and take the rest
SAVE_CONFIGS = ("z2", "z3")


class TinyNet(torch.nn.Module):
    """x float (B, 8) -> float (B, 3); a persistent buffer so state dicts hold a non-parameter."""

    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc1, self.fc2 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.register_buffer("scale", torch.rand(3, generator=g) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x))) * self.scale


def make_data(seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (N, 8), y (N, 3), per-sample weights w (N,) in [0.5, 1.5) for one mini-batch."""
    g = torch.Generator().manual_seed(seed * 1000 + step)
    return torch.randn(N, 8, generator=g), torch.randn(N, 3, generator=g), torch.rand(N, generator=g) + 0.5


def minibatch_loss(out: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted squared error summed over the given samples, over the GLOBAL normaliser N."""
    return (w[:, None] * (out.float() - y) ** 2).sum() / N


def plan(rank: int, world: int, step: int) -> list[tuple[torch.Tensor, float]]:
    """(sample indices, weight) per micro-batch of ``rank``'s shard: the same count on every rank.

    World 2: one rank splits its 6 samples into 3 micro-batches (1, 2, 3), the other runs
    all 6 at once then 2 zero-weighted dummies; the roles swap every step. World 1: 2 unequal parts.
    """
    if world == 1:
        return [(torch.arange(0, 5), 1.0), (torch.arange(5, N), 1.0)]
    lo = torch.arange(rank * 6, rank * 6 + 6)
    if (rank + step) % 2 == 0:
        return [(lo[:1], 1.0), (lo[1:3], 1.0), (lo[3:], 1.0)]
    return [(lo, 1.0), (lo[:2], 0.0), (lo[:1], 0.0)]


def train_steps(engine, seed: int, steps: range, rank: int, world: int, bf16: bool = False) -> list[dict]:
    """Run ``steps``; per step the grad norm, next lr, step count and the full state dict."""
    rows = []
    for s in steps:
        x, y, w = make_data(seed, s)
        parts = plan(rank, world, s)
        for k, (idx, weight) in enumerate(parts):
            xs = x[idx].to(torch.bfloat16) if bf16 else x[idx]
            loss = minibatch_loss(engine.module(xs), y[idx], w[idx] * weight)
            engine.backward(loss, last=k == len(parts) - 1)
        norm = engine.step()
        rows.append({"norm": norm, "lr": engine.lr, "steps": engine.steps, "state": engine.full_state_dict()})
    return rows


def _engine(stage: int, seed: int, **extra):
    from lmm_r1_ascend.engines.deepspeed_engine import DeepSpeedEngine

    return DeepSpeedEngine(TinyNet(seed), zero_stage=stage, **KW, **extra)


def _error(fn) -> str:
    try:
        fn()
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _world2(rank: int, seed: int, out_dir: Path) -> dict:
    import deepspeed

    res: dict = {"runs": {}, "resumed": {}, "errors": {}}
    for name, (stage, extra) in CONFIGS.items():
        eng = _engine(stage, seed, **extra)
        bf16 = bool(extra.get("bf16"))
        res["runs"][name] = train_steps(eng, seed, range(SAVE_AFTER), rank, 2, bf16)
        if name in SAVE_CONFIGS:
            eng.save(out_dir / name)
        res["runs"][name] += train_steps(eng, seed, range(SAVE_AFTER, STEPS), rank, 2, bf16)
        if name == "z3":
            res["z3_module_dtype"] = str(next(eng.unwrapped.parameters()).dtype)
            gathers = []
            real = deepspeed.zero.GatheredParameters

            def counting(params, *a, **k):
                gathers.append(len(params))
                return real(params, *a, **k)

            deepspeed.zero.GatheredParameters = counting
            try:
                res["z3_iter"] = [(n, t.to("cpu", copy=True)) for n, t in eng.iter_full_weights(bucket_bytes=256)]
            finally:
                deepspeed.zero.GatheredParameters = real
            res["z3_gathers"] = gathers
        if name == "z2_bf16":
            res["bf16_module_dtype"] = str(next(eng.unwrapped.parameters()).dtype)
        del eng
    # Fresh engines (another initialisation) resume from the saved state and take the remaining steps.
    for name in SAVE_CONFIGS:
        eng = _engine(CONFIGS[name][0], seed + 1)
        eng.load(out_dir / name)
        res["resumed"][name] = {"steps": eng.steps, "lr": eng.lr,
                                "rows": train_steps(eng, seed, range(SAVE_AFTER, STEPS), rank, 2)}
    # load_full_state_dict into fresh engines, then one step: the master weights must follow too.
    init = TinyNet(seed).state_dict()
    for stage in (2, 3):
        eng = _engine(stage, seed + 2)
        eng.load_full_state_dict(init)
        res[f"z{stage}_loaded"] = train_steps(eng, seed, range(1), rank, 2)
    # DeepSpeed's own semantics: without the world-size factor the gradient is the rank MEAN.
    eng = _engine(2, seed, loss_scale_world=False)
    res["z2_mean_norm"] = train_steps(eng, seed, range(1), rank, 2)[0]["norm"]
    res["errors"] = _error_paths(rank, seed, out_dir)
    return res


def _error_paths(rank: int, seed: int, out_dir: Path) -> dict:
    """Misuse on every rank alike (so no rank waits in a collective): the messages."""
    x, y, w = make_data(seed, 0)
    errors = {}
    eng = _engine(3, seed)
    errors["wrong_stage_load"] = _error(lambda: _engine(2, seed).load(out_dir / "z3"))
    errors["missing_load"] = _error(lambda: eng.load(out_dir / "nothing"))
    eng.backward(minibatch_loss(eng.module(x), y, w), last=False)
    errors["step_without_last"] = _error(eng.step)
    # A forward that bypasses DeepSpeed's engine: ZeRO-3 would overwrite the first gradient.
    errors["raw_forward"] = _error(lambda: eng.backward(minibatch_loss(eng.unwrapped(x), y, w), last=True))
    eng.backward(minibatch_loss(eng.module(x), y, w), last=True)
    errors["backward_after_last"] = _error(lambda: eng.backward(minibatch_loss(eng.module(x), y, w)))
    eng.step()
    errors["bad_bucket"] = _error(lambda: next(eng.iter_full_weights(bucket_bytes=0)))
    errors["bad_keys"] = _error(lambda: eng.load_full_state_dict({"fc1.weight": torch.zeros(16, 8)}))
    return errors


def _world1(seed: int) -> dict:
    eng = _engine(2, seed)
    return {"runs": {"z2_ws1": train_steps(eng, seed, range(STEPS), 0, 1)}, "world_size": eng.world_size}


def run(proc: int, nprocs: int, ports: tuple[int, int], seed: int, out_dir: str) -> None:
    """mp.spawn target: proc 0, 1 -> world 2 on ports[0]; proc 2 -> world 1 on ports[1]."""
    rank, world, port = (proc, 2, ports[0]) if proc < 2 else (0, 1, ports[1])
    os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(seconds=120))
    try:
        from deepspeed.utils import logger

        logger.setLevel(logging.WARNING)
        out = Path(out_dir)
        res = _world2(rank, seed, out / "ckpt") if world == 2 else _world1(seed)
        torch.save(res, out / f"proc{proc}.pt")
    finally:
        torch.distributed.destroy_process_group()
