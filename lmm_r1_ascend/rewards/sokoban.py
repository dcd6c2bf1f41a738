"""The Sokoban reward (RECIPE.md): total = best_reward + 0.5*format + action_term + think_term.

- format: exactly one each of <think>, </think>, <answer>, </answer>, and every
  comma-separated token of the answer (stripped, case-insensitive) is one of up, down,
  left, right. A format failure gives total 0 and no simulation.
- best_reward: simulate the first 50 actions (``Sokoban``: -0.1 a step, +1 box onto a
  target, -1 box off a target, +10 solved; at most 120 steps); the maximum cumulative
  reward seen, starting from 0; the simulation stops when the room is solved.
- action_term, with n the number of actions in the answer (all of them, not only the
  simulated 50): 0.05*n for n < 20, else 1 - ((n-20)/30)^2 * 0.2. Then, if any 1- to
  5-word n-gram occurs more than 7 times in a row (8 or more consecutive copies) in the
  response's words (lower-cased runs of letters and digits, so "up, up," counts as
  "up up"), action_term = min(0, action_term - 0.2).
- think_term: 0.001 per whitespace-separated word longer than one character inside
  <think>...</think>, capped at 0.2.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from lmm_r1_ascend.envs.sokoban import ACTIONS, Sokoban, load_level
from lmm_r1_ascend.rewards.types import RewardInput, RewardOutput

MAX_ACTIONS, MAX_STEPS = 50, 120
FORMAT_WEIGHT = 0.5  # the components (format = 0.5 or 0) add up to the total
MAX_REPEATS, MAX_NGRAM = 7, 5
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_WORD = re.compile(r"[a-z0-9]+")


def parse_actions(response: str) -> list[str] | None:
    """The answer's actions, or None when the response fails the Sokoban format."""
    if not isinstance(response, str):
        return None
    if any(response.count(tag) != 1 for tag in ("<think>", "</think>", "<answer>", "</answer>")):
        return None
    m = _ANSWER.search(response)
    if m is None:  # </answer> before <answer>
        return None
    actions = [tok.strip().lower() for tok in m.group(1).split(",")]
    return actions if all(a in ACTIONS for a in actions) else None


def action_term(n: int) -> float:
    return 0.05 * n if n < 20 else 1.0 - ((n - 20) / 30) ** 2 * 0.2


def think_term(response: str) -> float:
    m = _THINK.search(response)
    if m is None:
        return 0.0
    return min(0.2, 0.001 * sum(len(w) > 1 for w in m.group(1).split()))


def max_consecutive_repeats(words: Sequence[str], max_n: int = MAX_NGRAM) -> int:
    """Largest number of back-to-back copies of any 1..max_n-gram in ``words``.

    k copies of an n-gram starting at i means words[j] == words[j+n] for all j in
    [i, i + (k-1)*n); so a run of L such equalities gives L // n + 1 copies.
    """
    best = 1 if words else 0
    for n in range(1, max_n + 1):
        run = 0
        for j in range(len(words) - n):
            run = run + 1 if words[j] == words[j + n] else 0
            best = max(best, run // n + 1)
    return best


def has_degenerate_repeat(response: str) -> bool:
    return max_consecutive_repeats(_WORD.findall(response.lower())) > MAX_REPEATS


def simulate(room: np.ndarray, actions: Sequence[str]) -> tuple[float, bool, int]:
    """(best cumulative reward >= 0, solved, steps taken) for the first 50 actions."""
    game = Sokoban(room, max_steps=MAX_STEPS)
    total = best = 0.0
    steps = 0
    for a in actions[:MAX_ACTIONS]:
        if game.steps >= MAX_STEPS:
            break
        r, solved = game.step(a)
        steps += 1
        total += r
        best = max(best, total)
        if solved:
            return best, True, steps
    return best, False, steps


@dataclass
class SokobanScore:
    total: float
    format: float
    best_reward: float
    action_term: float
    think_term: float
    n_actions: int
    solved: bool
    repeat_penalty: bool

    def components(self) -> dict[str, float]:
        return {"format": self.format, "best_reward": self.best_reward,
                "action_term": self.action_term, "think_term": self.think_term}


def sokoban_score(response: str, room: np.ndarray) -> SokobanScore:
    """Score one response on one level (room_state array)."""
    actions = parse_actions(response)
    if actions is None:
        return SokobanScore(0.0, 0.0, 0.0, 0.0, 0.0, 0, False, False)
    best, solved, _ = simulate(room, actions)
    act = action_term(len(actions))
    repeat = has_degenerate_repeat(response)
    if repeat:
        act = min(0.0, act - 0.2)
    think = think_term(response)
    return SokobanScore(best + FORMAT_WEIGHT + act + think, FORMAT_WEIGHT, best, act, think, len(actions), solved, repeat)


@lru_cache(maxsize=1024)
def _cached_level(path: str) -> np.ndarray:
    room = load_level(path)
    room.setflags(write=False)
    return room


class SokobanReward:
    """Reward function over samples whose ``meta["env_path"]`` (or ``meta["level"]``,
    or a label that is a ``.npy`` path) names the level. A missing or broken level is
    status ``bad_level`` with total 0 (the batch goes on)."""

    name = "sokoban"

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def close(self) -> None:
        pass

    def __call__(self, samples: Sequence[RewardInput]) -> list[RewardOutput]:
        return [self.score(s) for s in samples]

    def score(self, s: RewardInput) -> RewardOutput:
        path = s.meta.get("env_path") or s.meta.get("level")
        if not path and isinstance(s.label, str) and s.label.endswith(".npy"):
            path = s.label
        zero = {"format": 0.0, "best_reward": 0.0, "action_term": 0.0, "think_term": 0.0}
        if not path:
            return self._out(0.0, zero, "bad_level", "no level: set env_path in the data row")
        try:
            room = _cached_level(str(Path(path)))
        except (OSError, ValueError) as e:
            return self._out(0.0, zero, "bad_level", str(e))
        if not isinstance(s.response, str):
            return self._out(0.0, zero, "bad_input", f"the response must be a str, got {type(s.response).__name__}")
        sc = sokoban_score(s.response, room)
        status = "format_error" if sc.format == 0 else ("solved" if sc.solved else "unsolved")
        info = {"n_actions": sc.n_actions, "solved": sc.solved, "repeat_penalty": sc.repeat_penalty}
        return self._out(sc.total, sc.components(), status, "", info)

    def _out(self, total, comps, status, detail, info=None) -> RewardOutput:
        self.counts[status] += 1
        return RewardOutput(total=total, components=comps, status=status, detail=detail, info=info or {})
