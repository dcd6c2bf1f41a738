"""MMStar: its converter (the columns it reads are in the docstring; docs/benchmarks.md)."""

from __future__ import annotations

from lmm_r1_ascend.evaluation.converters.common import (
    MC_INSTRUCTION,
    Benchmark,
    RowContext,
    bad,
    boxed,
    field_text,
    need,
    output,
)
from lmm_r1_ascend.rewards.multiple_choice import option_letter


def mmstar(row: dict, ctx: RowContext) -> dict:
    """MMStar (Lin-Chen/MMStar, split val; mmstar.parquet): reads index (id), question (the
    options are written inside it), image, answer (an option letter), category, l2_category."""
    question = field_text(row, "question")
    answer = field_text(row, "answer")
    letter = option_letter(answer, case_sensitive=False)
    if letter is None:
        raise bad("bad_field", f"column 'answer' ({answer!r}) is not an option letter")
    uri = ctx.image(need(row, "image")[1], "image")
    return output(f"{question}\n{MC_INSTRUCTION}", [uri], boxed(letter), question, row.get("index"),
                category=row.get("category"), l2_category=row.get("l2_category"))


BENCHMARK = Benchmark("mmstar", "Lin-Chen/MMStar", ("val",), mmstar)
