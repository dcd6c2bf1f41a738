"""Evaluation: score n sampled responses per prompt and summarise them per datasource
(accuracy, pass@k, maj@k, response lengths, statuses). metrics.py is pure math on records.
"""

from lmm_r1_ascend.evaluation.metrics import answer_classes, ks_for, length_stats, maj_at_k, pass_at_k, summarise

__all__ = ["answer_classes", "ks_for", "length_stats", "maj_at_k", "pass_at_k", "summarise"]
