"""The interface every training engine offers the workers (TorchEngine, DeepSpeedEngine).

One optimizer step per mini-batch, accumulated over micro-batches:

    for k, micro in enumerate(plan):                  # the same count on every rank
        loss = loss_of(engine.module(micro))           # normalised by the WHOLE mini-batch
        engine.backward(loss, last=k == len(plan) - 1)
    grad_norm = engine.step()

Collective methods (DeepSpeed: every rank calls them, in the same order) are marked so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class TrainingEngine(Protocol):
    @property
    def module(self) -> torch.nn.Module:
        """What to call for training forwards (DeepSpeed: its engine object, which runs the model)."""

    def backward(self, loss: torch.Tensor, *, last: bool = True) -> None:
        """Accumulate the gradient of a scalar loss; ``last`` marks the mini-batch's final micro-batch."""

    def step(self) -> float:
        """Clip, optimizer step, LR schedule step, zero grads (collective); the global pre-clip grad norm."""

    @property
    def lr(self) -> float:
        """The learning rate the next step uses."""

    @property
    def steps(self) -> int:
        """Optimizer steps taken."""

    def save(self, directory: Path) -> None:
        """Optimizer, schedule and step state into ``directory`` (collective)."""

    def load(self, directory: Path) -> None:
        """Restore what ``save`` wrote (collective)."""

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's full state dict as CPU copies in the training dtype (collective)."""

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load full weights (collective)."""

    def iter_full_weights(self, bucket_bytes: int = 256 << 20) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full tensor) per state-dict entry, gathered in buckets (collective: iterate to the end)."""
