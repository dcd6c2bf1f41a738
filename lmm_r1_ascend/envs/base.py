"""The environment interface for multi-turn agent tasks (issue 34).

An environment plays one episode at a time:

    obs = env.reset(seed, task)        # task: the dataset row's label / meta (e.g. a Sokoban level)
    while True:
        result = env.step(action_text) # the policy's whole turn, as text
        if result.done: break
    env.close()

`reset` returns the first `Observation` (what the first user turn shows); every `step`
returns a `StepResult` whose observation becomes the next user message. Observations are
text and/or images (PIL); at least one of the two is non-empty. Environments are found by
name through `envs/registry.py` (``@register_env("name")``).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image


@dataclass(frozen=True)
class Observation:
    """What the environment shows the policy: text, images, or both (never neither).

    text: the user message's text part (None or "" when the observation is images only).
    images: PIL images shown before the text, in order.
    """

    text: str | None = None
    images: tuple[Image.Image, ...] = ()

    def __post_init__(self) -> None:
        if self.text is not None and not isinstance(self.text, str):
            raise TypeError(f"Observation.text must be a str or None, got {type(self.text).__name__}")
        if isinstance(self.images, Image.Image) or not isinstance(self.images, (tuple, list)):
            raise TypeError(f"Observation.images must be a tuple of PIL images, got {type(self.images).__name__}")
        bad = [i for i, im in enumerate(self.images) if not isinstance(im, Image.Image)]
        if bad:
            raise TypeError(f"Observation.images[{bad[0]}] is a {type(self.images[bad[0]]).__name__}, "
                            "not a PIL image")
        object.__setattr__(self, "images", tuple(self.images))
        if not self.text and not self.images:
            raise ValueError("an Observation needs text or at least one image")


@dataclass(frozen=True)
class StepResult:
    """The outcome of one `Environment.step`.

    observation: shown to the policy as the next user message (when not done; a terminal
        observation is recorded but not fed back).
    reward: this step's reward (a finite float).
    done: the episode is over.
    info: free-form facts, e.g. {"invalid_action": bool, "env_error": str, "solved": bool}.
    """

    observation: Observation
    reward: float
    done: bool
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.observation, Observation):
            raise TypeError(f"StepResult.observation must be an Observation, got {type(self.observation).__name__}")
        if isinstance(self.reward, bool) or not isinstance(self.reward, (int, float)) or self.reward != self.reward \
                or abs(self.reward) == float("inf"):
            raise TypeError(f"StepResult.reward must be a finite number, got {self.reward!r}")
        if not isinstance(self.done, bool):
            raise TypeError(f"StepResult.done must be a bool, got {type(self.done).__name__}")
        if not isinstance(self.info, dict):
            raise TypeError(f"StepResult.info must be a dict, got {type(self.info).__name__}")
        object.__setattr__(self, "reward", float(self.reward))


class Environment(abc.ABC):
    """One episode at a time; see the module docstring. Subclasses set `name`."""

    name: ClassVar[str]

    @abc.abstractmethod
    def reset(self, seed: int, task: Mapping[str, Any]) -> Observation:
        """Start an episode defined by `task` (the row's label / meta); `seed` drives any randomness."""

    @abc.abstractmethod
    def step(self, action_text: str) -> StepResult:
        """Apply the policy's turn (its decoded text)."""

    def close(self) -> None:
        """Release resources (default: nothing to release)."""
