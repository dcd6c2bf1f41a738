"""Sokoban rooms in gym-sokoban's ``room_state`` encoding, and the push simulator.

A level is a 2-D integer array: 0 wall, 1 floor, 2 target, 3 box on target, 4 box,
5 player. That is the encoding of the LMM-R1 level files (``.npy``), so they load
unchanged. The fixed part of the room (walls, floor, targets) is derived from it:
targets are the 2 and 3 cells, and box / player cells are floor. (A player standing on
a target cannot be expressed in this encoding; such a target is lost, as in the
original. The generator here never starts the player on a target.)

Rules (gym-sokoban, RECIPE.md): actions up, down, left, right. Moving into a box pushes
it when the cell behind it is floor or target; moving into a wall, or into a box that
cannot move, changes nothing. Every step costs -0.1; +1 when a box lands on a target;
-1 when a box leaves one; +10 when no target is left uncovered (the room is solved).

Run ``python -m lmm_r1_ascend.envs generate --out DIR --n 8 --boxes 2 --seed 0``
to write levels, images and LMM-R1 jsonl rows (see ``envs/__main__.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

WALL, FLOOR, TARGET, BOX_ON_TARGET, BOX, PLAYER = 0, 1, 2, 3, 4, 5
ACTIONS: dict[str, tuple[int, int]] = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
STEP_PENALTY, BOX_ON_TARGET_REWARD, BOX_OFF_TARGET_PENALTY, SOLVED_REWARD = -0.1, 1.0, -1.0, 10.0


def validate_room(room, where: str = "level") -> np.ndarray:
    """Check a room_state array and return it as a fresh int8 array (H, W).

    Raises ValueError naming ``where`` when the array is not 2-D, holds values outside
    0..5 or non-integers, has no or several players, or no box.
    """
    arr = np.asarray(room)
    if arr.ndim != 2 or min(arr.shape) < 3:
        raise ValueError(f"{where}: a Sokoban room is a 2-D array of at least 3x3, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{where}: room values must be integers 0..5")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"{where}: room values must be integers 0..5, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() > 5:
        raise ValueError(f"{where}: room values must be in 0..5 (gym-sokoban room_state), got "
                         f"{sorted(set(np.unique(arr).tolist()) - set(range(6)))}")
    arr = arr.astype(np.int8)
    n_player = int((arr == PLAYER).sum())
    if n_player != 1:
        raise ValueError(f"{where}: expected exactly one player (value 5), found {n_player}")
    if not np.isin(arr, (BOX, BOX_ON_TARGET)).any():
        raise ValueError(f"{where}: the room has no box (value 3 or 4)")
    return arr


def load_level(path: str | Path) -> np.ndarray:
    """Load a ``.npy`` level (room_state encoding) as an int8 (H, W) array."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Sokoban level file not found: {p}")
    try:
        room = np.load(p, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{p}: not a readable .npy array ({type(e).__name__}: {e})") from None
    return validate_room(room, str(p))


def save_level(path: str | Path, room: np.ndarray) -> Path:
    """Write a room_state array as ``.npy`` (uint8, like gym-sokoban's rooms)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    np.save(p, validate_room(room, str(p)).astype(np.uint8))
    return p


def fixed_room(room_state: np.ndarray) -> np.ndarray:
    """Walls, floor and targets only: (H, W) int8 of WALL / FLOOR / TARGET."""
    fixed = np.full(room_state.shape, FLOOR, dtype=np.int8)
    fixed[room_state == WALL] = WALL
    fixed[np.isin(room_state, (TARGET, BOX_ON_TARGET))] = TARGET
    return fixed


class Sokoban:
    """A room being played. ``step(action)`` returns (reward, solved).

    room_state: the current (H, W) int8 array in the level encoding.
    max_steps: after this many steps further actions are ignored (gym-sokoban's 120).
    """

    def __init__(self, room_state, max_steps: int = 120) -> None:
        self.initial = validate_room(room_state)
        self.fixed = fixed_room(self.initial)
        self.max_steps = max_steps
        self.reset()

    def reset(self) -> None:
        self.room_state = self.initial.copy()
        r, c = np.argwhere(self.room_state == PLAYER)[0]
        self.player = (int(r), int(c))
        self.steps = 0

    @property
    def boxes_on_target(self) -> int:
        return int((self.room_state == BOX_ON_TARGET).sum())

    @property
    def solved(self) -> bool:
        """No target left uncovered (gym-sokoban's definition; the player hides one)."""
        uncovered = (self.room_state == TARGET) | ((self.fixed == TARGET) & (self.room_state == PLAYER))
        return not uncovered.any()

    def _free(self, r: int, c: int) -> bool:
        h, w = self.room_state.shape
        return 0 <= r < h and 0 <= c < w and self.room_state[r, c] in (FLOOR, TARGET)

    def move(self, action: str) -> bool:
        """Apply the push rules for one action; True when something moved."""
        if action not in ACTIONS:
            raise ValueError(f"unknown Sokoban action {action!r}: use one of {list(ACTIONS)}")
        dr, dc = ACTIONS[action]
        (r, c), h, w = self.player, *self.room_state.shape
        nr, nc = r + dr, c + dc
        if not (0 <= nr < h and 0 <= nc < w):
            return False
        if self.room_state[nr, nc] in (BOX, BOX_ON_TARGET):
            br, bc = nr + dr, nc + dc
            if not self._free(br, bc):
                return False
            self.room_state[br, bc] = BOX_ON_TARGET if self.fixed[br, bc] == TARGET else BOX
        elif not self._free(nr, nc):
            return False
        self.room_state[r, c] = self.fixed[r, c]
        self.room_state[nr, nc] = PLAYER
        self.player = (nr, nc)
        return True

    def step(self, action: str) -> tuple[float, bool]:
        """One action with gym-sokoban's reward: (reward, solved)."""
        if self.steps >= self.max_steps:
            return 0.0, self.solved
        before = self.boxes_on_target
        self.move(action)
        self.steps += 1
        after = self.boxes_on_target
        reward = STEP_PENALTY
        if after > before:
            reward += BOX_ON_TARGET_REWARD
        elif after < before:
            reward += BOX_OFF_TARGET_PENALTY
        solved = self.solved
        if solved:
            reward += SOLVED_REWARD
        return reward, solved
