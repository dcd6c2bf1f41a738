"""Packed (varlen) attention on CUDA: flash-attn 2's ``flash_attn_varlen_func`` and PyTorch's own
``torch.nn.attention.varlen.varlen_attn``, each with the probe that says whether it can serve
this machine. Both follow the contract of kernels/attention.py (fp16/bf16 only; lse detached).
Nothing here runs or imports a CUDA library at import time."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math

import torch

from lmm_r1_ascend.kernels.attention import softmax_scale, validate_inputs


# ---------------------------------------------------------------- flash-attn

def probe_flash_attn(device_type: str) -> tuple[bool, str]:
    """Whether flash_attn_varlen_func can serve this device type, and why (not)."""
    if device_type != "cuda":
        return False, f"flash_attn needs CUDA, device type is {device_type!r}"
    if importlib.util.find_spec("flash_attn") is None:
        return False, "flash_attn is not installed (pip install flash-attn, see requirements-cuda.txt)"
    try:
        flash_attn = importlib.import_module("flash_attn")
        getattr(flash_attn, "flash_attn_varlen_func")
    except Exception as exc:  # a build for another torch / CUDA raises ImportError or OSError
        return False, f"flash_attn is installed but does not import: {type(exc).__name__}: {exc}"
    if not torch.cuda.is_available():
        return False, "flash_attn is importable but no CUDA device is visible"
    return True, f"flash_attn {getattr(flash_attn, '__version__', '?')} flash_attn_varlen_func"


def _check_half(q: torch.Tensor, name: str) -> None:
    if q.device.type != "cuda":
        raise ValueError(f"{name} runs on CUDA tensors only, got {q.device}; use varlen_attention_reference")
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"{name} supports float16/bfloat16 only, got {q.dtype}; cast or use the reference")


def varlen_attention_flash_attn(q, k, v, cu_seqlens, max_seqlen, *, scale=None, causal=True, return_lse=False,
                                cu_seqlens_host=None):
    """flash-attn 2 ``flash_attn_varlen_func`` (CUDA, fp16/bf16; GQA native)."""
    bounds = validate_inputs(q, k, v, cu_seqlens, max_seqlen, cu_seqlens_host, need_host=False)
    _check_half(q, "flash_attn")
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError as exc:
        raise RuntimeError(f"flash_attn is not importable ({exc}); use another attention implementation") from exc
    res = flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p=0.0,
                                 softmax_scale=softmax_scale(q, scale), causal=causal, return_attn_probs=return_lse)
    if not return_lse:
        return res
    out, lse = res[0], res[1].detach().float()
    if lse.dim() == 2:  # flash-attn >= 2.4 varlen: (Hq, T)
        return out, lse.transpose(0, 1).contiguous()
    # older flash-attn: padded (B, Hq, max_seqlen); unpad per sequence
    bounds = bounds if bounds is not None else cu_seqlens.tolist()
    return out, torch.cat([lse[i, :, : e - s].transpose(0, 1) for i, (s, e) in enumerate(zip(bounds, bounds[1:]))])


# ---------------------------------------------------------------- torch.nn.attention.varlen

def _varlen_attn_fn():
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn


def probe_torch_varlen(device_type: str) -> tuple[bool, str]:
    """Whether torch.nn.attention.varlen.varlen_attn works here: import, signature, a tiny CUDA call."""
    if device_type != "cuda":
        return False, f"torch.nn.attention.varlen needs CUDA, device type is {device_type!r}"
    try:
        params = inspect.signature(_varlen_attn_fn()).parameters
    except (ImportError, AttributeError) as exc:
        return False, f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn ({exc})"
    if "window_size" not in params and "is_causal" not in params:
        return False, "varlen_attn has neither is_causal nor window_size: unknown signature"
    if not torch.cuda.is_available():
        return False, "torch.nn.attention.varlen is present but no CUDA device is visible"
    try:  # flash kernels need sm80+ and a build that includes them: try one tiny call
        x = torch.zeros(2, 1, 8, device="cuda", dtype=torch.float16)
        cu = torch.tensor([0, 2], device="cuda", dtype=torch.int32)
        varlen_attention_torch_varlen(x, x, x, cu, 2, cu_seqlens_host=[0, 2])
    except Exception as exc:
        return False, f"varlen_attn failed on this GPU: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    flag = "window_size=(-1, 0)" if "window_size" in params else "is_causal=True"
    return True, f"torch {torch.__version__} varlen_attn (causal via {flag})"


def varlen_attention_torch_varlen(q, k, v, cu_seqlens, max_seqlen, *, scale=None, causal=True, return_lse=False,
                                  cu_seqlens_host=None):
    """PyTorch's own varlen flash kernel (CUDA, fp16/bf16). The causal flag is probed per call."""
    validate_inputs(q, k, v, cu_seqlens, max_seqlen, cu_seqlens_host, need_host=False)
    _check_half(q, "torch_varlen")
    fn = _varlen_attn_fn()
    params = inspect.signature(fn).parameters
    kwargs = {}
    if "window_size" in params:  # torch >= 2.11
        kwargs["window_size"] = (-1, 0) if causal else (-1, -1)
    elif "is_causal" in params:  # torch 2.9 / 2.10
        kwargs["is_causal"] = causal
    else:
        raise RuntimeError("torch.nn.attention.varlen.varlen_attn has neither is_causal nor window_size")
    scale = softmax_scale(q, scale)
    if "scale" in params:
        kwargs["scale"] = scale
    else:  # old signature: fixed 1/sqrt(D), so fold the wanted scale into q
        q = q * (scale * math.sqrt(q.shape[-1]))
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if return_lse:
        from torch.nn.attention.varlen import AuxRequest

        kwargs["return_aux"] = AuxRequest(lse=True)
    res = fn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **kwargs)
    if not return_lse:
        return res
    out, lse = res
    lse = lse.detach().float()
    # The kernel returns (Hq, T) although some docs say (T, Hq); accept both.
    if lse.shape == (q.shape[1], q.shape[0]):
        lse = lse.transpose(0, 1).contiguous()
    return out, lse
