"""Generated arithmetic problems for the CPU demo, as LMM-R1 jsonl rows and as images.

A problem is a short integer expression (``23 + 58``, ``7 * 6``, ``12 + 9 - 4``) with one
exact answer. Problems are drawn from a finite universe set by a difficulty ``level``; each
problem belongs to exactly one split, decided by a hash of its text, so train and eval never
overlap whatever the seed or sizes. The same seed gives the same problems.

    rows = [problem_row(p) for p in generate_problems(256, split="train", level=2, seed=0)]
    write_demo_dataset("data/demo", images=True)      # whole splits of DEFAULT_LEVEL

Rows follow RECIPE.md: ``message`` is a JSON *string* of [system, user] turns, ``answer`` is
``"$\\boxed{N}$"``, ``response`` is the worked reference response (what the SFT stage trains on),
``datasource`` is ``"demo_arithmetic"`` (``"demo_arithmetic_images"`` for image rows, so validation on both
held-out sets reports text and image accuracy apart: eval/<datasource>/accuracy). Image rows (for the MGT demo)
have user content ``[{"type": "image", "image": "images/<name>.png"}, {"type": "text", ...}]``
with the path relative to the jsonl file.

CLI: ``python -m lmm_r1_ascend.demo.arithmetic OUT_DIR [--level 2] [--images]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

DATASOURCE = "demo_arithmetic"
IMAGE_DATASOURCE = "demo_arithmetic_images"
# RECIPE.md's math system prompt, shortened so prompts stay short for a CPU demo (34 tokens with
# the tiny tokenizer, against ~70 for the full one).
DEMO_SYSTEM_PROMPT = (
    "First think, then answer: the reasoning in <think> </think>, the answer in <answer> </answer>, "
    "the final answer in \\boxed{}."
)
IMAGE_QUESTION = "What is the value of the expression in the image?"
SPLITS = ("train", "eval")
OPS = ("+", "-", "*")


@dataclass(frozen=True)
class Level:
    """The universe of one difficulty level.

    max_operand: largest operand of + and -; max_factor: largest operand of *;
    steps: operations per problem (1 or 2; two-step problems evaluate left to right,
    with * only as the first operation so precedence agrees).
    """

    max_operand: int
    max_factor: int
    steps: int
    ops: tuple[str, ...] = OPS


LEVELS: dict[int, Level] = {
    1: Level(max_operand=10, max_factor=5, steps=1),
    2: Level(max_operand=20, max_factor=9, steps=1),
    3: Level(max_operand=50, max_factor=12, steps=1),
    4: Level(max_operand=20, max_factor=9, steps=2),
}
DEFAULT_LEVEL = 2  # the FRE demo's level: the shipped warm-up model learned its train split


@dataclass(frozen=True)
class Problem:
    """An expression ``operands[0] ops[0] operands[1] (ops[1] operands[2])``; results never negative."""

    operands: tuple[int, ...]
    ops: tuple[str, ...]

    @property
    def expression(self) -> str:
        parts = [str(self.operands[0])]
        for op, x in zip(self.ops, self.operands[1:]):
            parts += [op, str(x)]
        return " ".join(parts)

    @property
    def question(self) -> str:
        return f"What is {self.expression}?"

    def steps(self) -> list[tuple[int, str, int, int]]:
        """The worked steps (left, op, right, result), evaluated left to right."""
        out, acc = [], self.operands[0]
        for op, x in zip(self.ops, self.operands[1:]):
            nxt = acc + x if op == "+" else acc - x if op == "-" else acc * x
            out.append((acc, op, x, nxt))
            acc = nxt
        return out

    @property
    def answer(self) -> int:
        return self.steps()[-1][3]

    @property
    def label(self) -> str:
        return f"$\\boxed{{{self.answer}}}$"

    @property
    def split(self) -> str:
        """'eval' for about 1 problem in 8 (a hash of the expression), else 'train'."""
        digest = hashlib.sha256(self.expression.encode()).digest()
        return "eval" if digest[0] < 32 else "train"


def worked_response(problem: Problem, answer: int | None = None) -> str:
    """The response in the exact LMM-R1 format, with the worked steps in the think part.

    answer: the number to put in the box (default: the true answer; tests pass a wrong one).
    E.g. ``<think> 23 + 58 = 81 </think><answer> $\\boxed{81}$ </answer>``.
    """
    think = " , ".join(f"{a} {op} {b} = {r}" for a, op, b, r in problem.steps())
    value = problem.answer if answer is None else answer
    return f"<think> {think} </think><answer> $\\boxed{{{value}}}$ </answer>"


def _operand_pairs(op: str, level: Level, left: int | None = None) -> list[tuple[int, int]]:
    top = level.max_factor if op == "*" else level.max_operand
    lefts = range(top + 1) if left is None else [left]
    return [(a, b) for a in lefts for b in range(top + 1) if op != "-" or b <= a]


def all_problems(level: int | Level) -> list[Problem]:
    """Every problem of a level, in a fixed order."""
    lv = LEVELS[level] if isinstance(level, int) else level
    if lv.steps not in (1, 2):
        raise ValueError(f"steps must be 1 or 2, got {lv.steps}")
    singles = [Problem((a, b), (op,)) for op in lv.ops for a, b in _operand_pairs(op, lv)]
    if lv.steps == 1:
        return singles
    out = []
    for p in singles:
        for op in lv.ops:
            if op == "*":  # keeps left-to-right evaluation equal to the usual precedence
                continue
            for _, c in _operand_pairs(op, lv, left=p.answer):
                out.append(Problem(p.operands + (c,), p.ops + (op,)))
    return out


def generate_problems(n: int, *, split: str = "train", level: int = DEFAULT_LEVEL,
                      seed: int = 0) -> list[Problem]:
    """``n`` distinct problems of ``split`` at ``level``, shuffled by ``seed`` (deterministic).

    Raises ValueError when the split holds fewer than ``n`` problems at that level.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}: choose one of {sorted(LEVELS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    pool = [p for p in all_problems(level) if p.split == split]
    if n > len(pool):
        raise ValueError(f"level {level} has only {len(pool)} {split} problems, {n} were asked for; "
                         "ask for fewer or pick a higher level")
    random.Random(f"{seed}|{split}|{level}").shuffle(pool)
    return pool[:n]


def problem_messages(problem: Problem, *, image: str | None = None,
                     system_prompt: str = DEMO_SYSTEM_PROMPT) -> list[dict]:
    """The chat turns: system, then the question as text, or as [image, short text]."""
    user: str | list[dict]
    if image is None:
        user = problem.question
    else:
        user = [{"type": "image", "image": image}, {"type": "text", "text": IMAGE_QUESTION}]
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


def problem_row(problem: Problem, *, image: str | None = None,
                system_prompt: str = DEMO_SYSTEM_PROMPT) -> dict:
    """One LMM-R1 jsonl row (``message`` is a JSON string, as in the paper's data files)."""
    msgs = problem_messages(problem, image=image, system_prompt=system_prompt)
    return {"message": json.dumps(msgs, ensure_ascii=False), "answer": problem.label,
            "response": worked_response(problem), "question": problem.expression,
            "datasource": DATASOURCE if image is None else IMAGE_DATASOURCE}


def image_layout(problem: Problem, size: tuple[int, int] = (224, 56), font_size: int = 30):
    """Where ``render_problem_image`` draws: (text ``23 + 58 = ?``, top-left xy, PIL font), centred."""
    from PIL import Image, ImageDraw, ImageFont

    draw = ImageDraw.Draw(Image.new("RGB", size, "white"))
    font = ImageFont.load_default(size=font_size)
    text = f"{problem.expression} = ?"
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return text, ((size[0] - (right - left)) / 2 - left, (size[1] - (bottom - top)) / 2 - top), font


def render_problem_image(problem: Problem, size: tuple[int, int] = (224, 56), font_size: int = 30):
    """The expression drawn as ``23 + 58 = ?`` in black on white: a PIL RGB image of ``size`` (w, h)."""
    from PIL import Image, ImageDraw

    text, xy, font = image_layout(problem, size, font_size)
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text(xy, text, fill="black", font=font)
    return image


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def split_size(split: str, level: int) -> int:
    """How many problems ``split`` holds at ``level``."""
    return sum(p.split == split for p in all_problems(level))


def write_demo_dataset(out_dir: str | Path, *, n_train: int | None = None, n_eval: int | None = None,
                       level: int = DEFAULT_LEVEL, seed: int = 0, images: bool = False) -> dict[str, Path]:
    """Write ``train.jsonl`` and ``eval.jsonl`` (and, with ``images``, ``train_images.jsonl``,
    ``eval_images.jsonl`` and the PNGs under ``images/``). ``None`` sizes take the whole split.
    Returns the written jsonl paths by name."""
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    for split, n in (("train", n_train), ("eval", n_eval)):
        n = split_size(split, level) if n is None else n
        problems = generate_problems(n, split=split, level=level, seed=seed)
        paths[split] = write_jsonl((problem_row(p) for p in problems), out / f"{split}.jsonl")
        if images:
            rows = []
            for p in problems:
                rel = f"images/{split}_{p.expression.replace(' ', '')}.png".replace("*", "x")
                (out / "images").mkdir(parents=True, exist_ok=True)
                render_problem_image(p).save(out / rel)
                rows.append(problem_row(p, image=rel))
            paths[f"{split}_images"] = write_jsonl(rows, out / f"{split}_images.jsonl")
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write the demo's arithmetic problems as LMM-R1 jsonl.")
    ap.add_argument("out_dir")
    ap.add_argument("--n-train", type=int, default=None, help="default: the whole train split")
    ap.add_argument("--n-eval", type=int, default=None, help="default: the whole eval split")
    ap.add_argument("--level", type=int, default=DEFAULT_LEVEL, choices=sorted(LEVELS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", action="store_true", help="also draw each problem as a PNG")
    args = ap.parse_args(argv)
    try:
        paths = write_demo_dataset(args.out_dir, n_train=args.n_train, n_eval=args.n_eval, level=args.level,
                                   seed=args.seed, images=args.images)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
