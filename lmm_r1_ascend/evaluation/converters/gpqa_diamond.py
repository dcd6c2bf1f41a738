"""GPQA-diamond: its converter (the columns it reads are in the docstring; docs/benchmarks.md)."""

from __future__ import annotations

import random

from lmm_r1_ascend.evaluation.converters.common import (
    LETTERS,
    MC_INSTRUCTION,
    Benchmark,
    RowContext,
    boxed,
    field_text,
    options_text,
    output,
)


def gpqa_diamond(row: dict, ctx: RowContext) -> dict:
    """GPQA-diamond (Idavidrein/gpqa, config gpqa_diamond, split train; gpqa_diamond.csv, gated):
    reads Question, Correct Answer, Incorrect Answer 1-3, Record ID (id), High-level domain,
    Subdomain. The four answers are shuffled with random.Random(seed + row index) into options
    A-D listed under the question; the label is the correct answer's letter."""
    question = field_text(row, "Question")
    correct = field_text(row, "Correct Answer")
    options = [correct] + [field_text(row, f"Incorrect Answer {k}") for k in (1, 2, 3)]
    random.Random(ctx.seed + ctx.index).shuffle(options)
    letter = LETTERS[options.index(correct)]
    text = f"{question}\n\n{options_text(options)}\n\n{MC_INSTRUCTION}"
    return output(text, [], boxed(letter), question, row.get("Record ID"),
                domain=row.get("High-level domain"), subdomain=row.get("Subdomain"))


BENCHMARK = Benchmark("gpqa_diamond", "Idavidrein/gpqa (gpqa_diamond)", ("gpqa_diamond", "train"), gpqa_diamond)
