"""Stopping on a run of non-finite optimizer steps: a role's engine skips a step whose loss or
gradient norm is NaN/inf (its weights stay unchanged); trainer.max_consecutive_skips of them
in a row end the run with NonFiniteError (0 never stops)."""

from __future__ import annotations

from lmm_r1_ascend.engines.base import NonFiniteError


class SkipRuns:
    """Per role, the optimizer steps skipped in a row so far (in this process)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.runs: dict[str, int] = {}

    def advance(self, step_skips: dict[str, list[float]], step: int) -> None:
        """Add one rollout's optimizer steps, role -> [1.0 skipped / 0.0 applied, in order];
        NonFiniteError once a role's run reaches the limit."""
        for role, flags in step_skips.items():
            for skipped in flags:
                self.runs[role] = self.runs.get(role, 0) + 1 if skipped else 0
            if self.limit > 0 and self.runs.get(role, 0) >= self.limit:
                raise NonFiniteError(
                    f"step {step}: {self.runs[role]} consecutive optimizer steps of the {role} were skipped "
                    f"because the loss or the gradient norm was not finite (NaN/inf) "
                    f"(trainer.max_consecutive_skips={self.limit}; 0 never stops). The weights are unchanged by the "
                    "skipped steps. Usual causes: bf16 overflow (try fp32, or a lower learning rate), a "
                    "poisoned batch (bad data or rewards: see reward/status/* in metrics.jsonl), or too high a "
                    "learning rate (optim.*_lr)")
