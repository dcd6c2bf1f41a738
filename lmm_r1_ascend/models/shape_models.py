"""Built-in real-shape models: Qwen2.5-VL-3B-Instruct's widths with random weights, built offline.

The paper's model at its published widths, with only the depth cut (so CPU machines can run
a step): every shape-dependent fault (151,936-token vocabulary, tied embeddings, GQA 16:2 at
head_dim 128, the 1280-wide vision tower with window attention, the 2048-wide value head)
shows up, while the layer counts stay a parameter.

    qwen2.5-vl-3b-shape                          2 text layers, 2 vision blocks (defaults)
    qwen2.5-vl-3b-shape:layers=36,vision_layers=32   the full 3B
    qwen2.5-vl-3b-text-shape[:layers=N]          text-only sibling (Qwen2ForCausalLM, same text widths)

Widths are Qwen/Qwen2.5-VL-3B-Instruct's config.json
(https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct/blob/main/config.json): hidden 2048,
intermediate 11008, 36 layers, 16 query / 2 key-value heads, vocab 151,936, tied embeddings,
rope_theta 1e6, mrope_section [16, 24, 24], max_position_embeddings 128000; vision depth 32,
hidden 1280, intermediate 3420, 16 heads, patch 14, temporal patch 2, spatial merge 2,
window 112, full-attention blocks [7, 15, 23, 31], out_hidden 2048. Special-token ids are
Qwen2's (<|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645, <|vision_start|>
151652, <|vision_end|> 151653, <|vision_pad|> 151654, <|image_pad|> 151655,
<|video_pad|> 151656): the tokenizer is the tiny models' byte-level BPE, its vocabulary
padded with unreachable fillers to 151,643 entries so the specials land on those ids.
Weights are stored in bf16, as the published checkpoint is. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lmm_r1_ascend.models.tiny import build_once

SHAPE_MODELS = ("qwen2.5-vl-3b-shape", "qwen2.5-vl-3b-text-shape")
BUILDER_VERSION = 1
SOURCE = "https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct/blob/main/config.json"

TEXT = dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
            num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000,
            rms_norm_eps=1e-6, rope_theta=1000000.0, hidden_act="silu", tie_word_embeddings=True,
            sliding_window=32768, use_sliding_window=False, max_window_layers=70,
            bos_token_id=151643, eos_token_id=151645)
VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3,
              patch_size=14, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=2048,
              window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2,
              hidden_act="silu")
MROPE_SECTION = [16, 24, 24]
# Qwen2's added tokens in id order from 151643 (the first 14 special, the rest plain added tokens).
QWEN_ADDED_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
FIRST_ADDED_ID = 151643
N_SPECIAL = 14


def parse_shape_name(name: str) -> tuple[str, int, int] | None:
    """(base name, text layers, vision layers) for a shape-model name, or None for other names.

    Raises ValueError for a shape name with a bad suffix (one line, says what is allowed)."""
    base, _, params = str(name).partition(":")
    if base not in SHAPE_MODELS:
        return None
    layers, vision = 2, 2
    if params:
        for item in params.split(","):
            key, eq, value = item.partition("=")
            if key not in ("layers", "vision_layers") or not eq or not value.isdigit() or int(value) < 1:
                raise ValueError(f"bad shape-model parameter '{item}' in '{name}': use "
                                 f"{base}:layers=N,vision_layers=M with integers N, M >= 1")
            if key == "layers":
                layers = int(value)
            else:
                vision = int(value)
    if base == "qwen2.5-vl-3b-text-shape":
        vision = 0
    return base, layers, vision


def is_shape_model(name) -> bool:
    return str(name).partition(":")[0] in SHAPE_MODELS


def build_tokenizer():
    """The tiny models' byte-level BPE, vocabulary padded to 151,643 entries, Qwen2's added tokens after."""
    from tokenizers import Tokenizer, AddedToken, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lmm_r1_ascend.models.tiny import CHAT_TEMPLATE, _training_corpus

    small = Tokenizer(models.BPE())
    small.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=1024, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    small.train_from_iterator(_training_corpus(), trainer=trainer)
    learned = json.loads(small.to_str())["model"]
    vocab = dict(learned["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    # Fillers no merge produces: they only hold the ids below the special tokens.
    for i in range(len(vocab), FIRST_ADDED_ID):
        vocab[f"<|filler_{i}|>"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_ADDED_TOKENS[:N_SPECIAL]])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_ADDED_TOKENS[N_SPECIAL:]])
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_ADDED_TOKENS[1:N_SPECIAL]), chat_template=CHAT_TEMPLATE,
        model_max_length=131072, padding_side="left",
    )
    for i, t in enumerate(QWEN_ADDED_TOKENS):  # the ids the config names must be these
        assert out.convert_tokens_to_ids(t) == FIRST_ADDED_ID + i, t
    return out


def shape_config(base: str, layers: int, vision_layers: int):
    """The transformers config of a shape model (published widths, the given depths)."""
    text = dict(TEXT, num_hidden_layers=layers, pad_token_id=FIRST_ADDED_ID)
    if base == "qwen2.5-vl-3b-text-shape":
        from transformers import Qwen2Config

        return Qwen2Config(**text)
    from transformers import Qwen2_5_VLConfig

    theta = text.pop("rope_theta")
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": theta, "mrope_section": MROPE_SECTION}
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=dict(VISION, depth=vision_layers, fullatt_block_indexes=[
            b for b in VISION["fullatt_block_indexes"] if b < vision_layers] or [vision_layers - 1]),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
        vision_end_token_id=151653, vision_token_id=151654, bos_token_id=151643, eos_token_id=151645,
        pad_token_id=FIRST_ADDED_ID, tie_word_embeddings=True,
    )


def build_shape_model(name: str, out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write shape model `name` (with its :layers=..,vision_layers=.. suffix) into `out_dir`."""
    parsed = parse_shape_name(name)
    if parsed is None:
        raise ValueError(f"unknown shape model '{name}'; choose one of {list(SHAPE_MODELS)} "
                         "(optionally with :layers=N,vision_layers=M)")
    base, layers, vision = parsed
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = shape_config(base, layers, vision)
    if base == "qwen2.5-vl-3b-text-shape":
        from transformers import Qwen2ForCausalLM as cls
    else:
        from transformers import Qwen2_5_VLForConditionalGeneration as cls
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = cls._from_config(config, dtype=torch.bfloat16)
    finally:
        torch.random.set_rng_state(state)  # building must not disturb the caller's RNG
    model.generation_config.eos_token_id = 151645
    model.generation_config.pad_token_id = FIRST_ADDED_ID
    model.save_pretrained(out, safe_serialization=True)
    del model
    tokenizer.save_pretrained(out)
    if vision:
        from lmm_r1_ascend.models.tiny import _image_processor_config

        (out / "preprocessor_config.json").write_text(json.dumps(_image_processor_config(), indent=2))
    (out / "lmm_r1_shape.json").write_text(json.dumps(
        {"name": base, "layers": layers, "vision_layers": vision, "seed": seed, "builder": BUILDER_VERSION,
         "source": SOURCE}))
    return out


def default_cache_dir() -> Path:
    return Path(os.environ.get("LMM_R1_CACHE", Path.home() / ".cache" / "lmm_r1_ascend")) / "shape_models"


def ensure_shape_model(name: str, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> Path:
    """The path of shape model `name`, built once into the cache (aside, then renamed)."""
    import transformers

    parsed = parse_shape_name(name)
    if parsed is None:
        raise ValueError(f"unknown shape model '{name}'; choose one of {list(SHAPE_MODELS)}")
    base, layers, vision = parsed
    key = hashlib.sha256(f"{base}|{layers}|{vision}|{seed}|{BUILDER_VERSION}|{transformers.__version__}"
                         .encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return build_once(root / f"{base}-L{layers}V{vision}-seed{seed}-{key}", "lmm_r1_shape.json",
                      lambda tmp: build_shape_model(name, tmp, seed))


@dataclass
class ModelShape:
    """Parameter counts and widths of a model (what lmm_r1_ascend.plan estimates memory from)."""

    params: int           # all parameters
    vision: int           # vision-tower parameters (0 for text models)
    embed: int            # the input embedding (= output head when tied)
    largest_layer: int    # the largest single module's parameters (the ZeRO-3 gathered set)
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int           # key-value heads x head_dim
    vocab: int
    tied: bool
    vision_hidden: int = 0
    vision_intermediate: int = 0
    vision_layers: int = 0


def model_shape(config) -> ModelShape:
    """Exact parameter counts of the model `config` describes, from a meta-device instance."""
    import transformers

    vl = getattr(config, "vision_config", None) is not None
    cls = transformers.AutoModelForImageTextToText if vl else transformers.AutoModelForCausalLM
    with torch.device("meta"):
        model = cls.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    v = config.vision_config if vl else None
    return ModelShape(params=params, vision=vision, embed=model.get_input_embeddings().weight.numel(),
                      largest_layer=largest, layers=text.num_hidden_layers, hidden=text.hidden_size,
                      intermediate=text.intermediate_size, kv_dim=text.num_key_value_heads * head_dim,
                      vocab=text.vocab_size, tied=bool(getattr(config, "tie_word_embeddings", False)),
                      vision_hidden=getattr(v, "hidden_size", 0), vision_intermediate=getattr(v, "intermediate_size", 0),
                      vision_layers=getattr(v, "depth", 0))
