"""The single-process training engine: AdamW on the trainable parameters, an LR schedule,
gradient clipping, and a state that resumes exactly.

One engine per trained model (actor, critic). The trainer calls
`backward(loss)` once per micro-batch (losses already carry the mini-batch normaliser,
see algorithms/aggregation.py), then `step()` once per mini-batch. The interface is the
one of engines/base.py, shared with the DeepSpeed engine.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lmm_r1_ascend.engines.base import nonfinite_names, nonfinite_weights_error, poison_nonfinite

if TYPE_CHECKING:
    from lmm_r1_ascend.config.schema import DistributedConfig, OptimConfig

ENGINE_FILE = "engine.pt"


def build_optimizer(params: list[torch.nn.Parameter], *, lr: float, betas: tuple[float, float],
                    weight_decay: float, total_steps: int, scheduler: str, min_lr_ratio: float,
                    warmup_ratio: float) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW(foreach=False) over ``params`` and its transformers LR schedule (both engines use this).

    total_steps: optimizer steps planned; warmup is ceil(warmup_ratio * total_steps) steps.
    scheduler: a transformers scheduler name ("cosine_with_min_lr", "constant", ...).
    """
    if not params:
        raise ValueError("the model has no trainable parameters (all frozen?)")
    if lr <= 0 or total_steps < 1:
        raise ValueError(f"need lr > 0 and total_steps >= 1, got lr={lr}, total_steps={total_steps}")
    from transformers import get_scheduler  # here: the planner reads this module's class facts without it

    # foreach=False keeps the update a plain per-tensor loop: identical on every device.
    optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, foreach=False)
    kwargs = {"min_lr_rate": min_lr_ratio} if scheduler == "cosine_with_min_lr" else {}
    schedule = get_scheduler(scheduler, optimizer, num_warmup_steps=math.ceil(warmup_ratio * total_steps),
                             num_training_steps=total_steps, scheduler_specific_kwargs=kwargs)
    return optimizer, schedule


def optim_kwargs(optim: OptimConfig, *, lr: float, total_steps: int) -> dict:
    """The engine keyword arguments of the optim config section (both engines take them)."""
    return dict(lr=lr, betas=optim.adam_betas, weight_decay=optim.weight_decay, max_norm=optim.max_norm,
                total_steps=total_steps, scheduler=optim.lr_scheduler, min_lr_ratio=optim.min_lr_ratio,
                warmup_ratio=optim.lr_warmup_ratio)


class TorchEngine:
    """module: the model; lr, betas, weight_decay: AdamW; total_steps: optimizer steps planned
    (for the schedule); scheduler: a transformers scheduler name ("cosine_with_min_lr", "constant", ...);
    max_norm: clip the global grad norm to it (<= 0: no clipping).

    Class-level facts (the same names on every engine of engines/registry.py; the planner, the
    cluster and the resume check read them without building an engine):
    data_parallel: trains on several ranks (needs a process group); here one rank only.
    """

    name = "torch"
    data_parallel = False

    @staticmethod
    def require() -> None:
        """Nothing to probe: torch is always there."""

    @staticmethod
    def describe(dist: DistributedConfig) -> str:
        """The engine as the start-up line names it (dist: the distributed config section)."""
        return "torch"

    @staticmethod
    def shards_weights(dist: DistributedConfig) -> bool:
        """Whether each rank holds only a shard of the weights (never here)."""
        return False

    @staticmethod
    def resumes_on_any_world_size(dist: DistributedConfig) -> bool:
        return True

    @staticmethod
    def checkpoint_bytes_per_param(dtype_bytes: int) -> int:
        """Bytes per parameter of a checkpoint: the weights and AdamW's two moments, all in the model dtype."""
        return 3 * dtype_bytes

    @staticmethod
    def model_states(n: int, trainable: int, *, dist: DistributedConfig, devices: int, b: int, largest: int
                     ) -> tuple[dict[str, float], float]:
        """Planner: (weights, gradients, optimizer) bytes on one device, and bytes offloaded to the
        host, for n parameters (trainable of them) in a b-byte dtype: all in the model dtype."""
        return {"weights": n * b, "gradients": trainable * b, "optimizer": 2 * trainable * b}, 0.0

    @staticmethod
    def library_estimate(params: int, largest_layer: int, devices: int,
                         dist: DistributedConfig) -> dict[str, float]:
        """Planner: an engine library's own estimate to compare with (none for plain torch)."""
        return {}

    @staticmethod
    def moments_share(b: int) -> float:
        """Planner: the part of the optimizer bytes that are AdamW moments (created at the first step)."""
        return 1.0

    @classmethod
    def from_config(cls, module: torch.nn.Module, optim: OptimConfig, dist: DistributedConfig, *, lr: float,
                    total_steps: int) -> TorchEngine:
        """The engine for `module` from the optim and distributed config sections."""
        return cls(module, **optim_kwargs(optim, lr=lr, total_steps=total_steps))

    def __init__(self, module: torch.nn.Module, *, lr: float, betas: tuple[float, float] = (0.9, 0.95),
                 weight_decay: float = 0.0, max_norm: float = 1.0, total_steps: int = 1,
                 scheduler: str = "cosine_with_min_lr", min_lr_ratio: float = 0.1, warmup_ratio: float = 0.03):
        self.module = module
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = build_optimizer(
            self.params, lr=lr, betas=betas, weight_decay=weight_decay, total_steps=total_steps,
            scheduler=scheduler, min_lr_ratio=min_lr_ratio, warmup_ratio=warmup_ratio)
        self.max_norm = max_norm
        self.steps = 0
        self.skipped_steps = 0  # steps with a non-finite loss or grad norm: nothing applied
        self.last_step_skipped = False

    # save()/load() carry the optimizer state only; weights travel through full_state_dict().
    state_includes_weights = False

    def backward(self, loss: torch.Tensor, *, last: bool = True) -> None:
        """Accumulate the gradient of ``loss`` (a scalar; a non-finite one poisons the step, see
        engines/base.py). ``last`` is accepted for the shared interface."""
        poison_nonfinite(loss).backward()

    def step(self) -> float:
        """Clip, update, advance the schedule, zero the gradients. Returns the pre-clip grad norm.
        A non-finite norm (or loss) skips the update and the schedule step (engines/base.py)."""
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.max_norm if self.max_norm > 0 else float("inf")))
        self.last_step_skipped = not math.isfinite(norm)
        if self.last_step_skipped:
            self.skipped_steps += 1
        else:
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return norm

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict:
        """Optimizer, scheduler and step count (the model's weights are saved separately)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "steps": self.steps,
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps = int(state["steps"])
        self.skipped_steps = int(state.get("skipped_steps", 0))  # absent in states saved before the guard

    def save(self, directory: str | Path) -> None:
        """Write ``state_dict()`` to ``directory/engine.pt`` (the directory is created). NonFiniteError,
        and nothing written, when a weight of the model is NaN/inf."""
        directory = Path(directory)
        bad = nonfinite_names(self.module.state_dict().items())
        if bad:
            raise nonfinite_weights_error(bad, directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), directory / ENGINE_FILE)

    def load(self, directory: str | Path) -> None:
        path = Path(directory) / ENGINE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no engine state at {path}: was it saved by TorchEngine.save()?")
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict as CPU copies, in the dtype it trains in."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()}

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)

    def iter_full_weights(self, bucket_bytes: int = 256 << 20) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) for every entry of the model's state dict, detached, on the model's device.
        ``bucket_bytes`` is accepted for the shared interface (nothing to gather here)."""
        for name, tensor in self.module.state_dict().items():
            yield name, tensor.detach()
