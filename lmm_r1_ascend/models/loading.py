"""Load the policy, the frozen reference and the critic from a local HF directory or a tiny model.

    spec = ModelSpec("tiny-qwen2.5-vl", freeze_prefixes=("model.visual",))
    backend = get_backend("cpu")
    policy = load_policy(spec, backend)      # trainable, packed attention selected
    reference = load_reference(spec, backend)  # eval, no grad
    critic = load_critic(spec, backend)      # backbone + value head (models.critic)

Text models load through ``AutoModelForCausalLM``, Qwen2-VL / Qwen2.5-VL (any config with a
``vision_config``) through ``AutoModelForImageTextToText``; the critic's backbone through
``AutoModel`` (the same weights without the LM head). Nothing is ever downloaded: a path
must be a local directory, or one of the built-in tiny model names.

With a backend, the loaded model is made ready for packed forwards on it with the
backend's kernel set: its varlen attention is registered and selected for the text decoder
and its log-prob kernel recorded for ``packed_log_probs`` (``models.forward``) and, where
the backend has them (NPU, NPU emulation), its fused ops are swapped in.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lmm_r1_ascend.models.shape_models import ensure_shape_model, is_shape_model
from lmm_r1_ascend.models.tiny import TINY_MODELS, ensure_tiny_model

if TYPE_CHECKING:
    from lmm_r1_ascend.backends.base import Backend
    from lmm_r1_ascend.models.critic import Critic

logger = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
# "org/name" with the characters the Hub allows: what a hub id passed by mistake looks like.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSpec:
    """How to load one model.

    path: a local Hugging Face checkpoint directory, or a tiny model name ("tiny-qwen2",
        "tiny-qwen2.5-vl"), built offline into the cache on first use.
    dtype: "float32" / "bfloat16" / "float16" (or a torch.dtype); None = the backend's
        default dtype (float32 without a backend).
    gradient_checkpointing: recompute decoder layers in backward (policy and critic only).
    freeze_prefixes: parameter-name prefixes to freeze, e.g. ("model.visual",) for the
        Qwen2.5-VL vision tower; a prefix matches a name equal to it or starting with
        prefix + ".". A prefix that matches nothing is an error.
    attention: force the backend's attention implementation by name ("reference",
        "npu_fusion", ...); None = the backend's choice.
    fused_ops: the backend's fused ops (NPU RMSNorm / rotary / SwiGLU): None = where the
        backend has them and they support the model (others keep transformers' modules,
        with a warning), True = required (an unsupported model is an error), False = off.
    share_prompts: packed forwards run each distinct prompt of a micro-batch once, its samples'
        responses attending to that one copy, its images included (kernels/shared_prompts.py); not
        under sequence parallelism (which packs every sample whole).
    tiny_seed, tiny_cache_dir: seed and cache of a built-in tiny model.
    """

    path: str
    dtype: str | torch.dtype | None = None
    gradient_checkpointing: bool = False
    freeze_prefixes: tuple[str, ...] = ()
    attention: str | None = None
    fused_ops: bool | None = None
    share_prompts: bool = True
    tiny_seed: int = 0
    tiny_cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, (str, os.PathLike)) or not str(self.path):
            raise ValueError(f"ModelSpec.path must be a local directory or one of {list(TINY_MODELS)}, "
                             f"got {self.path!r}")
        if isinstance(self.freeze_prefixes, str):  # a bare string would be frozen letter by letter
            object.__setattr__(self, "freeze_prefixes", (self.freeze_prefixes,))
        object.__setattr__(self, "freeze_prefixes", tuple(self.freeze_prefixes))
        resolve_dtype(self.dtype)  # fail at construction, not at load


def resolve_dtype(dtype: str | torch.dtype | None, backend: Backend | None = None) -> torch.dtype:
    """A torch floating dtype from a name; None = the backend's default (float32 without one)."""
    if dtype is None:
        return backend.default_dtype if backend is not None else torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"model dtype must be a floating dtype, got {dtype}")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown model dtype {dtype!r}; use one of {sorted(set(_DTYPES))}")
    return _DTYPES[key]


def resolve_model_path(path: str | os.PathLike, *, tiny_seed: int = 0, tiny_cache_dir: str | None = None) -> Path:
    """The local checkpoint directory for ``path`` (a directory or a tiny model name)."""
    text = str(path)
    if text in TINY_MODELS:
        return ensure_tiny_model(text, seed=tiny_seed, cache_dir=tiny_cache_dir)
    if is_shape_model(text):  # real widths, random weights (models.shape_models)
        return ensure_shape_model(text, seed=tiny_seed, cache_dir=tiny_cache_dir)
    p = Path(text).expanduser()
    if not p.exists():
        msg = f"model directory '{text}' does not exist"
        if _HUB_ID.match(text):
            msg += (f"; '{text}' looks like a Hugging Face Hub id, but nothing is downloaded here: download it "
                    "beforehand (e.g. `huggingface-cli download ... --local-dir DIR`) and pass the local directory")
        raise FileNotFoundError(msg + f" (built-in tiny models: {', '.join(TINY_MODELS)})")
    if not p.is_dir():
        raise NotADirectoryError(f"model path '{text}' is a file; pass the checkpoint directory that holds config.json")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"model directory '{text}' has no config.json: "
                                "is it a Hugging Face checkpoint directory?")
    return p


def is_vision_language(config) -> bool:
    """True for image-text models (Qwen2-VL, Qwen2.5-VL, ...): their config has a vision_config."""
    return getattr(config, "vision_config", None) is not None


def load_config(path: str | os.PathLike):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, local_files_only=True)


def freeze_by_prefix(model: torch.nn.Module, prefixes: str | tuple[str, ...] | list[str]) -> list[str]:
    """Set requires_grad=False on parameters under any of ``prefixes``; return the frozen names.

    Frozen parameters get no .grad, so optimizers skip them (a None grad is not stepped).
    """
    if isinstance(prefixes, str):  # one bare string is one prefix, not a list of letters
        prefixes = (prefixes,)
    names = [n for n, _ in model.named_parameters()]
    frozen: list[str] = []
    for prefix in prefixes:
        if not isinstance(prefix, str) or not prefix.strip("."):
            raise ValueError(f"freeze prefix must be a non-empty parameter-name prefix, got {prefix!r}")
        stem = prefix.rstrip(".")
        hits = [n for n in names if n == stem or n.startswith(stem + ".")]
        if not hits:
            tops = sorted({".".join(n.split(".")[:2]) for n in names})
            raise ValueError(f"freeze prefix '{prefix}' matches no parameter of {type(model).__name__}; "
                             f"parameter names start with: {', '.join(tops[:12])}")
        frozen += hits
    wanted = set(frozen)
    for name, param in model.named_parameters():
        if name in wanted:
            param.requires_grad_(False)
    return sorted(wanted)


def prepare_for_backend(model: torch.nn.Module, backend: Backend, *, attention: str | None = None,
                        fused_ops: bool | None = None, share_prompts: bool | None = None) -> str:
    """Give ``model`` the backend's kernel set: varlen attention and log-prob kernel (models.forward),
    and fused ops (see ModelSpec); generation's decode kernel goes to the rollout engine's own model
    (rollout/hf_engine.py), as this one never generates in a run. Returns the registered attention name."""
    from lmm_r1_ascend.models.forward import enable_packed_forward

    param = next(model.parameters(), None)
    kernels = backend.select_kernels({"attention": attention} if attention else None,
                                     dtype=param.dtype if param is not None else None)
    choice = kernels.attention
    name = enable_packed_forward(model, choice.fn, name=f"lmm_r1_varlen_{backend.name}_{choice.name}",
                                 logprobs_fn=kernels.logprobs.fn, share_prompts=share_prompts)
    fused = kernels.fused_ops.fn
    if fused_ops is False or fused is None:
        return name
    try:
        fused(model)
    except ValueError as exc:  # a model family the fused ops do not cover
        if fused_ops:
            raise
        logger.warning("%s: fused ops not applied, transformers' own modules kept (%s)", type(model).__name__, exc)
    return name


def enable_activation_checkpointing(model) -> None:
    """Recompute decoder layers in backward (non-reentrant), under either transformers 5.x name."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _load_hf(path: Path, dtype: torch.dtype, *, backbone_only: bool):
    import transformers

    config = load_config(path)
    if backbone_only:
        cls = transformers.AutoModel
    else:
        vl = is_vision_language(config)
        cls = transformers.AutoModelForImageTextToText if vl else transformers.AutoModelForCausalLM
    return cls.from_pretrained(path, dtype=dtype, attn_implementation="sdpa", local_files_only=True)


def _finish(model: torch.nn.Module, spec: ModelSpec, backend: Backend | None, *, trainable: bool) -> None:
    if backend is not None:
        prepare_for_backend(model, backend, attention=spec.attention, fused_ops=spec.fused_ops,
                            share_prompts=spec.share_prompts)
    if not trainable:
        model.requires_grad_(False)
        model.eval()
        return
    if spec.freeze_prefixes:
        freeze_by_prefix(model, spec.freeze_prefixes)
    if spec.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model.train()


def load_policy(spec: ModelSpec, backend: Backend | None = None):
    """The trainable actor: a causal / image-text LM in train mode (frozen prefixes excepted)."""
    path = resolve_model_path(spec.path, tiny_seed=spec.tiny_seed, tiny_cache_dir=spec.tiny_cache_dir)
    model = _load_hf(path, resolve_dtype(spec.dtype, backend), backbone_only=False)
    _finish(model, spec, backend, trainable=True)
    return model


def load_reference(spec: ModelSpec, backend: Backend | None = None):
    """The frozen reference policy: eval mode, every parameter requires_grad=False."""
    path = resolve_model_path(spec.path, tiny_seed=spec.tiny_seed, tiny_cache_dir=spec.tiny_cache_dir)
    model = _load_hf(path, resolve_dtype(spec.dtype, backend), backbone_only=False)
    _finish(model, spec, backend, trainable=False)
    return model


def load_critic(spec: ModelSpec, backend: Backend | None = None, *, generator: torch.Generator | None = None) -> Critic:
    """The critic: the backbone of ``spec.path`` plus a value head (loaded if the directory has one).

    A policy checkpoint gives a freshly initialised head (see ``models.critic``), drawn from
    ``generator`` or the global RNG; a directory written by ``Critic.save_pretrained`` gives
    its saved head.
    """
    from lmm_r1_ascend.models.critic import Critic

    path = resolve_model_path(spec.path, tiny_seed=spec.tiny_seed, tiny_cache_dir=spec.tiny_cache_dir)
    backbone = _load_hf(path, resolve_dtype(spec.dtype, backend), backbone_only=True)
    critic = Critic.from_backbone(backbone, path, generator=generator)
    if backend is not None:
        prepare_for_backend(critic.model, backend, attention=spec.attention, fused_ops=spec.fused_ops,
                            share_prompts=spec.share_prompts)
    if spec.freeze_prefixes:
        freeze_by_prefix(critic, spec.freeze_prefixes)
    if spec.gradient_checkpointing:
        enable_activation_checkpointing(critic.model)
    critic.train()
    return critic
