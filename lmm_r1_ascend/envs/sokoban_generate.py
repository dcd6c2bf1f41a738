"""Seeded Sokoban level generator (reverse play from a solved room) and dataset writer.

1. Topology: a random walk carves floor out of the interior of an all-wall room.
2. Solved state: boxes on random target cells, the player on another floor cell.
3. Reverse play: the player walks at random; when it steps away from an adjacent box
   it may pull that box along (the inverse of a push). Every state reached this way can
   be pushed back to the solved one, so the level is solvable by construction; the BFS
   solver checks it anyway and its plan length is recorded.
4. Of the states visited, the one with every box off its target, the player off the
   targets and the largest total box displacement becomes the level.

``write_dataset`` saves ``levels/<id>.npy``, ``images/<id>.png`` and one LMM-R1 jsonl
row per level (``message`` is a JSON string; the image is a file:// URI).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lmm_r1_ascend.envs.sokoban import ACTIONS, BOX, FLOOR, PLAYER, TARGET, WALL, save_level
from lmm_r1_ascend.envs.sokoban_render import save_png
from lmm_r1_ascend.envs.sokoban_solver import solve

_DIRS = list(ACTIONS.values())

SYSTEM_PROMPT = (
    "You are a helpful assistant. You first think about the reasoning process in your mind "
    "and then give the user the answer. The reasoning goes inside <think> </think> and the "
    "answer inside <answer> </answer>, e.g. <think> reasoning here </think><answer> answer here </answer>."
)
USER_PROMPT = (
    "This image shows a Sokoban puzzle seen from above. Dark grey cells are walls, light grey "
    "cells are floor, red squares are targets, brown squares are boxes, green squares are boxes "
    "already on a target, and the blue disc is you. You can move up, down, left or right. "
    "Walking into a box pushes it one cell further if that cell is free; boxes cannot be pulled "
    "and walls block you. Push every box onto a target. Give the whole plan at once as a "
    "comma-separated list of moves, for example <answer> up, left, left, down </answer>."
)


def _carve(rng: np.random.Generator, dim: int, n_floor: int) -> np.ndarray:
    room = np.full((dim, dim), WALL, dtype=np.int8)
    r, c = (int(v) for v in rng.integers(1, dim - 1, size=2))
    d = _DIRS[rng.integers(4)]
    room[r, c] = FLOOR
    for _ in range(50 * dim * dim):
        if (room == FLOOR).sum() >= n_floor:
            break
        if rng.random() < 0.35:
            d = _DIRS[rng.integers(4)]
        nr, nc = r + d[0], c + d[1]
        if 1 <= nr < dim - 1 and 1 <= nc < dim - 1:
            r, c = nr, nc
            room[r, c] = FLOOR
    return room


def _reverse_play(rng, room, targets, player, steps):
    """Random pulls from the solved state: the best level state seen as
    (player, boxes, score), or None when no state had every box off its target."""
    boxes = list(targets)  # box i starts on target i
    target_set = set(targets)
    best, best_score = None, 0
    for _ in range(steps):
        dr, dc = _DIRS[rng.integers(4)]
        nxt = (player[0] + dr, player[1] + dc)
        if room[nxt] == WALL or nxt in boxes:
            continue
        behind = (player[0] - dr, player[1] - dc)
        if behind in boxes and rng.random() < 0.75:
            boxes[boxes.index(behind)] = player
        player = nxt
        if player in target_set or any(b in target_set for b in boxes):
            continue
        score = sum(abs(b[0] - t[0]) + abs(b[1] - t[1]) for b, t in zip(boxes, targets))
        if score > best_score:
            best, best_score = (player, list(boxes), score), score
    return best


def generate_level(rng: np.random.Generator, dim: int = 7, num_boxes: int = 2,
                   max_tries: int = 200) -> tuple[np.ndarray, list[str]]:
    """One level: (room_state (dim, dim) int8, BFS-shortest solution)."""
    if dim < 5 or num_boxes < 1:
        raise ValueError(f"need dim >= 5 and num_boxes >= 1, got dim={dim}, num_boxes={num_boxes}")
    interior = (dim - 2) ** 2
    for _ in range(max_tries):
        n_floor = int(rng.integers(min(interior, num_boxes + 8), min(interior, num_boxes + 14) + 1))
        room = _carve(rng, dim, n_floor)
        cells = [tuple(int(v) for v in rc) for rc in np.argwhere(room == FLOOR)]
        if len(cells) < num_boxes + 4:
            continue
        pick = rng.permutation(len(cells))[: num_boxes + 1]
        targets, player = [cells[i] for i in pick[:-1]], cells[pick[-1]]
        plays = [_reverse_play(rng, room, targets, player, steps=int(rng.integers(200, 600)))
                 for _ in range(4)]
        plays = [p for p in plays if p is not None]
        if not plays:
            continue
        player, boxes, _ = max(plays, key=lambda p: p[2])
        state = room.copy()
        for t in targets:
            state[t] = TARGET
        for b in boxes:
            state[b] = BOX
        state[player] = PLAYER
        plan = solve(state)
        if plan:
            return state, plan
    raise RuntimeError(f"could not generate a {dim}x{dim} level with {num_boxes} boxes in {max_tries} tries")


def level_row(level_id: str, level_path: Path, image_path: Path, datasource: str = "sokoban") -> dict:
    """One LMM-R1 jsonl row for a level (``message`` is a JSON string)."""
    message = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [
            {"type": "image", "image": image_path.resolve().as_uri()},
            {"type": "text", "text": USER_PROMPT},
        ]},
    ]
    return {"message": json.dumps(message, ensure_ascii=False), "answer": "", "datasource": datasource,
            "env_path": str(level_path.resolve()), "question": level_id}


def write_dataset(out_dir: str | Path, n: int, num_boxes: int = 2, seed: int = 0, dim: int = 7,
                  cell: int = 32, jsonl_name: str = "sokoban.jsonl") -> list[dict]:
    """Generate ``n`` levels into ``out_dir``; returns the jsonl rows (also written).
    Level i depends only on (seed, num_boxes, dim, i)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = Path(out_dir)
    rows = []
    for i in range(n):
        rng = np.random.default_rng([seed, num_boxes, dim, i])
        state, plan = generate_level(rng, dim, num_boxes)
        level_id = f"sokoban_{dim}x{dim}_b{num_boxes}_s{seed}_{i:05d}"
        npy = save_level(out / "levels" / f"{level_id}.npy", state)
        png = save_png(state, out / "images" / f"{level_id}.png", cell)
        row = level_row(level_id, npy, png)
        row["min_actions"] = len(plan)
        rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / jsonl_name, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return rows
