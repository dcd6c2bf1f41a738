"""Real-shape built-in models (models/shape_models.py): published Qwen2.5-VL-3B widths, random weights."""

from __future__ import annotations

import pytest
import torch

from lmm_r1_ascend.models.shape_models import (SHAPE_MODELS, build_tokenizer, ensure_shape_model,
                                               parse_shape_name, shape_config)

# Independent reference: the values of Qwen/Qwen2.5-VL-3B-Instruct/config.json, typed in here.
H, I, V, HEADS, KV, HEAD_DIM = 2048, 11008, 151936, 16, 2, 128
VH, VI = 1280, 3420


def text_layer_params() -> int:
    attn = H * H + H + 2 * (H * KV * HEAD_DIM + KV * HEAD_DIM) + H * H  # q (bias), k, v (bias), o
    return attn + 3 * H * I + 2 * H  # SwiGLU MLP, two RMSNorms


def vision_block_params() -> int:
    return 2 * VH + VH * 3 * VH + 3 * VH + VH * VH + VH + 2 * (VH * VI + VI) + VI * VH + VH


def meta_params(config, cls) -> int:
    with torch.device("meta"):
        model = cls._from_config(config)
    return sum(p.numel() for p in model.parameters())


def test_names_and_depths():
    assert parse_shape_name("qwen2.5-vl-3b-shape") == ("qwen2.5-vl-3b-shape", 2, 2)
    assert parse_shape_name("qwen2.5-vl-3b-shape:layers=36,vision_layers=32") == ("qwen2.5-vl-3b-shape", 36, 32)
    assert parse_shape_name("qwen2.5-vl-3b-text-shape:layers=4") == ("qwen2.5-vl-3b-text-shape", 4, 0)
    assert parse_shape_name("tiny-qwen2") is None
    with pytest.raises(ValueError, match="bad shape-model parameter 'depth=3'.*layers=N,vision_layers=M"):
        parse_shape_name("qwen2.5-vl-3b-shape:depth=3")
    with pytest.raises(ValueError, match="bad shape-model parameter 'layers=0'"):
        parse_shape_name("qwen2.5-vl-3b-shape:layers=0")


def test_full_depth_param_count_is_the_published_3b():
    from transformers import Qwen2_5_VLForConditionalGeneration

    n = meta_params(shape_config("qwen2.5-vl-3b-shape", 36, 32), Qwen2_5_VLForConditionalGeneration)
    patch = 3 * 2 * 14 * 14 * VH
    merger = VH + (4 * VH) ** 2 + 4 * VH + 4 * VH * H + H
    expected = V * H + H + 36 * text_layer_params() + 32 * vision_block_params() + patch + merger
    assert n == expected  # tied embeddings: no separate lm_head
    assert 3.7e9 < n < 3.8e9  # the "3B" is 3.75 B with the vision tower


def test_config_widths_and_window_attention():
    cfg = shape_config("qwen2.5-vl-3b-shape", 2, 2)
    t, v = cfg.text_config, cfg.vision_config
    assert (t.hidden_size, t.intermediate_size, t.num_attention_heads, t.num_key_value_heads, t.vocab_size) == (
        H, I, HEADS, KV, V)
    assert t.num_hidden_layers == 2 and v.depth == 2 and cfg.tie_word_embeddings
    assert (v.hidden_size, v.intermediate_size, v.num_heads, v.out_hidden_size, v.window_size) == (VH, VI, 16, H, 112)
    assert v.fullatt_block_indexes == [1]  # block 0 uses window attention, the last one full attention
    full = shape_config("qwen2.5-vl-3b-shape", 36, 32).vision_config
    assert full.fullatt_block_indexes == [7, 15, 23, 31]
    text = shape_config("qwen2.5-vl-3b-text-shape", 3, 0)
    assert text.model_type == "qwen2" and text.num_hidden_layers == 3 and text.tie_word_embeddings


def test_tokenizer_special_ids_match_the_config():
    tok = build_tokenizer()
    cfg = shape_config("qwen2.5-vl-3b-shape", 2, 2)
    assert len(tok) == 151665 <= cfg.text_config.vocab_size
    ids = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
    for token, i in ids.items():
        assert tok.convert_tokens_to_ids(token) == i
    assert tok.convert_tokens_to_ids("<|image_pad|>") == cfg.image_token_id == 151655
    assert tok.convert_tokens_to_ids("<|video_pad|>") == cfg.video_token_id == 151656
    assert tok.convert_tokens_to_ids("<|vision_start|>") == cfg.vision_start_token_id == 151652
    assert tok.convert_tokens_to_ids("<|vision_end|>") == cfg.vision_end_token_id == 151653
    assert tok.eos_token_id == cfg.eos_token_id == 151645 and tok.pad_token_id == 151643
    text = tok.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text).input_ids
    assert tok.decode(ids) == text and max(ids) < len(tok)
    assert ids.count(151644) == 3  # each special token is one id


def test_bad_name_is_a_one_line_setup_error():
    from lmm_r1_ascend.config.errors import SetupError
    from lmm_r1_ascend.workers.builders import resolve_model_name

    with pytest.raises(SetupError, match="bad shape-model parameter") as err:
        resolve_model_name("qwen2.5-vl-3b-shape:layers=two")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_built_model_loads_as_policy_critic_and_runs_an_image(tmp_path):
    """Build at 1 text layer / 1 vision block (~16 s: the 151,936 x 2048 embedding dominates)."""
    from PIL import Image
    from transformers import Qwen2VLImageProcessorPil

    from lmm_r1_ascend.backends import get_backend
    from lmm_r1_ascend.models.loading import ModelSpec, load_critic, load_policy

    name = "qwen2.5-vl-3b-shape:layers=1,vision_layers=1"
    path = ensure_shape_model(name, cache_dir=tmp_path)
    assert ensure_shape_model(name, cache_dir=tmp_path) == path  # cached
    backend = get_backend("cpu")
    spec = ModelSpec(name, dtype="bfloat16", tiny_cache_dir=str(tmp_path), freeze_prefixes=("model.visual",))
    policy = load_policy(spec, backend)
    assert policy.get_input_embeddings().weight.data_ptr() == policy.get_output_embeddings().weight.data_ptr()
    tok = build_tokenizer()
    proc = Qwen2VLImageProcessorPil.from_pretrained(path)
    pix = proc(images=[Image.new("RGB", (112, 112), (10, 200, 30))], return_tensors="pt")
    n_pad = int(pix["image_grid_thw"].prod()) // 4
    ids = tok("<|vision_start|>" + "<|image_pad|>" * n_pad + "<|vision_end|>hello").input_ids
    with torch.no_grad():
        out = policy(input_ids=torch.tensor([ids]), pixel_values=pix["pixel_values"].to(torch.bfloat16),
                     image_grid_thw=pix["image_grid_thw"])
    assert out.logits.shape == (1, len(ids), V) and torch.isfinite(out.logits).all()
    critic = load_critic(ModelSpec(name, dtype="bfloat16", tiny_cache_dir=str(tmp_path)), backend)
    assert critic.value_head.weight.shape[-1] == H
