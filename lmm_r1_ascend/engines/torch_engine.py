"""The single-process training engine: AdamW on the trainable parameters, an LR schedule,
gradient clipping, and a state dict that resumes exactly.

One engine per trained model (actor, critic). The trainer calls
`backward(loss)` once per micro-batch (losses already carry the mini-batch normaliser,
see algorithms/aggregation.py), then `step()` once per mini-batch.
"""

from __future__ import annotations

import math

import torch
from transformers import get_scheduler


class TorchEngine:
    """module: the model; lr, betas, weight_decay: AdamW; total_steps: optimizer steps planned
    (for the schedule); scheduler: a transformers scheduler name ("cosine_with_min_lr", "constant", ...)."""

    def __init__(self, module: torch.nn.Module, *, lr: float, betas: tuple[float, float] = (0.9, 0.95),
                 weight_decay: float = 0.0, max_norm: float = 1.0, total_steps: int = 1,
                 scheduler: str = "cosine_with_min_lr", min_lr_ratio: float = 0.1, warmup_ratio: float = 0.03):
        self.module = module
        self.params = [p for p in module.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters (all frozen?)")
        if lr <= 0 or total_steps < 1:
            raise ValueError(f"need lr > 0 and total_steps >= 1, got lr={lr}, total_steps={total_steps}")
        # foreach=False keeps the update a plain per-tensor loop: identical on every device.
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                           foreach=False)
        kwargs = {"min_lr_rate": min_lr_ratio} if scheduler == "cosine_with_min_lr" else {}
        self.scheduler = get_scheduler(scheduler, self.optimizer,
                                       num_warmup_steps=math.ceil(warmup_ratio * total_steps),
                                       num_training_steps=total_steps, scheduler_specific_kwargs=kwargs)
        self.max_norm = max_norm
        self.steps = 0

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        """Clip, update, advance the schedule, zero the gradients. Returns the pre-clip grad norm."""
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm if self.max_norm > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return float(norm)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict:
        """Optimizer, scheduler and step count (the model's weights are saved separately)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps = int(state["steps"])
