"""MATH-500: its converter (the columns it reads are in the docstring; docs/benchmarks.md)."""

from __future__ import annotations

from lmm_r1_ascend.evaluation.converters.common import Benchmark, RowContext, boxed, field_text, output


def math500(row: dict, ctx: RowContext) -> dict:
    """MATH-500 (HuggingFaceH4/MATH-500, split test; test.jsonl): reads problem, answer,
    unique_id (id), subject, level (solution is not used). Prompt: the problem; label: boxed answer."""
    problem = field_text(row, "problem")
    return output(problem, [], boxed(field_text(row, "answer")), problem, row.get("unique_id"),
                subject=row.get("subject"), level=row.get("level"))


BENCHMARK = Benchmark("math500", "HuggingFaceH4/MATH-500", ("test",), math500)
