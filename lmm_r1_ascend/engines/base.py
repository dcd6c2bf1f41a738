"""The interface every training engine offers the workers (TorchEngine, DeepSpeedEngine).

One optimizer step per mini-batch, accumulated over micro-batches:

    for k, micro in enumerate(plan):                  # the same count on every rank
        loss = loss_of(engine.module(micro))           # normalised by the WHOLE mini-batch
        engine.backward(loss, last=k == len(plan) - 1)
    grad_norm = engine.step()

Collective methods (DeepSpeed: every rank calls them, in the same order) are marked so.

Non-finite values: ``backward`` turns a NaN/inf loss into NaN gradients (``poison_nonfinite``), so
the one check in ``step`` on the global grad norm (the same on every data-parallel rank) catches a
bad loss on any rank as well as a bad gradient. Such a step is SKIPPED: gradients cleared, no
optimizer update, the LR schedule does not advance (so a run with skips ends short of the
schedule's last steps), ``steps`` still counts it (as DeepSpeed's global_steps does),
``last_step_skipped`` is True and ``skipped_steps`` counts it. ``save`` refuses non-finite weights
(NonFiniteError, on every rank alike).
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
    def last_step_skipped(self) -> bool:
        """The latest ``step()`` found a non-finite loss or grad norm and applied nothing."""

    @property
    def skipped_steps(self) -> int:
        """Steps skipped so far (counted in ``steps``)."""

    @property
    def lr(self) -> float:
        """The learning rate the next step uses."""

    @property
    def steps(self) -> int:
        """Optimizer steps taken."""

    def save(self, directory: Path) -> None:
        """Optimizer, schedule and step state into ``directory`` (collective); NonFiniteError, and
        nothing written, when a weight is NaN/inf."""

    def load(self, directory: Path) -> None:
        """Restore what ``save`` wrote (collective)."""

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's full state dict as CPU copies in the training dtype (collective)."""

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load full weights (collective)."""

    def iter_full_weights(self, bucket_bytes: int = 256 << 20) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full tensor) per state-dict entry, gathered in buckets (collective: iterate to the end)."""


class NonFiniteError(RuntimeError):
    """NaN/inf where training must not go on: weights about to be saved, or a run of skipped steps."""


def poison_nonfinite(loss: torch.Tensor) -> torch.Tensor:
    """``loss`` itself when finite, else a NaN whose gradient is NaN everywhere the loss reaches:
    a non-finite loss (even one whose own gradient would be finite) always shows in the grad norm.
    No host sync: the test runs on the device."""
    factor = torch.where(torch.isfinite(loss.detach()), 1.0, float("nan"))  # (not where(ok, loss, loss * nan):
    return loss * factor  # the unselected branch's 0 * nan would make every gradient NaN)


def nonfinite_names(named: Iterator[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or inf (one host sync for all)."""
    named = [(n, t) for n, t in named if t.is_floating_point() and t.numel()]
    if not named:
        return []
    ok = torch.stack([torch.isfinite(t.detach()).all().to("cpu") for _, t in named])
    return [n for (n, _), good in zip(named, ok.tolist()) if not good]


def nonfinite_weights_error(names: list[str], directory) -> NonFiniteError:
    return NonFiniteError(f"refusing to save {directory}: non-finite (NaN/inf) weights in {len(names)} tensor(s), "
                          f"e.g. {names[:3]}; the checkpoint is not written. The weights went bad in an applied "
                          "optimizer step: check bf16 overflow, the data of recent steps and the learning rate")
