"""Swap Qwen2 / Qwen2.5-VL RMSNorm, rotary and SwiGLU MLP for torch_npu fused ops.

``apply_npu_fused_ops(model, ops)`` changes one model INSTANCE; other instances of the
same classes and the transformers modules themselves are untouched. ``ops`` is the
``torch_npu`` module or ``lmm_r1_ascend.kernels.npu_emulation`` (anything with
``npu_rms_norm``, ``npu_rotary_mul`` and ``npu_swiglu`` following torch_npu's contracts).

Mechanism (transformers 5.23 layout):
- RMSNorm (``Qwen2RMSNorm`` / ``Qwen2_5_VLRMSNorm``) and SwiGLU MLP (``Qwen2MLP`` /
  ``Qwen2_5_VLMLP`` with a SiLU ``act_fn``): an instance attribute ``forward`` shadows
  the class's, so parameters, names, state_dict and hooks stay as they were.
- Rotary: the attention forward calls the module-level function
  ``apply_rotary_pos_emb`` (``apply_rotary_pos_emb_vision`` in vision blocks), so there is
  no per-instance hook. Each attention instance instead gets a copy of its class's
  ``forward`` function whose globals map that one name to our fused version: the same
  code, an instance-scoped change, no global state touched. The globals are a snapshot
  taken at swap time; a later rebinding of another module-level name in the modeling
  file is not seen by swapped instances (re-apply after such a patch).
``remove_npu_fused_ops(model)`` undoes all of it (deletes the instance attributes).
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
from torch import nn

_SUPPORTED_MODULES = (
    "transformers.models.qwen2.modeling_qwen2",
    "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl",
)
_MARK = "_lmm_npu_fused"  # instance attribute naming which op a module was swapped for
_REQUIRED_OPS = ("npu_rms_norm", "npu_rotary_mul", "npu_swiglu")


def _check_ops(ops: object) -> None:
    missing = [name for name in _REQUIRED_OPS if not callable(getattr(ops, name, None))]
    if missing:
        raise TypeError(
            f"ops {ops!r} lacks {missing}: pass the torch_npu module or lmm_r1_ascend.kernels.npu_emulation"
        )


def _rms_norm_forward(ops: object) -> Callable:
    def forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        # The fused op wants gamma in x's dtype; HF's result dtype is the promotion of both.
        y = ops.npu_rms_norm(hidden_states, self.weight.to(hidden_states.dtype), self.variance_epsilon)[0]
        return y.to(torch.promote_types(hidden_states.dtype, self.weight.dtype))

    return forward


def _swiglu_forward(ops: object) -> Callable:
    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # gate|up concatenated on the last dim: npu_swiglu gates the first half.
        gate_up = torch.cat((self.gate_proj(x), self.up_proj(x)), dim=-1)
        return self.down_proj(ops.npu_swiglu(gate_up, dim=-1))

    return forward


def _text_rotary(ops: object) -> Callable:
    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        """q, k: (B, H, S, D); cos, sin: (B, S, D) -> unsqueezed to (B, 1, S, D)."""
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return ops.npu_rotary_mul(q, cos, sin), ops.npu_rotary_mul(k, cos, sin)

    return apply_rotary_pos_emb


def _vision_rotary(ops: object) -> Callable:
    def apply_rotary_pos_emb_vision(q, k, cos, sin):
        """q, k: (S, H, D); cos, sin: (S, D). Computed in fp32 like HF, returned in q's/k's dtype."""
        cos4, sin4 = cos.float()[None, :, None, :], sin.float()[None, :, None, :]
        q_out = ops.npu_rotary_mul(q.float().unsqueeze(0), cos4, sin4)[0].to(q.dtype)
        k_out = ops.npu_rotary_mul(k.float().unsqueeze(0), cos4, sin4)[0].to(k.dtype)
        return q_out, k_out

    return apply_rotary_pos_emb_vision


def _with_global(fn: Callable, name: str, value: object) -> Callable:
    """A copy of ``fn`` (same code, defaults, closure) whose global ``name`` is ``value``."""
    if name not in fn.__code__.co_names:
        raise RuntimeError(
            f"{fn.__qualname__} does not call {name}: this transformers version structures attention "
            "differently from 5.23; update lmm_r1_ascend.kernels.npu_fused"
        )
    new_globals = dict(fn.__globals__)
    new_globals[name] = value
    clone = types.FunctionType(fn.__code__, new_globals, fn.__name__, fn.__defaults__, fn.__closure__)
    clone.__kwdefaults__ = fn.__kwdefaults__
    clone.__qualname__ = fn.__qualname__
    clone.__doc__ = fn.__doc__
    return clone


def _kind(module: nn.Module) -> str | None:
    """Which swap applies to this module: "rms_norm", "swiglu", "rotary", "rotary_vision" or None."""
    cls = type(module)
    if cls.__module__ not in _SUPPORTED_MODULES:
        return None
    name = cls.__name__
    if name.endswith("RMSNorm"):
        return "rms_norm"
    if name.endswith("MLP") and all(hasattr(module, p) for p in ("gate_proj", "up_proj", "down_proj")):
        return "swiglu" if type(module.act_fn).__name__ in ("SiLU", "SiLUActivation") else None
    if name.endswith("Attention"):
        co_names = cls.forward.__code__.co_names
        if "apply_rotary_pos_emb" in co_names:
            return "rotary"
        if "apply_rotary_pos_emb_vision" in co_names:
            return "rotary_vision"
    return None


def _vision_modules(model: nn.Module) -> set[int]:
    """ids of the modules that are, or sit inside, a Qwen2.5-VL vision module (the vision tower)."""
    ids: set[int] = set()
    for module in model.modules():
        if "Vision" in type(module).__name__ and id(module) not in ids:
            ids.update(id(m) for m in module.modules())
    return ids


def apply_npu_fused_ops(model: nn.Module, ops: object, *, include_vision: bool = False) -> dict[str, int]:
    """Swap fused ops into ``model`` (in place) and count what was swapped.

    Args:
        model: a Qwen2 (``Qwen2ForCausalLM``/``Qwen2Model``/...) or Qwen2.5-VL instance.
        ops: namespace with ``npu_rms_norm``, ``npu_rotary_mul``, ``npu_swiglu``.
        include_vision: also swap the Qwen2.5-VL vision tower's norms, rotary and MLPs.

    Returns:
        ``{"rms_norm": n, "rotary": n, "swiglu": n}``: modules swapped by this call
        (already-swapped modules are left as they are and not counted).

    Raises:
        TypeError: ``model`` is not an nn.Module or ``ops`` lacks one of the three ops.
        ValueError: the model holds no Qwen2 / Qwen2.5-VL module to swap.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_ops(ops)
    vision_ids = _vision_modules(model)
    counts = {"rms_norm": 0, "rotary": 0, "swiglu": 0}
    supported_seen = False
    for module in model.modules():
        supported_seen = supported_seen or type(module).__module__ in _SUPPORTED_MODULES
        kind = _kind(module)
        if kind is None or (not include_vision and id(module) in vision_ids):
            continue
        if getattr(module, _MARK, None) is not None:
            continue
        if kind == "rms_norm":
            module.forward = types.MethodType(_rms_norm_forward(ops), module)
        elif kind == "swiglu":
            module.forward = types.MethodType(_swiglu_forward(ops), module)
        elif kind == "rotary":
            fn = _with_global(type(module).forward, "apply_rotary_pos_emb", _text_rotary(ops))
            module.forward = types.MethodType(fn, module)
        else:
            fn = _with_global(type(module).forward, "apply_rotary_pos_emb_vision", _vision_rotary(ops))
            module.forward = types.MethodType(fn, module)
        object.__setattr__(module, _MARK, kind)
        counts["rotary" if kind.startswith("rotary") else kind] += 1
    if not supported_seen:
        raise ValueError(
            f"apply_npu_fused_ops supports Qwen2 and Qwen2.5-VL models (transformers {_SUPPORTED_MODULES}); "
            f"{type(model).__name__} holds none of their modules"
        )
    return counts


def remove_npu_fused_ops(model: nn.Module) -> int:
    """Undo :func:`apply_npu_fused_ops` on ``model``; returns how many modules were restored."""
    restored = 0
    for module in model.modules():
        if getattr(module, _MARK, None) is not None:
            del module.forward
            object.__delattr__(module, _MARK)
            restored += 1
    return restored
