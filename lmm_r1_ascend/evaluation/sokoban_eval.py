"""A held-out Sokoban level set: generated like the training levels, never one of them.

    build_sokoban_eval_set("data/sokoban_eval", n_levels=100, seed=0)
    # -> data/sokoban_eval/sokoban_eval.jsonl, sokoban_eval_multiturn.jsonl, levels/*.npy, images/*.png,
    #    manifest.json

Levels come from the training generator (``envs.sokoban_generate.generate_level``), are saved,
rendered and turned into rows by the same functions as ``python -m lmm_r1_ascend.envs
generate`` (``save_level``, ``save_png``, ``level_row``), so prompts, images and the
``env_path`` field match training rows exactly. Only the datasource differs:
``sokoban_eval``, which a ``reward.routes`` entry ``{"sokoban*": sokoban}`` sends to the
Sokoban reward (the MGT-Sokoban recipe's ``reward.default: sokoban`` scores it as well).

Disjoint from training, on two levels:
- Seeds: training level i draws from ``numpy.random.default_rng([seed, boxes, dim, i])``;
  evaluation draw j from ``default_rng([EVAL_STREAM, seed, boxes, dim, j])``. The extra
  leading word makes every evaluation stream differ from every training stream, for any
  seed, so ``seed=0`` here is not training's ``--seed 0``.
- Levels: different streams can still produce the same small room (measured: 6 of 1000
  evaluation levels equal one of the first 3000 training levels of seed 0, 2 boxes, 7x7).
  So a level equal to one of the first ``train_levels`` training levels of ``train_seed``
  (default: the generate CLI's ``--seed 0``, regenerated in memory, for each box count used),
  to any level in ``exclude`` (.npy files, folders searched for .npy files, or jsonl files
  whose rows name an ``env_path``), or to an earlier evaluation level is rejected and the
  next draw is taken. Pass your real training set in ``exclude`` when it is larger than
  ``train_levels`` or was generated with another seed.

Figures, for both modes (``python -m lmm_r1_ascend.eval`` prints them for every sokoban*
datasource and stores them as ``sokoban/<figure>`` in summary.json):
- single-shot: each response is one turn; its plan is simulated as the reward does;
- step by step (``env.name=sokoban``, rollout/multi_turn.py): each trajectory's per-turn infos.
``success_rate`` (solved episodes), ``mean_steps`` (moves the simulator applied per episode;
``mean_steps_solved`` over solved ones), ``invalid_action_rate`` (refused answers / answers).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmm_r1_ascend.envs.sokoban import load_level, save_level
from lmm_r1_ascend.envs.sokoban_generate import generate_level, level_row
from lmm_r1_ascend.envs.sokoban_render import save_png
from lmm_r1_ascend.rewards.sokoban import parse_actions, simulate

EVAL_STREAM = 0x50C0BA  # leading seed word of every evaluation draw (training draws have none)
DATASOURCE = "sokoban_eval"
TRAIN_DEFAULT_SEED = 0  # `python -m lmm_r1_ascend.envs generate --seed` default


def _key(room: np.ndarray) -> bytes:
    room = np.asarray(room, dtype=np.int8)
    return bytes(room.shape) + room.tobytes()


def _excluded_levels(paths: Iterable[str | Path]) -> set[bytes]:
    keys: set[bytes] = set()
    for entry in paths:
        p = Path(entry).expanduser()
        if p.is_dir():
            files = sorted(p.rglob("*.npy"))
        elif p.suffix == ".npy":
            files = [p]
        elif p.suffix in (".jsonl", ".json"):
            rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
            files = [Path(r["env_path"]) for r in rows if isinstance(r, dict) and r.get("env_path")]
        else:
            raise ValueError(f"exclude: {p} is not a folder, .npy level or jsonl of Sokoban rows")
        keys.update(_key(load_level(f)) for f in files)
    return keys


@functools.lru_cache(maxsize=8)
def _training_levels(seed: int, n: int, boxes: tuple[int, ...], dim: int) -> frozenset[bytes]:
    """The first n levels `write_dataset(seed=seed)` would generate, for each box count
    (deterministic, so kept for the next call in this process)."""
    return frozenset(_key(generate_level(np.random.default_rng([seed, b, dim, i]), dim, b)[0])
                     for b in boxes for i in range(n))


def multiturn_name(jsonl_name: str) -> str:
    """The step-by-step rows' file next to the single-shot ``jsonl_name``."""
    return jsonl_name.removesuffix(".jsonl") + "_multiturn.jsonl"


def multiturn_row(row: dict) -> dict:
    """A single-shot row made a step-by-step one on the same level: the multi-turn task's system
    and user text, no image (the board is the `sokoban` env's first observation), as
    envs/sokoban_env.write_multiturn_dataset writes training rows."""
    from lmm_r1_ascend.envs.sokoban_env import MULTITURN_USER_PROMPT
    from lmm_r1_ascend.envs.sokoban_generate import SYSTEM_PROMPT

    message = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": MULTITURN_USER_PROMPT}]
    return {**row, "message": json.dumps(message, ensure_ascii=False)}


def build_sokoban_eval_set(out_dir: str | Path, n_levels: int = 100, seed: int = 0, *,
                           num_boxes: int | Sequence[int] = 2, dim: int = 7, cell: int = 32,
                           train_seed: int | None = TRAIN_DEFAULT_SEED, train_levels: int = 2048,
                           exclude: Iterable[str | Path] = (), jsonl_name: str = "sokoban_eval.jsonl",
                           max_draws_per_level: int = 50) -> Path:
    """Write `n_levels` held-out levels into `out_dir`; return the (single-shot) jsonl path. The same
    levels as step-by-step rows go to `multiturn_name(jsonl_name)` beside it (for env.name=sokoban).

    num_boxes: boxes per level (2: small-v0, 3: small-v1); a sequence cycles over levels.
    dim, cell: room side and pixels per cell, as in the generate CLI.
    train_seed, train_levels: the training set to stay clear of (None or 0 levels: none).
    exclude: more levels to stay clear of (see the module docstring).
    The output depends only on the arguments (and the excluded levels).
    """
    if n_levels < 1:
        raise ValueError(f"n_levels must be >= 1, got {n_levels}")
    boxes = [num_boxes] if isinstance(num_boxes, int) else list(num_boxes)
    if not boxes or any(not isinstance(b, int) or b < 1 for b in boxes):
        raise ValueError(f"num_boxes must be a positive int or a sequence of them, got {num_boxes!r}")
    seen = _excluded_levels(exclude)
    n_excluded = len(seen)
    if train_seed is not None and train_levels > 0:
        seen |= _training_levels(train_seed, train_levels, tuple(sorted(set(boxes))), dim)
    n_blocked = len(seen)
    out = Path(out_dir)
    rows, draws, rejected = [], {b: 0 for b in boxes}, 0
    for i in range(n_levels):
        b = boxes[i % len(boxes)]
        for _ in range(max_draws_per_level):
            rng = np.random.default_rng([EVAL_STREAM, seed, b, dim, draws[b]])
            draws[b] += 1
            state, plan = generate_level(rng, dim, b)
            if _key(state) not in seen:
                break
            rejected += 1
        else:
            raise RuntimeError(f"no new {dim}x{dim} level with {b} boxes in {max_draws_per_level} draws: the "
                               "excluded set covers this level space; use fewer levels or a bigger room")
        seen.add(_key(state))
        level_id = f"sokoban_eval_{dim}x{dim}_b{b}_s{seed}_{i:05d}"
        npy = save_level(out / "levels" / f"{level_id}.npy", state)
        png = save_png(state, out / "images" / f"{level_id}.png", cell)
        row = level_row(level_id, npy, png, datasource=DATASOURCE)
        row["min_actions"] = len(plan)
        rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    path = out / jsonl_name
    multiturn = out / multiturn_name(jsonl_name)
    with open(path, "w", encoding="utf-8") as f, open(multiturn, "w", encoding="utf-8") as g:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            g.write(json.dumps(multiturn_row(row), ensure_ascii=False) + "\n")
    manifest = {"levels": n_levels, "seed": seed, "eval_stream": EVAL_STREAM, "num_boxes": boxes, "dim": dim,
                "cell": cell, "train_seed": train_seed, "train_levels": train_levels,
                "excluded_from_files": n_excluded, "blocked_levels": n_blocked, "rejected_draws": rejected,
                "datasource": DATASOURCE, "jsonl": jsonl_name, "jsonl_multiturn": multiturn.name}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return path


# -- Figures for both modes: success rate, mean steps, invalid-action rate ----------------------

@dataclass(frozen=True)
class Episode:
    """One played level. steps: moves the simulator applied. turns: policy answers (1 in the
    single-shot mode). invalid_turns: answers the task refused (format, no move, too many moves).
    env_error: the guard's line when the episode ended on an environment error, else ""."""

    solved: bool
    steps: int
    turns: int
    invalid_turns: int
    env_error: str = ""


def single_shot_episode(room: np.ndarray, response: str) -> Episode:
    """The single-shot task's episode: the whole plan simulated as the `sokoban` reward does
    (rewards/sokoban.simulate: the first 50 moves, stopping once solved); an answer that fails
    the format is one invalid turn with no move."""
    actions = parse_actions(response)
    if actions is None:
        return Episode(solved=False, steps=0, turns=1, invalid_turns=1)
    _, solved, steps = simulate(room, actions)
    return Episode(solved=solved, steps=steps, turns=1, invalid_turns=0)


def multi_turn_episode(infos: Sequence[Mapping[str, Any]], env_error: str = "") -> Episode:
    """The step-by-step episode from the `sokoban` env's per-turn infos (envs/sokoban_env.py:
    invalid_action, steps = moves so far, solved). A turn the guard ended (env_error) is a turn,
    not an invalid one."""
    solved = any(bool(i.get("solved")) for i in infos)
    steps = max((int(i["steps"]) for i in infos if "steps" in i), default=0)
    invalid = sum(bool(i.get("invalid_action")) for i in infos)
    error = env_error or next((str(i["env_error"]) for i in infos if i.get("env_error")), "")
    return Episode(solved=solved, steps=steps, turns=len(infos), invalid_turns=invalid, env_error=error)


def sokoban_figures(episodes: Sequence[Episode]) -> dict[str, float]:
    """success_rate: solved / episodes. mean_steps: moves per episode (all episodes);
    mean_steps_solved: over solved episodes only (nan when none). invalid_action_rate: invalid
    turns / turns (over all turns of all episodes). mean_turns, env_error_rate, episodes."""
    if not episodes:
        raise ValueError("no Sokoban episodes to summarise")
    solved = [e for e in episodes if e.solved]
    turns = sum(e.turns for e in episodes)
    return {
        "success_rate": len(solved) / len(episodes),
        "mean_steps": float(np.mean([e.steps for e in episodes])),
        "mean_steps_solved": float(np.mean([e.steps for e in solved])) if solved else float("nan"),
        "invalid_action_rate": sum(e.invalid_turns for e in episodes) / turns if turns else 0.0,
        "mean_turns": turns / len(episodes),
        "env_error_rate": sum(bool(e.env_error) for e in episodes) / len(episodes),
        "episodes": float(len(episodes)),
    }


def is_sokoban(datasource: str) -> bool:
    """Rows the Sokoban figures cover: the datasources the eval routes to the sokoban reward."""
    return datasource.startswith("sokoban")


def episodes_from_samples(samples: Iterable[Any], decode: Callable[[Any], str]) -> dict[str, list[Episode]]:
    """{datasource: episodes} for the Sokoban samples (RolloutSamples) of an eval: a multi-turn
    sample (``.trajectory`` set, rollout/multi_turn.py) from its per-turn infos, a single-shot one
    by simulating ``decode(sample)`` on the level its row names (envs/sokoban_env.level_from_task, as
    the step-by-step env reads it: meta env_path / level)."""
    from lmm_r1_ascend.envs.sokoban_env import level_from_task

    out: dict[str, list[Episode]] = {}
    for s in samples:
        if not is_sokoban(s.prompt.datasource):
            continue
        traj = s.trajectory
        if traj is not None:
            ep = multi_turn_episode(traj.infos, traj.env_error)
        else:
            try:
                room = level_from_task(s.prompt.meta)
            except ValueError as err:
                raise ValueError(f"Sokoban row {s.prompt.meta.get('source', '?')}: {err}") from None
            ep = single_shot_episode(room, decode(s))
        out.setdefault(s.prompt.datasource, []).append(ep)
    return out


def format_sokoban_table(figures: Mapping[str, Mapping[str, float]]) -> str:
    """A plain-text table of sokoban_figures per datasource."""
    keys = ("success_rate", "mean_steps", "mean_steps_solved", "invalid_action_rate", "mean_turns", "episodes")
    width = max(len(s) for s in figures) + 2
    rows = [f"{'sokoban':<{width}}" + "".join(f"{k:>20}" for k in keys)]
    for source, f in sorted(figures.items()):
        rows.append(f"{source:<{width}}" + "".join(
            f"{f[k]:>20.0f}" if k == "episodes" else f"{f[k]:>20.3f}" for k in keys))
    return "\n".join(rows)
