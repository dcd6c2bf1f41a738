"""Sokoban: level encoding, push rules against an independent slow simulator, BFS
solver, seeded generator, rendered frames and LMM-R1 jsonl rows."""

from __future__ import annotations

import json
import random
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from lmm_r1_ascend.envs.sokoban import Sokoban, load_level, save_level, validate_room
from lmm_r1_ascend.envs.__main__ import main as sokoban_cli
from lmm_r1_ascend.envs.sokoban_generate import generate_level, write_dataset
from lmm_r1_ascend.envs.sokoban_render import COLORS, render_room
from lmm_r1_ascend.envs.sokoban_solver import solve

# gym-sokoban room_state codes: 0 wall, 1 floor, 2 target, 3 box on target, 4 box, 5 player
LINE = np.array([[0, 0, 0, 0, 0, 0],
                 [0, 5, 4, 1, 2, 0],
                 [0, 0, 0, 0, 0, 0]])
CORNERED = np.array([[0, 0, 0, 0, 0],
                     [0, 4, 1, 2, 0],
                     [0, 1, 5, 1, 0],
                     [0, 0, 0, 0, 0]])


def reference_run(room: np.ndarray, actions: list[str]) -> list[float]:
    """A deliberately plain re-statement of the gym-sokoban rules on dicts of cells."""
    h, w = room.shape
    walls = {(r, c) for r in range(h) for c in range(w) if room[r, c] == 0}
    targets = {(r, c) for r in range(h) for c in range(w) if room[r, c] in (2, 3)}
    boxes = {(r, c) for r in range(h) for c in range(w) if room[r, c] in (3, 4)}
    player = next((r, c) for r in range(h) for c in range(w) if room[r, c] == 5)
    delta = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
    rewards = []
    for a in actions:
        on_before = len(boxes & targets)
        nxt = (player[0] + delta[a][0], player[1] + delta[a][1])
        beyond = (nxt[0] + delta[a][0], nxt[1] + delta[a][1])
        if nxt in boxes:
            if beyond not in walls and beyond not in boxes and 0 <= beyond[0] < h and 0 <= beyond[1] < w:
                boxes = (boxes - {nxt}) | {beyond}
                player = nxt
        elif nxt not in walls and 0 <= nxt[0] < h and 0 <= nxt[1] < w:
            player = nxt
        on_after = len(boxes & targets)
        r = -0.1 + (1.0 if on_after > on_before else -1.0 if on_after < on_before else 0.0)
        solved = targets <= boxes
        rewards.append(r + (10.0 if solved else 0.0))
        if solved:
            break
    return rewards


def test_push_rules_hand_made():
    g = Sokoban(LINE)
    assert g.step("left") == pytest.approx((-0.1, False))  # wall: nothing moves, still a step
    assert g.step("up") == pytest.approx((-0.1, False))
    assert g.step("right") == pytest.approx((-0.1, False))  # box to floor
    assert g.room_state[1].tolist() == [0, 1, 5, 4, 2, 0]
    r, solved = g.step("right")  # box onto the only target: +1 and +10
    assert solved and r == pytest.approx(-0.1 + 1 + 10)
    assert g.room_state[1].tolist() == [0, 1, 1, 5, 3, 0]
    assert g.step("right") == pytest.approx((-0.1 + 10, True))  # box against the wall stays


def test_simulator_matches_reference_on_random_play(rng_seed):
    rng = np.random.default_rng(rng_seed)
    py = random.Random(rng_seed)
    for k in range(6):
        room, _ = generate_level(np.random.default_rng([rng_seed, k]), 7, 2 + k % 2)
        actions = [py.choice(["up", "down", "left", "right"]) for _ in range(int(rng.integers(1, 60)))]
        g = Sokoban(room)
        mine = []
        for a in actions:
            r, solved = g.step(a)
            mine.append(r)
            if solved:
                break
        assert mine == pytest.approx(reference_run(room, actions), abs=1e-12)  # same float ops


def test_max_steps_and_unknown_action():
    g = Sokoban(LINE, max_steps=2)
    g.step("up"), g.step("up")
    assert g.step("right") == (0.0, False) and g.player == (1, 1)
    with pytest.raises(ValueError, match="unknown Sokoban action"):
        g.move("jump")


def test_solver_on_known_levels():
    assert solve(LINE) == ["right", "right"]
    assert solve(CORNERED) is None  # the box sits in a corner off the target


@pytest.mark.parametrize("bad,msg", [
    (np.zeros((3, 3)), "player"),
    (np.array([[0, 0, 0], [0, 5, 0], [0, 0, 0]]), "no box"),
    (np.full((3, 3), 7), "0..5"),
    (np.zeros(9), "2-D"),
    (np.array([[0.5] * 3] * 3), "integers"),
])
def test_validate_room_errors(bad, msg):
    with pytest.raises(ValueError, match=msg):
        validate_room(bad)


def test_level_files_round_trip_and_errors(tmp_path):
    p = save_level(tmp_path / "l.npy", LINE)
    assert load_level(p).tolist() == LINE.tolist()
    np.save(tmp_path / "int64.npy", LINE.astype(np.int64))  # other integer dtypes load too
    assert load_level(tmp_path / "int64.npy").tolist() == LINE.tolist()
    with pytest.raises(FileNotFoundError, match="not found"):
        load_level(tmp_path / "missing.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="junk.npy"):
        load_level(tmp_path / "junk.npy")


@pytest.mark.parametrize("boxes", [2, 3])
def test_generated_levels_are_solvable_and_seeded(boxes, rng_seed):
    for k in range(3):
        room, plan = generate_level(np.random.default_rng([rng_seed, k]), 7, boxes)
        assert room.shape == (7, 7)
        assert (room == 4).sum() == boxes and np.isin(room, (2, 3)).sum() == boxes
        assert (room == 3).sum() == 0  # every box starts off its target
        assert (room[0] == 0).all() and (room[-1] == 0).all() and (room[:, 0] == 0).all() and (room[:, -1] == 0).all()
        assert plan == solve(room) and len(plan) >= 1
        g = Sokoban(room)
        assert [g.step(a)[1] for a in plan][-1]  # replaying the plan solves the room
        again, _ = generate_level(np.random.default_rng([rng_seed, k]), 7, boxes)
        assert np.array_equal(room, again)


def test_render_colours_at_cells():
    cell = 16
    room = np.array([[0, 0, 0, 0, 0, 0, 0],
                     [0, 5, 1, 2, 3, 4, 0],
                     [0, 0, 0, 0, 0, 0, 0]])
    img = np.asarray(render_room(room, cell=cell))
    assert img.shape == (3 * cell, 7 * cell, 3)
    names = {0: "wall", 1: "floor", 2: "target", 3: "box_on_target", 4: "box", 5: "player"}
    assert len(set(COLORS.values())) == len(COLORS)  # all distinct
    for (r, c), code in np.ndenumerate(room):
        centre = tuple(img[r * cell + cell // 2, c * cell + cell // 2])
        corner = tuple(img[r * cell, c * cell])
        assert centre == COLORS[names[int(code)]], (r, c, code)
        assert corner == (COLORS["wall"] if code == 0 else COLORS["floor"])


def test_write_dataset_rows_parse_back(tmp_path, rng_seed):
    seed = rng_seed % 1000
    rows = write_dataset(tmp_path / "sok", n=3, num_boxes=2, seed=seed, cell=16)
    lines = (tmp_path / "sok" / "sokoban.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == rows and len(rows) == 3
    from PIL import Image

    for row in rows:
        assert row["answer"] == "" and row["datasource"] == "sokoban" and row["question"].startswith("sokoban_7x7_b2")
        message = json.loads(row["message"])  # a JSON string, as LMM-R1 stores it
        assert [m["role"] for m in message] == ["system", "user"]
        image = next(c for c in message[1]["content"] if c["type"] == "image")["image"]
        assert image.startswith("file://")
        png = Path(urlparse(image).path)
        room = load_level(row["env_path"])
        assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), np.asarray(render_room(room, 16)))
        assert len(solve(room)) == row["min_actions"]
    again = write_dataset(tmp_path / "sok2", n=3, num_boxes=2, seed=seed, cell=16)
    assert [np.load(r["env_path"]).tolist() for r in again] == [np.load(r["env_path"]).tolist() for r in rows]


def test_generator_cli(tmp_path, capsys):
    assert sokoban_cli(["generate", "--out", str(tmp_path), "--n", "2", "--boxes", "3", "--seed", "5", "--cell", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["levels"] == 2 and len(list((tmp_path / "levels").glob("*.npy"))) == 2
    level = next((tmp_path / "levels").glob("*.npy"))
    assert sokoban_cli(["solve", "--level", str(level)]) == 0
    assert json.loads(capsys.readouterr().out)["solvable"] is True
    assert sokoban_cli(["solve", "--level", str(tmp_path / "nope.npy")]) == 2
    assert "not found" in capsys.readouterr().err
