"""The paper's evaluation benchmarks, from their public layouts into LMM-R1 jsonl: one module
per benchmark (math500, gpqa_diamond, olympiadbench, mathvista, mathverse, mathvision, mmstar),
what they share in common.py, the registry and `convert` in registry.py."""

from lmm_r1_ascend.evaluation.converters.common import Benchmark, RowContext, boxed
from lmm_r1_ascend.evaluation.converters.registry import (
    BENCHMARKS,
    ConvertReport,
    convert,
    load_rows,
    register_benchmark,
)

__all__ = ["BENCHMARKS", "Benchmark", "ConvertReport", "RowContext", "boxed", "convert", "load_rows",
           "register_benchmark"]
