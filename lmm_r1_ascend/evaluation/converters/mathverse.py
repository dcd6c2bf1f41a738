"""MathVerse testmini: its converter (the columns it reads are in the docstring; docs/benchmarks.md)."""

from __future__ import annotations

from lmm_r1_ascend.evaluation.converters.common import (
    Benchmark,
    RowContext,
    bad,
    boxed,
    field_text,
    need,
    output,
    present,
)
from lmm_r1_ascend.rewards.multiple_choice import option_letter


def mathverse_testmini(row: dict, ctx: RowContext) -> dict:
    """MathVerse testmini (AI4Math/MathVerse, config/split testmini; testmini.parquet): reads
    sample_index (id), problem_index, problem_version, question, query_cot (the CoT prompt;
    else query_wo, else question), image, answer, question_type (multi-choice: the label is the
    option letter in answer; free-form: the boxed answer), metadata.subject/subfield. Vision-only
    versions have the question inside the image, so the query is required, not the question."""
    text = field_text(row, "query_cot", "query_wo", "question")
    question = str(row.get("question") or "").strip()
    answer = field_text(row, "answer")
    if str(row.get("question_type", "")).replace("_", "-") == "multi-choice":
        letter = option_letter(answer, case_sensitive=False)
        if letter is None:
            raise bad("bad_field", f"column 'answer' ({answer!r}) is not an option letter (multi-choice)")
        label = boxed(letter)
    else:
        label = boxed(answer)
    images = []
    if row.get("problem_version") != "Text Only" or present(row.get("image")):
        images.append(ctx.image(need(row, "image")[1], "image"))
    meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
    return output(text, images, label, question, row.get("sample_index"), problem_index=row.get("problem_index"),
                problem_version=row.get("problem_version"), question_type=row.get("question_type"),
                subject=meta.get("subject"), subfield=meta.get("subfield"))


BENCHMARK = Benchmark("mathverse_testmini", "AI4Math/MathVerse", ("testmini",), mathverse_testmini)
