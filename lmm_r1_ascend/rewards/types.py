"""Common types of the reward layer: what a reward function takes and returns.

Every reward function in this package (math, Sokoban, custom file, HTTP endpoint) is
a callable ``fn(samples: Sequence[RewardInput]) -> list[RewardOutput]`` with a
``close()`` method. A reward is a plain Python float per sample; the trainer turns the
list into a float32 tensor of shape (batch,).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable


class RewardError(RuntimeError):
    """A reward could not be computed and the configured policy says: fail loudly."""


@dataclass
class RewardInput:
    """One sample to score.

    response: the model's answer text (already cut out of the decoded sequence, see
        ``extraction.extract_response``).
    label: the reference answer (LaTeX for math, "" for Sokoban); None when missing.
    query: the full decoded text (prompt + response), handed to custom rewards.
    prompt: the decoded prompt, handed to custom rewards.
    datasource: routes the sample to a reward function (see ``registry.RewardRouter``).
    meta: anything else from the data row, e.g. ``env_path`` for Sokoban.
    """

    response: Any
    label: Any = None
    query: str = ""
    prompt: str = ""
    datasource: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardOutput:
    """The score of one sample.

    total: the scalar reward used for training.
    components: named parts of the total (e.g. ``format``, ``accuracy``).
    status: a short machine-readable word; "ok"-like values are listed per reward
        (math: correct / wrong / no_answer / bad_label / bad_input / timeout / error).
    detail: a human-readable explanation when something went wrong.
    info: diagnostics (parsed prediction, parsed gold, seconds, ...).
    """

    total: float
    components: dict[str, float] = field(default_factory=dict)
    status: str = "ok"
    detail: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready dict: components first, then total and diagnostics."""
        out: dict[str, Any] = dict(self.components)
        out["total"] = self.total
        out["status"] = self.status
        if self.detail:
            out["detail"] = self.detail
        out.update(self.info)
        return out


@runtime_checkable
class RewardFunction(Protocol):
    """What the registry hands out."""

    def __call__(self, samples: Sequence[RewardInput]) -> list[RewardOutput]: ...

    def close(self) -> None: ...


def short(text: Any, limit: int = 120) -> str:
    """A one-line excerpt for error messages (never dump a 1 MB response into a log)."""
    s = text if isinstance(text, str) else repr(text)
    s = s.replace("\n", "\\n")
    return s if len(s) <= limit else s[: limit - 3] + "..."
