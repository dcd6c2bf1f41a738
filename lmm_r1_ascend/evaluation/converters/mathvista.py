"""MathVista testmini: its converter (the columns it reads are in the docstring; docs/benchmarks.md)."""

from __future__ import annotations

from lmm_r1_ascend.evaluation.converters.common import (
    MC_INSTRUCTION,
    Benchmark,
    RowContext,
    bad,
    boxed,
    choice_letter,
    field_list,
    field_text,
    need,
    options_text,
    output,
    present,
)


def mathvista_testmini(row: dict, ctx: RowContext) -> dict:
    """MathVista testmini (AI4Math/MathVista, split testmini): reads pid (id), query (the
    benchmark's own prompt with its hint; question plus the choices when query is absent),
    decoded_image (else image, a path relative to the source), answer, choices,
    question_type (multi_choice: the label is the letter of the answer among choices; else the
    boxed answer), answer_type, precision, unit, metadata.category/task."""
    question = field_text(row, "question")
    choices = field_list(row, "choices")
    multi = row.get("question_type") == "multi_choice"
    if multi and not choices:
        raise bad("missing_field", "missing column 'choices' (question_type is multi_choice)")
    if present(row.get("query")):
        text = field_text(row, "query")
    else:
        text = f"{question}\n\nChoices:\n{options_text(choices)}\n\n{MC_INSTRUCTION}" if multi else question
    answer = field_text(row, "answer")
    label = boxed(choice_letter(answer, choices, "answer", letter_first=False)) if multi else boxed(answer)
    col, image = need(row, "decoded_image", "image")
    uri = ctx.image(image, col)
    meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
    return output(text, [uri], label, question, row.get("pid"), question_type=row.get("question_type"),
                answer_type=row.get("answer_type"), precision=row.get("precision"), unit=row.get("unit") or None,
                category=meta.get("category"), task=meta.get("task"))


BENCHMARK = Benchmark("mathvista_testmini", "AI4Math/MathVista", ("testmini",), mathvista_testmini)
