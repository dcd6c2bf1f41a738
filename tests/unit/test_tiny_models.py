"""Built-in tiny models: offline, deterministic from a seed, loadable as real checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lmm_r1_ascend.models.tiny import SPECIAL_TOKENS, build_tiny_model, ensure_tiny_model


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_cache")


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, cache):
    a = load_file(ensure_tiny_model("tiny-qwen2", seed=0, cache_dir=cache) / "model.safetensors")
    b = load_file(build_tiny_model("tiny-qwen2", tmp_path / "again", seed=0) / "model.safetensors")
    c = load_file(build_tiny_model("tiny-qwen2", tmp_path / "other", seed=1) / "model.safetensors")
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_building_does_not_disturb_the_callers_rng(tmp_path):
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    build_tiny_model("tiny-qwen2", tmp_path, seed=3)
    assert torch.equal(torch.rand(4), expected)


def test_cache_is_reused(cache):
    first = ensure_tiny_model("tiny-qwen2", cache_dir=cache)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model("tiny-qwen2", cache_dir=cache) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((first / "lmm_r1_tiny.json").read_text())["name"] == "tiny-qwen2"


def test_unknown_name_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny model 'tiny-llama'.*tiny-qwen2"):
        build_tiny_model("tiny-llama", tmp_path)


def test_text_model_loads_and_chat_template_is_chatml(cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_tiny_model("tiny-qwen2", cache_dir=cache)
    tok = AutoTokenizer.from_pretrained(path)
    for special in SPECIAL_TOKENS:  # each special token is one id, never split by BPE
        assert tok(special, add_special_tokens=False).input_ids == [tok.convert_tokens_to_ids(special)], special
    text = tok.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(text).input_ids
    assert tok.decode(ids) == text  # byte-level BPE round-trips exactly
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok)) and torch.isfinite(logits).all()


def test_vl_model_runs_on_an_image(cache):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoTokenizer, Qwen2VLImageProcessorPil

    path = ensure_tiny_model("tiny-qwen2.5-vl", cache_dir=cache)
    tok = AutoTokenizer.from_pretrained(path)
    processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    image = Image.new("RGB", (56, 84), (200, 30, 30))
    pix = processor(images=[image], return_tensors="pt")
    grid = pix["image_grid_thw"]
    n_pad = int(grid.prod()) // processor.merge_size**2
    text = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image", "image": "x"}, {"type": "text", "text": "Solve"}]}],
        tokenize=False, add_generation_prompt=True).replace("<|image_pad|>", "<|image_pad|>" * n_pad)
    ids = torch.tensor([tok(text).input_ids])
    image_id = model.config.image_token_id
    assert int((ids == image_id).sum()) == n_pad == 6  # 56x84 -> 4x6 patches of 14 -> 2x3 after 2x2 merge
    mm_types = (ids == image_id).long()
    out = model(input_ids=ids, pixel_values=pix["pixel_values"], image_grid_thw=grid, mm_token_type_ids=mm_types)
    assert out.logits.shape[:2] == ids.shape and torch.isfinite(out.logits).all()
