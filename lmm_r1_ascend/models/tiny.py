"""Built-in tiny models, made offline and deterministically from a seed.

`tiny-qwen2` (text) and `tiny-qwen2.5-vl` are real Hugging Face checkpoints in miniature:
config, random weights (safetensors), a byte-level BPE tokenizer trained here with Qwen's
special tokens and a ChatML chat template, and (VL) an image-processor config. They are
written to disk like any checkpoint, so every path that loads a model (save/load, vLLM)
treats them as real ones. Nothing is downloaded.

    path = ensure_tiny_model("tiny-qwen2")          # built once, cached
    AutoModelForCausalLM.from_pretrained(path)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

TINY_MODELS = ("tiny-qwen2", "tiny-qwen2.5-vl")
# Bump when anything below changes what is written, so stale caches are rebuilt.
BUILDER_VERSION = 2

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
)
VOCAB_SIZE = 1024  # upper bound; the small corpus yields fewer merges (~690 tokens)
DEFAULT_SYSTEM = "You are a helpful assistant."

# ChatML as Qwen2.5(-VL) renders it; images become <|vision_start|><|image_pad|><|vision_end|>
# (one pad here, expanded to the image's patch count by the data pipeline).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- elif part['type'] in ('image', 'image_url') -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def _training_corpus() -> list[str]:
    """Text the tokenizer learns merges from: the recipe's prompts, tags, arithmetic, Sokoban words."""
    lines = [
        "A conversation between User and Assistant. The assistant first thinks about the reasoning process "
        "in the mind and then provides the user with the answer. The answer is in LaTeX wrapped in $...$ and "
        "the final answer in \\boxed{}. The reasoning process and answer are enclosed within <think> </think> "
        "and <answer> </answer> tags.",
        "<think> Since $1+1=2$, so the answer is $2$. </think><answer> The answer is $\\boxed{2}$ </answer>",
        "What is the value of the expression? Compute the sum, the product and the difference.",
        "Solve the puzzle: push every box onto a target. Actions: up, down, left, right.",
        "The image shows a triangle, a circle and a square. Find the angle, the area and the length.",
        DEFAULT_SYSTEM,
    ]
    ops = "+-*"
    for a in range(0, 60, 3):
        for b in range(1, 40, 7):
            op = ops[(a + b) % 3]
            value = a + b if op == "+" else a - b if op == "-" else a * b
            lines.append(f"What is {a} {op} {b}? <think> {a} {op} {b} = {value} </think>"
                         f"<answer> $\\boxed{{{value}}}$ </answer>")
    lines += [" ".join(["up", "down", "left", "right"][i % 4] for i in range(k, k + 9)) for k in range(8)]
    return lines


def build_tokenizer():
    """A byte-level BPE PreTrainedTokenizerFast with Qwen's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_training_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]), chat_template=CHAT_TEMPLATE,
        model_max_length=4096, padding_side="left",
    )


def _text_config_kwargs(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        # head_dim 32: vLLM's CPU attention needs head size >= 32; 2:1 grouped-query attention.
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
        rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )


def _build_model(name: str, tokenizer):
    """The model object with seeded random weights (caller seeds torch)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    if name == "tiny-qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        return Qwen2ForCausalLM(Qwen2Config(**_text_config_kwargs(tokenizer)))
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = _text_config_kwargs(tokenizer)
    # head_dim 32 -> 16 rotary frequencies, split temporal/height/width as mRoPE requires.
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]}
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=text["hidden_size"],
            window_size=112, fullatt_block_indexes=[1], tokens_per_second=2,
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=text["eos_token_id"], pad_token_id=text["pad_token_id"], tie_word_embeddings=True,
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def _image_processor_config() -> dict:
    # The recipe's pixel bounds (min 4*28*28, max 16384*28*28) with the real patch geometry.
    return {
        "image_processor_type": "Qwen2VLImageProcessor", "do_resize": True, "do_rescale": True,
        "do_normalize": True, "do_convert_rgb": True, "rescale_factor": 1 / 255,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "min_pixels": 4 * 28 * 28, "max_pixels": 16384 * 28 * 28, "patch_size": 14,
        "temporal_patch_size": 2, "merge_size": 2,
    }


def build_tiny_model(name: str, out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write checkpoint `name` into `out_dir` (created). Same name + seed -> identical weights."""
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model '{name}'; choose one of {list(TINY_MODELS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = _build_model(name, tokenizer)
    finally:
        torch.random.set_rng_state(generator_state)  # building a model must not disturb the caller's RNG
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if name == "tiny-qwen2.5-vl":
        (out / "preprocessor_config.json").write_text(json.dumps(_image_processor_config(), indent=2))
    (out / "lmm_r1_tiny.json").write_text(json.dumps({"name": name, "seed": seed, "builder": BUILDER_VERSION}))
    return out


def default_cache_dir() -> Path:
    return Path(os.environ.get("LMM_R1_CACHE", Path.home() / ".cache" / "lmm_r1_ascend")) / "tiny_models"


def build_once(final: Path, marker: str, build) -> Path:
    """`final`, built by build(tmp_dir) the first time: into a temporary sibling renamed into place,
    so a killed build leaves nothing and concurrent builders keep the first one to finish.
    marker: the file whose presence in `final` means the build completed."""
    if (final / marker).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: keep theirs
            if not (final / marker).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_tiny_model(name: str, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> Path:
    """The path of tiny model `name`, building it once into the cache (atomically: build aside, rename)."""
    import transformers

    key = hashlib.sha256(f"{name}|{seed}|{BUILDER_VERSION}|{transformers.__version__}".encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return build_once(root / f"{name}-seed{seed}-{key}", "lmm_r1_tiny.json",
                      lambda tmp: build_tiny_model(name, tmp, seed))
