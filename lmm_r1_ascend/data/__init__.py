"""Prompt data: LMM-R1 jsonl, chat jsonl and HF datasets into templated, image-processed prompts."""

from lmm_r1_ascend.data.dataset import PromptDataset
from lmm_r1_ascend.data.errors import DataError
from lmm_r1_ascend.data.images import ImageGeometry
from lmm_r1_ascend.data.readers import FieldMap
from lmm_r1_ascend.data.templating import (
    IMAGE_PAD,
    MATH_SYSTEM_PROMPT,
    PromptTemplate,
    load_processors,
    mm_token_type_ids,
)
from lmm_r1_ascend.data.types import PromptItem

__all__ = [
    "DataError", "FieldMap", "IMAGE_PAD", "ImageGeometry", "MATH_SYSTEM_PROMPT", "PromptDataset", "PromptItem",
    "PromptTemplate", "load_processors", "mm_token_type_ids",
]
