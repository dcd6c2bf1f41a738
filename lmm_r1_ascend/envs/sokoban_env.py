"""Sokoban played step by step (issue 34): the multi-turn counterpart of the single-shot task.

Each turn the policy answers in the single-shot task's format (rewards/sokoban.py
``parse_actions``: one each of <think></think><answer></answer>, the answer a
comma-separated list of up / down / left / right) with 1 to ``moves_per_turn`` moves.
The environment applies them with the gym-sokoban push rules (envs/sokoban.py) and shows
the rendered board (and, with ``show_grid=True``, the board as a text grid too; with
``image=False`` the text grid alone, for text-only models).

Per turn:
- valid answer: the moves are applied in order (the turn stops early once the room is
  solved or the move budget ``max_moves`` is spent); reward = the sum of the simulator's
  per-move rewards (-0.1 a move, +1 box onto a target, -1 box off one, +10 solved).
- invalid answer (format fails, no move, or more than ``moves_per_turn`` moves): nothing
  moves, reward = ``invalid_penalty``, info["invalid_action"] = True.
- done: solved, or ``max_invalid`` invalid turns, or ``max_moves`` moves made.
info: invalid_action, steps (moves made so far), solved, moves (applied this turn).

The task (the dataset row's meta) names the level as ``env_path`` / ``level`` (an .npy
file, what the single-shot rows carry) or gives ``room`` (a room_state array).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lmm_r1_ascend.envs.base import Environment, Observation, StepResult
from lmm_r1_ascend.envs.registry import register_env
from lmm_r1_ascend.envs.sokoban import BOX, BOX_ON_TARGET, FLOOR, PLAYER, STEP_PENALTY, TARGET, WALL, Sokoban, \
    load_level, validate_room
from lmm_r1_ascend.envs.sokoban_render import render_room

GRID_CHARS = {WALL: "#", FLOOR: "_", TARGET: "O", BOX_ON_TARGET: "√", BOX: "X", PLAYER: "P"}
FIRST_TEXT = "This is the board now. Give {moves}."


def moves_phrase(k: int) -> str:
    """How many moves a turn may give, in words: "1 move" or "1 to k moves"."""
    return "1 move" if k == 1 else f"1 to {k} moves"

MULTITURN_USER_PROMPT = (
    "You play Sokoban, seen from above, over several turns. Dark grey cells are walls, light grey cells "
    "are floor, red squares are targets, brown squares are boxes, green squares are boxes already on a "
    "target, and the blue disc is you. You can move up, down, left or right. Walking into a box pushes it "
    "one cell further if that cell is free; boxes cannot be pulled and walls block you. Push every box onto "
    "a target. Each turn, think, then give a few moves as a comma-separated list, for example "
    "<think> the box is left of me </think><answer> left, up </answer>; after each answer I show the new board."
)


def grid_text(room: np.ndarray) -> str:
    """The room as text, one line per row: # wall, _ floor, O target, X box, √ box on target, P player."""
    return "\n".join("".join(GRID_CHARS[int(v)] for v in row) for row in room)


def level_from_task(task: Mapping[str, Any]) -> np.ndarray:
    """The room_state a task names: ``room`` (array), else ``env_path`` / ``level`` (.npy path)."""
    if not isinstance(task, Mapping):
        raise TypeError(f"a Sokoban task is a mapping (the row's meta), got {type(task).__name__}")
    if task.get("room") is not None:
        return validate_room(task["room"], "task['room']")
    path = task.get("env_path") or task.get("level")
    if not path:
        raise ValueError("the Sokoban task names no level: set env_path (an .npy level) in the data row")
    return load_level(path)


@register_env("sokoban")
class SokobanEnv(Environment):
    """See the module docstring. Constructor kwargs are the recipe's ``env.kwargs``.

    moves_per_turn: most moves one turn may give (>= 1).
    max_moves: the episode's move budget (gym-sokoban's 120 steps).
    max_invalid: invalid turns that end the episode.
    invalid_penalty: the reward of an invalid turn.
    show_grid: also put the text grid in every observation.
    image: show the rendered board (False: the text grid alone, for text-only models).
    cell: rendered pixels per room cell (>= 8).
    """

    def __init__(self, moves_per_turn: int = 3, max_moves: int = 120, max_invalid: int = 3,
                 invalid_penalty: float = STEP_PENALTY, show_grid: bool = False, image: bool = True,
                 cell: int = 32) -> None:
        for key, v, lo in (("moves_per_turn", moves_per_turn, 1), ("max_moves", max_moves, 1),
                           ("max_invalid", max_invalid, 1), ("cell", cell, 8)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"sokoban env: {key} must be an int >= {lo}, got {v!r}")
        if isinstance(invalid_penalty, bool) or not isinstance(invalid_penalty, (int, float)):
            raise ValueError(f"sokoban env: invalid_penalty must be a number, got {invalid_penalty!r}")
        for key, v in (("show_grid", show_grid), ("image", image)):
            if not isinstance(v, bool):
                raise ValueError(f"sokoban env: {key} must be a bool, got {v!r}")
        self.moves_per_turn, self.max_moves, self.max_invalid = moves_per_turn, max_moves, max_invalid
        self.invalid_penalty, self.show_grid, self.image, self.cell = float(invalid_penalty), show_grid or not image, \
            image, cell
        self.game: Sokoban | None = None
        self.invalid = 0

    def _observation(self, text: str) -> Observation:
        room = self.game.room_state
        if self.show_grid:
            text = f"{text}\n{grid_text(room)}"
        return Observation(text=text, images=(render_room(room, self.cell),) if self.image else ())

    def reset(self, seed: int, task: Mapping[str, Any]) -> Observation:
        """Load the task's level (the seed is unused: Sokoban is deterministic)."""
        self.game = Sokoban(level_from_task(task), max_steps=self.max_moves)
        self.invalid = 0
        return self._observation(FIRST_TEXT.format(moves=moves_phrase(self.moves_per_turn)))

    def step(self, action_text: str) -> StepResult:
        from lmm_r1_ascend.rewards.sokoban import parse_actions

        if self.game is None:
            raise RuntimeError("sokoban env: call reset() before step()")
        actions = parse_actions(action_text)
        if actions is None or not 1 <= len(actions) <= self.moves_per_turn:
            self.invalid += 1
            done = self.invalid >= self.max_invalid
            text = (f"Invalid answer: give {moves_phrase(self.moves_per_turn)} as <answer> up, left </answer>. "
                    f"The board is unchanged; {self.max_moves - self.game.steps} moves left.")
            info = {"invalid_action": True, "steps": self.game.steps, "solved": False, "moves": []}
            return StepResult(self._observation(text), self.invalid_penalty, done, info)
        reward, solved, applied = 0.0, False, []
        for a in actions:
            if self.game.steps >= self.max_moves or solved:
                break
            r, solved = self.game.step(a)
            reward += r
            applied.append(a)
        done = solved or self.game.steps >= self.max_moves
        left = self.max_moves - self.game.steps
        text = ("Solved." if solved else f"After {', '.join(applied)}: the board is shown. {left} moves left.")
        info = {"invalid_action": False, "steps": self.game.steps, "solved": solved, "moves": applied}
        return StepResult(self._observation(text), reward, done, info)


def write_multiturn_dataset(out_dir, n: int, num_boxes: int = 1, seed: int = 0, dim: int = 6, cell: int = 32,
                            jsonl_name: str = "sokoban_multiturn.jsonl") -> list[dict]:
    """Levels as for the single-shot task (sokoban_generate.write_dataset: same levels for the same
    arguments), with rows for the multi-turn task: the system prompt and MULTITURN_USER_PROMPT as
    text; the board is the environment's first observation (env.name=sokoban), not in the row.
    Datasource ``sokoban_multiturn``."""
    import json
    from pathlib import Path

    from lmm_r1_ascend.envs.sokoban_generate import SYSTEM_PROMPT, write_dataset

    rows = write_dataset(out_dir, n, num_boxes=num_boxes, seed=seed, dim=dim, cell=cell, jsonl_name=jsonl_name)
    for row in rows:
        row["message"] = json.dumps([{"role": "system", "content": SYSTEM_PROMPT},
                                     {"role": "user", "content": MULTITURN_USER_PROMPT}], ensure_ascii=False)
        row["datasource"] = "sokoban_multiturn"
    with open(Path(out_dir) / jsonl_name, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return rows
