"""LMM-R1 rows into PromptItems: ChatML text, <|image_pad|> expansion, pixel values, resizing.

References are independent of the pipeline: the expected prompt text is written out in
ChatML by hand, pad counts come from the image size (side / patch_size, merged merge_size^2
to one token), and pixel values come from the image processor called directly on the
original files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lmm_r1_ascend.data import MATH_SYSTEM_PROMPT, PromptDataset, load_processors, mm_token_type_ids
from lmm_r1_ascend.models.tiny import ensure_tiny_model

PATCH, MERGE = 14, 2
PAD = "<|image_pad|>"
VISION = "<|vision_start|>{}<|vision_end|>"


@pytest.fixture(scope="module")
def processors(tmp_path_factory):
    path = ensure_tiny_model("tiny-qwen2.5-vl", cache_dir=tmp_path_factory.mktemp("tiny"))
    tokenizer, image_processor = load_processors(path)
    assert image_processor is not None
    return tokenizer, image_processor


def _png(path, height, width, rng, mode="RGB"):
    channels = 4 if mode == "RGBA" else 3
    Image.fromarray(rng.integers(0, 256, (height, width, channels), dtype=np.uint8), mode).save(path)
    return path


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _chatml(system, user):
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n")


def test_lmm_r1_rows_become_prompt_items(tmp_path, processors, rng_seed):
    tokenizer, image_processor = processors
    rng = np.random.default_rng(rng_seed)
    (tmp_path / "imgs").mkdir()
    # Sides are multiples of 28 inside [min, max] pixels, so no resizing happens and the pad count
    # is simply (h/14)*(w/14)/4; the first is the 56x84 -> 4x6 patches -> 6 pads example.
    sizes = [(56, 84)] + [tuple(28 * int(v) for v in rng.integers(2, 7, size=2)) for _ in range(2)]
    a = _png(tmp_path / "imgs" / "a.png", *sizes[0], rng)                 # absolute path
    _png(tmp_path / "imgs" / "b.png", *sizes[1], rng)                      # relative path
    c = _png(tmp_path / "imgs" / "c.png", *sizes[2], rng, mode="RGBA")    # file:// URI, with alpha
    multi = [{"role": "system", "content": "Look closely."},
             {"role": "user", "content": [{"type": "image", "image": str(a)},
                                          {"type": "text", "text": "Compare"},
                                          {"type": "image", "image": "imgs/b.png"},
                                          {"type": "image", "image": c.as_uri()},
                                          {"type": "text", "text": " these."}]}]
    text_only = [{"role": "system", "content": MATH_SYSTEM_PROMPT}, {"role": "user", "content": "What is 3 + 4?"}]
    data = _write_jsonl(tmp_path / "train.jsonl", [
        {"message": json.dumps(text_only), "answer": "$7$", "datasource": "math", "question": "q0"},
        {"message": json.dumps(multi), "answer": "$\\boxed{2}$"},
    ])
    ds = PromptDataset(data, tokenizer, image_processor, shuffle=False)
    assert len(ds) == 2 and ds.counts == {"data/rows": 2, "data/kept": 2, "data/skipped_bad": 0,
                                          "data/filtered_too_long": 0}

    text_item, image_item = ds[0], ds[1]
    expected = _chatml(MATH_SYSTEM_PROMPT, "What is 3 + 4?")
    assert text_item.prompt_text == expected
    assert tokenizer.decode(text_item.prompt_ids, skip_special_tokens=False) == expected
    assert text_item.images == [] and text_item.pixel_values is None and text_item.num_images == 0
    assert (text_item.label, text_item.datasource) == ("$7$", "math")
    assert text_item.meta == {"question": "q0", "source": f"{data}:1"}

    pads = [(h // PATCH) * (w // PATCH) // MERGE**2 for h, w in sizes]
    assert pads[0] == 6
    one = VISION.format(PAD)
    assert image_item.prompt_text == _chatml("Look closely.", f"{one}Compare{one}{one} these.")
    expanded = [VISION.format(PAD * n) for n in pads]
    expanded_text = _chatml("Look closely.", f"{expanded[0]}Compare{expanded[1]}{expanded[2]} these.")
    assert tokenizer.decode(image_item.prompt_ids, skip_special_tokens=False) == expanded_text
    assert image_item.prompt_ids == tokenizer(expanded_text, add_special_tokens=False)["input_ids"]
    pad_id = tokenizer.convert_tokens_to_ids(PAD)
    assert sum(mm_token_type_ids(image_item.prompt_ids, pad_id)) == sum(pads)
    assert (image_item.label, image_item.datasource, image_item.meta["source"]) == ("$\\boxed{2}$", "default",
                                                                                     f"{data}:2")

    direct = image_processor(images=[Image.open(p) for p in (a, tmp_path / "imgs" / "b.png", c)],
                             return_tensors="pt")
    assert image_item.num_images == 3
    assert image_item.image_grid_thw.dtype == torch.int64 and image_item.pixel_values.dtype == torch.float32
    assert torch.equal(image_item.image_grid_thw, direct["image_grid_thw"])
    assert image_item.image_grid_thw.tolist() == [[1, h // PATCH, w // PATCH] for h, w in sizes]
    # Same uint8 pixels through the same float32 rescale/normalise ops: bit-identical.
    assert torch.equal(image_item.pixel_values, direct["pixel_values"])
    assert [(im.mode, im.height, im.width) for im in image_item.images] == [("RGB", h, w) for h, w in sizes]


def _aspect_error_bound(h, w):
    # smart_resize rounds each side to a multiple of 28 after scaling, moving it by less than 28
    # pixels, so the aspect ratio moves by a relative error below 28 / (shorter side - 28).
    return 28 / (min(h, w) - 28)


def test_images_are_resized_within_min_and_max_pixels(tmp_path, processors, rng_seed):
    tokenizer, _ = processors
    from transformers import Qwen2VLImageProcessorPil

    rng = np.random.default_rng(rng_seed)
    min_px, max_px = 64 * 28 * 28, 96 * 28 * 28
    small = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))          # area < min_px: upscaled
    big = (int(rng.integers(400, 700)), int(rng.integers(400, 700)))        # area > max_px: downscaled
    _png(tmp_path / "small.png", *small, rng)
    _png(tmp_path / "big.png", *big, rng)
    rows = [{"message": json.dumps([{"role": "user", "content": [{"type": "image", "image": name},
                                                                 {"type": "text", "text": "Describe."}]}]),
             "answer": ""} for name in ("small.png", "big.png")]
    ds = PromptDataset(_write_jsonl(tmp_path / "d.jsonl", rows), tokenizer,
                       Qwen2VLImageProcessorPil(min_pixels=4 * 28 * 28, max_pixels=16384 * 28 * 28),
                       min_pixels=min_px, max_pixels=max_px, shuffle=False)
    direct = Qwen2VLImageProcessorPil(min_pixels=min_px, max_pixels=max_px)
    for i, (orig_h, orig_w) in enumerate((small, big)):
        item = ds[i]
        (image,) = item.images
        h, w = image.height, image.width
        assert h % 28 == 0 and w % 28 == 0
        assert min_px <= h * w <= max_px
        if i == 0:
            assert h > orig_h and w > orig_w
        else:
            assert h < orig_h and w < orig_w
        assert abs((h / w) / (orig_h / orig_w) - 1) < _aspect_error_bound(h, w)
        assert item.image_grid_thw.tolist() == [[1, h // PATCH, w // PATCH]]
        pads = (h // PATCH) * (w // PATCH) // MERGE**2
        assert item.prompt_ids.count(tokenizer.convert_tokens_to_ids(PAD)) == pads
        ref = direct(images=[Image.open(tmp_path / ("small.png", "big.png")[i])], return_tensors="pt")
        assert torch.equal(item.image_grid_thw, ref["image_grid_thw"])
        # Bicubic resize of the same uint8 pixels by the same PIL call: bit-identical.
        assert torch.equal(item.pixel_values, ref["pixel_values"])
        assert len(item.prompt_ids) == ds.lengths[i]


def test_system_prompt_is_added_only_where_missing(tmp_path, processors):
    tokenizer, image_processor = processors
    rows = [{"message": json.dumps([{"role": "user", "content": "Add 1 and 2."}]), "answer": "3"},
            {"message": json.dumps([{"role": "system", "content": "Own prompt."},
                                    {"role": "user", "content": "Add 1 and 2."}]), "answer": "3"}]
    ds = PromptDataset(_write_jsonl(tmp_path / "d.jsonl", rows), tokenizer, image_processor,
                       system_prompt=MATH_SYSTEM_PROMPT, shuffle=False)
    assert ds[0].prompt_text == _chatml(MATH_SYSTEM_PROMPT, "Add 1 and 2.")
    assert ds[1].prompt_text == _chatml("Own prompt.", "Add 1 and 2.")
    assert "\\boxed{}" in MATH_SYSTEM_PROMPT and "<think>" in MATH_SYSTEM_PROMPT and "<answer>" in MATH_SYSTEM_PROMPT


def test_text_model_has_no_image_processor(tmp_path):
    tokenizer, image_processor = load_processors(ensure_tiny_model("tiny-qwen2", cache_dir=tmp_path))
    assert image_processor is None and tokenizer.chat_template
