"""Breadth-first Sokoban solver: the shortest action sequence that solves a room.

Used by the tests and by the generator to check that a level is solvable. A search
state is (player cell, sorted box cells) on the fixed room; moves follow
``Sokoban.move``'s push rules. Fine for the 7x7 rooms of the recipe (tens of thousands
of states); ``max_states`` bounds the work on anything larger.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from lmm_r1_ascend.envs.sokoban import ACTIONS, BOX, BOX_ON_TARGET, PLAYER, TARGET, WALL, fixed_room, validate_room


def solve(room_state, max_states: int = 2_000_000) -> list[str] | None:
    """Shortest list of actions that leaves no target uncovered, or None when the room
    has no solution (or the search passes ``max_states`` states: then ValueError)."""
    room = validate_room(room_state)
    fixed = fixed_room(room)
    h, w = room.shape
    walls = {(r, c) for r, c in zip(*np.nonzero(fixed == WALL))}
    targets = frozenset((int(r), int(c)) for r, c in zip(*np.nonzero(fixed == TARGET)))
    boxes0 = tuple(sorted((int(r), int(c)) for r, c in zip(*np.nonzero(np.isin(room, (BOX, BOX_ON_TARGET))))))
    if len(targets) > len(boxes0):
        return None
    pr, pc = (int(v) for v in np.argwhere(room == PLAYER)[0])

    def inside(r: int, c: int) -> bool:
        return 0 <= r < h and 0 <= c < w and (r, c) not in walls

    def done(player, boxes) -> bool:
        return targets <= set(boxes) and player not in targets

    start = ((pr, pc), boxes0)
    if done(*start):
        return []
    parent: dict = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        (r, c), boxes = state
        box_set = set(boxes)
        for name, (dr, dc) in ACTIONS.items():
            nr, nc = r + dr, c + dc
            if not inside(nr, nc):
                continue
            new_boxes = boxes
            if (nr, nc) in box_set:
                br, bc = nr + dr, nc + dc
                if not inside(br, bc) or (br, bc) in box_set:
                    continue
                new_boxes = tuple(sorted((box_set - {(nr, nc)}) | {(br, bc)}))
            nxt = ((nr, nc), new_boxes)
            if nxt in parent:
                continue
            parent[nxt] = (state, name)
            if done(*nxt):
                plan = []
                while parent[nxt] is not None:
                    nxt, act = parent[nxt]
                    plan.append(act)
                return plan[::-1]
            if len(parent) > max_states:
                raise ValueError(f"Sokoban search passed {max_states} states; the room is too large for BFS")
            queue.append(nxt)
    return None
