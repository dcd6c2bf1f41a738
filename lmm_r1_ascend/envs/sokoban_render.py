"""Render a Sokoban room as an RGB image (PIL), one square cell per room cell.

Colours (RGB), all distinct: walls dark grey, floor light grey, targets a red square on
the floor, boxes brown squares, boxes on targets green squares, the player a blue disc.
Entities are drawn inset from the cell border (floor colour at the cell corners), so the
centre pixel of a cell carries the entity's colour and its corner the floor's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmm_r1_ascend.envs.sokoban import BOX, BOX_ON_TARGET, FLOOR, PLAYER, TARGET, WALL, validate_room

COLORS: dict[str, tuple[int, int, int]] = {
    "wall": (70, 70, 70),
    "floor": (225, 225, 215),
    "target": (215, 50, 50),
    "box": (150, 95, 35),
    "box_on_target": (40, 165, 70),
    "player": (40, 90, 225),
}
CODE_COLOR = {WALL: "wall", FLOOR: "floor", TARGET: "target", BOX: "box", BOX_ON_TARGET: "box_on_target",
              PLAYER: "player"}


def render_room(room_state, cell: int = 32):
    """(H*cell, W*cell) RGB ``PIL.Image`` of a room_state array."""
    from PIL import Image, ImageDraw

    if cell < 8:
        raise ValueError(f"cell must be >= 8 pixels, got {cell}")
    room = validate_room(room_state)
    h, w = room.shape
    img = Image.new("RGB", (w * cell, h * cell), COLORS["floor"])
    draw = ImageDraw.Draw(img)
    pad = max(2, cell // 8)
    for (r, c), code in np.ndenumerate(room):
        x0, y0 = c * cell, r * cell
        x1, y1 = x0 + cell - 1, y0 + cell - 1
        inner = (x0 + pad, y0 + pad, x1 - pad, y1 - pad)
        if code == WALL:
            draw.rectangle((x0, y0, x1, y1), fill=COLORS["wall"])
        elif code == PLAYER:
            draw.ellipse(inner, fill=COLORS["player"])
        elif code != FLOOR:
            draw.rectangle(inner, fill=COLORS[CODE_COLOR[int(code)]])
    return img


def save_png(room_state, path: str | Path, cell: int = 32) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    render_room(room_state, cell).save(p, format="PNG")
    return p
