"""MATH-Vision test: its converter (the columns it reads are in the docstring; docs/benchmarks.md)."""

from __future__ import annotations

from lmm_r1_ascend.evaluation.converters.common import (
    MC_INSTRUCTION,
    Benchmark,
    RowContext,
    boxed,
    choice_letter,
    field_list,
    field_text,
    need,
    options_text,
    output,
)


def mathvision_test(row: dict, ctx: RowContext) -> dict:
    """MATH-Vision test (MathLLMs/MathVision, split test): reads id, question (kept with its
    <image1> marker), options (a list; empty for free-form questions), decoded_image (else
    image, a path), answer (an option letter when options exist), level, subject. Options are
    listed as (A) ... under the question; the label is the letter or the boxed answer."""
    question = field_text(row, "question")
    options = field_list(row, "options")
    answer = field_text(row, "answer")
    if options:
        text = f"{question}\n\nChoices:\n{options_text(options)}\n\n{MC_INSTRUCTION}"
        label = boxed(choice_letter(answer, options, "answer", letter_first=True))
    else:
        text, label = question, boxed(answer)
    col, image = need(row, "decoded_image", "image")
    return output(text, [ctx.image(image, col)], label, question, row.get("id"),
                level=row.get("level"), subject=row.get("subject"))


BENCHMARK = Benchmark("mathvision_test", "MathLLMs/MathVision", ("test",), mathvision_test)
