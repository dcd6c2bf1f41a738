"""Fixtures shared by the unit tests of the data pipeline."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny models' offline byte-level BPE tokenizer (with the chat template)."""
    from lmm_r1_ascend.models.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="module")
def image_processor():
    """Qwen2-VL's PIL image processor at the recipe's pixel bounds (torchvision-free)."""
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=4 * 28 * 28, max_pixels=16384 * 28 * 28)
