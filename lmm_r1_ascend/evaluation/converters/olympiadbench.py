"""OlympiadBench: its converter (the columns it reads are in the docstring; docs/benchmarks.md)."""

from __future__ import annotations

from lmm_r1_ascend.evaluation.converters.common import (
    Benchmark,
    RowContext,
    bad,
    boxed,
    field_list,
    field_text,
    output,
    present,
    strip_math,
)


def olympiadbench(row: dict, ctx: RowContext) -> dict:
    """OlympiadBench (Hothan/OlympiadBench, the text-only English maths subset
    OE_TO_maths_en_COMP, split train): reads question, final_answer (a list of LaTeX strings,
    joined with ", " when several), context (prepended when present), image_1..image_5 (used
    when present, so the OE_MM subsets convert too), id, answer_type, unit, subfield,
    is_multiple_answer. The unit is not added to the prompt or the label."""
    question = field_text(row, "question")
    answers = field_list(row, "final_answer")
    if not answers:
        raise bad("missing_field", "missing column 'final_answer' (empty: a proof problem has none)")
    context = row.get("context")
    text = f"{context.strip()}\n\n{question}" if isinstance(context, str) and context.strip() else question
    images = [ctx.image(row[f"image_{k}"], f"image_{k}") for k in range(1, 6) if present(row.get(f"image_{k}"))]
    return output(text, images, boxed(", ".join(strip_math(a) for a in answers)), question, row.get("id"),
                answer_type=row.get("answer_type"), unit=row.get("unit") or None, subfield=row.get("subfield"),
                is_multiple_answer=row.get("is_multiple_answer"))


BENCHMARK = Benchmark("olympiadbench", "Hothan/OlympiadBench (OE_TO_maths_en_COMP)", ("OE_TO_maths_en_COMP",), olympiadbench)
