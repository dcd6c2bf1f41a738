"""Experience: the rollout batch type (per-sample tensors, no padding), mini-batches and
token-budget micro-batches for gradient accumulation."""

from __future__ import annotations

from lmm_r1_ascend.experience.batch import OPTIONAL_TOKEN_FIELDS, TOKEN_FIELDS, ExperienceBatch, check_groups
from lmm_r1_ascend.experience.micro import MicroBatch, collate_multimodal, micro_batches, minibatches

__all__ = [
    "OPTIONAL_TOKEN_FIELDS", "TOKEN_FIELDS", "ExperienceBatch", "MicroBatch", "check_groups",
    "collate_multimodal", "micro_batches", "minibatches",
]
