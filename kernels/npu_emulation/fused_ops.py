"""Pure-torch emulations of torch_npu's fused RMSNorm, rotary and SwiGLU ops.

Contracts followed (torch_npu documentation, summarised in shared ASCEND.md):

- ``npu_rms_norm(x, gamma, epsilon=1e-6) -> (y, rstd)``: normalises over the trailing
  ``gamma.dim()`` dimensions of ``x``. ``rstd`` is the reciprocal RMS, float32, shaped
  like ``x`` with those trailing dimensions set to 1 (the op's documented rstd shape).
- ``npu_rotary_mul(x, r1, r2, rotary_mode="half")``: ``x * r1 + rotate_half(x) * r2``
  with ``rotate_half(x) = cat(-x[..., d/2:], x[..., :d/2])``; all inputs 4-D, ``r1`` / ``r2``
  broadcast against ``x``.
- ``npu_swiglu(x, dim=-1)``: ``silu(a) * b`` where ``a, b = x.chunk(2, dim)``.

All three are differentiable through autograd. They compute in float32 and return in
the input's dtype, which is what the fused kernels do internally; for float32 inputs
the result is the plain formula.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16 or float32 (as on the NPU), got {t.dtype}")


def npu_rms_norm(x: torch.Tensor, gamma: torch.Tensor, epsilon: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the trailing ``gamma.dim()`` dims of ``x``.

    Args:
        x: (..., *N) float16/bfloat16/float32, 1-8 dims.
        gamma: (*N) weight, the trailing shape of ``x``.
        epsilon: added to the mean square before the reciprocal square root.

    Returns:
        y: x's shape and dtype, ``x * rstd * gamma`` computed in float32.
        rstd: float32, x's shape with the ``N`` trailing dims set to 1.
    """
    _check_float("x", x)
    _check_float("gamma", gamma)
    if not 1 <= x.dim() <= 8:
        raise ValueError(f"npu_rms_norm: x must have 1 to 8 dims, got shape {tuple(x.shape)}")
    if gamma.dim() < 1 or gamma.dim() > x.dim() or tuple(x.shape[x.dim() - gamma.dim():]) != tuple(gamma.shape):
        raise ValueError(
            f"npu_rms_norm: gamma shape {tuple(gamma.shape)} must equal the trailing dims of x "
            f"shape {tuple(x.shape)} (usually gamma is (hidden,) for x (..., hidden))"
        )
    reduce_dims = tuple(range(x.dim() - gamma.dim(), x.dim()))
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(dim=reduce_dims, keepdim=True) + epsilon)
    y = (xf * rstd * gamma.float()).to(x.dtype)
    return y, rstd


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def npu_rotary_mul(x: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, rotary_mode: str = "half") -> torch.Tensor:
    """Rotary position embedding, rotate-half convention.

    Args:
        x: 4-D, e.g. (B, S, N, D) or (B, N, S, D); D even.
        r1: cos, 4-D, broadcastable to ``x`` (typically (B, S, 1, D) / (B, 1, S, D)).
        r2: sin, same shape as ``r1``.
        rotary_mode: only "half" (the default and the convention Qwen uses) is emulated.

    Returns:
        ``x * r1 + rotate_half(x) * r2``, x's shape and dtype.
    """
    for name, t in (("x", x), ("r1", r1), ("r2", r2)):
        _check_float(name, t)
        if t.dim() != 4:
            raise ValueError(f"npu_rotary_mul: {name} must be 4-D, got shape {tuple(t.shape)}; add singleton dims")
    if rotary_mode != "half":
        raise ValueError(f"npu_rotary_mul: the emulation supports rotary_mode='half' only, got {rotary_mode!r}")
    if x.shape[-1] % 2:
        raise ValueError(f"npu_rotary_mul: the last dim of x must be even, got {x.shape[-1]}")
    if r1.shape != r2.shape:
        raise ValueError(f"npu_rotary_mul: r1 {tuple(r1.shape)} and r2 {tuple(r2.shape)} must have the same shape")
    try:
        out_shape = torch.broadcast_shapes(x.shape, r1.shape)
    except RuntimeError as e:
        raise ValueError(f"npu_rotary_mul: r1 shape {tuple(r1.shape)} does not broadcast to x {tuple(x.shape)}") from e
    if tuple(out_shape) != tuple(x.shape):
        raise ValueError(f"npu_rotary_mul: r1 shape {tuple(r1.shape)} would enlarge x {tuple(x.shape)}")
    xf = x.float()
    return (xf * r1.float() + _rotate_half(xf) * r2.float()).to(x.dtype)


def npu_swiglu(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """SwiGLU: ``silu(a) * b`` with ``a, b = x.chunk(2, dim)`` (first half gated).

    Args:
        x: any shape whose size along ``dim`` is even; float16/bfloat16/float32.
        dim: the dimension split in two halves.

    Returns:
        x's shape with ``dim`` halved, x's dtype.
    """
    _check_float("x", x)
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"npu_swiglu: dim {dim} out of range for x with {x.dim()} dims")
    if x.shape[dim] % 2:
        raise ValueError(f"npu_swiglu: size {x.shape[dim]} of x along dim {dim} must be even (gate|up halves)")
    a, b = x.float().chunk(2, dim=dim)
    return (F.silu(a) * b).to(x.dtype)
