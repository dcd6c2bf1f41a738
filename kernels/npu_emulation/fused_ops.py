"""Pure-torch emulations of torch_npu's fused RMSNorm, rotary and SwiGLU ops.

Contracts followed: the pinned torch-npu 2.10.0.post4 wheel's schemas
(npu_native_functions_by_codegen.yaml), Meta kernels (op_plugin/meta/_meta_registrations.py)
and documentation (_op_plugin_docs.py); tests/vendor checks all three.

- ``npu_rms_norm(self, gamma, epsilon=1e-06) -> (y, rstd)``: normalises over the trailing
  ``gamma.dim()`` dimensions of ``x``. ``rstd`` is the reciprocal RMS, float32, shaped
  like ``x`` with those trailing dimensions set to 1 (the Meta kernel's rstd shape).
  Documented: x 2-8 dims, float16/bfloat16/float32, gamma of x's dtype.
- ``npu_rotary_mul(self, r1, r2, rotary_mode='half', rotate=None)``: ``x * r1 +
  rotate_half(x) * r2`` with ``rotate_half(x) = cat(-x[..., d/2:], x[..., :d/2])``.
  Documented (half mode, jit_compile=False): 4-D inputs in BNSD / BSND / SBND, D < 896 and
  even, B and N < 1000, B * N <= 1024 when r1 / r2 need gradients, r1 / r2 values in
  [-1, 1] and shaped 11SD / B1SD / BNSD (BNSD input), 1S1D / BS1D / BSND (BSND) or
  S11D / SB1D / SBND (SBND). The op takes no layout argument; where r1's shape fits more
  than one layout the emulation takes the first in the documentation's order (BNSD, BSND,
  SBND) to find B and N.
- ``npu_swiglu(self, dim=-1)``: ``silu(a) * b`` where ``a, b = x.chunk(2, dim)``.
  Documented: x 1-8 dims, float32/float16/bfloat16.

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
        x: (..., *N) float16/bfloat16/float32, 2-8 dims.
        gamma: (*N) weight of x's dtype, the trailing shape of ``x``.
        epsilon: added to the mean square before the reciprocal square root.

    Returns:
        y: x's shape and dtype, ``x * rstd * gamma`` computed in float32.
        rstd: float32, x's shape with the ``N`` trailing dims set to 1.
    """
    _check_float("x", x)
    _check_float("gamma", gamma)
    if not 2 <= x.dim() <= 8:
        raise ValueError(f"npu_rms_norm: x must have 2 to 8 dims (documented), got shape {tuple(x.shape)}")
    if gamma.dtype != x.dtype:
        raise TypeError(f"npu_rms_norm: gamma must have x's dtype (documented), got {gamma.dtype} for x {x.dtype}")
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


_ROTARY_LAYOUTS = ("BNSD", "BSND", "SBND")
_ROTARY_MAX_D = 896  # D < 896
_ROTARY_MAX_BN = 1000  # B, N < 1000
_ROTARY_MAX_BN_GRAD = 1024  # B * N <= 1024 when r1 / r2 need gradients


def _rotary_layout(x_shape, r_shape) -> tuple[str, int, int] | None:
    """The first documented layout whose r1 shapes admit ``r_shape`` for x ``x_shape``: (layout, B, N)."""
    a, b, c, d = x_shape
    allowed = {
        "BNSD": ((1, 1, c, d), (a, 1, c, d), (a, b, c, d)),   # x (B, N, S, D): 11SD, B1SD, BNSD
        "BSND": ((1, b, 1, d), (a, b, 1, d), (a, b, c, d)),   # x (B, S, N, D): 1S1D, BS1D, BSND
        "SBND": ((a, 1, 1, d), (a, b, 1, d), (a, b, c, d)),   # x (S, B, N, D): S11D, SB1D, SBND
    }
    batch_heads = {"BNSD": (a, b), "BSND": (a, c), "SBND": (b, c)}
    for layout in _ROTARY_LAYOUTS:
        if tuple(r_shape) in allowed[layout]:
            return (layout, *batch_heads[layout])
    return None


def npu_rotary_mul(x: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, rotary_mode: str = "half",
                   rotate: torch.Tensor | None = None) -> torch.Tensor:
    """Rotary position embedding, rotate-half convention.

    Args:
        x: 4-D in layout BNSD (B, N, S, D), BSND (B, S, N, D) or SBND (S, B, N, D); D even, < 896.
        r1: cos, 4-D of a documented shape for x's layout (e.g. (B, 1, S, D) for BNSD x,
            (1, S, 1, D) for BSND x), values in [-1, 1].
        r2: sin, same shape as ``r1``, values in [-1, 1].
        rotary_mode: only "half" (the default and the convention Qwen uses) is emulated.
        rotate: not emulated (must be None).

    Returns:
        ``x * r1 + rotate_half(x) * r2``, x's shape and dtype.
    """
    for name, t in (("x", x), ("r1", r1), ("r2", r2)):
        _check_float(name, t)
        if t.dim() != 4:
            raise ValueError(f"npu_rotary_mul: {name} must be 4-D, got shape {tuple(t.shape)}; add singleton dims")
    if rotary_mode != "half":
        raise ValueError(f"npu_rotary_mul: the emulation supports rotary_mode='half' only, got {rotary_mode!r}")
    if rotate is not None:
        raise NotImplementedError("npu_rotary_mul: rotate is not emulated (this project never passes it)")
    d = x.shape[-1]
    if d % 2 or d >= _ROTARY_MAX_D:
        raise ValueError(f"npu_rotary_mul: the last dim of x must be even and < 896 (half mode, documented), got {d}")
    if r1.shape != r2.shape:
        raise ValueError(f"npu_rotary_mul: r1 {tuple(r1.shape)} and r2 {tuple(r2.shape)} must have the same shape")
    found = _rotary_layout(x.shape, r1.shape)
    if found is None:
        raise ValueError(f"npu_rotary_mul: r1 shape {tuple(r1.shape)} is none of the documented shapes for x "
                         f"{tuple(x.shape)} (BNSD x: 11SD/B1SD/BNSD; BSND x: 1S1D/BS1D/BSND; SBND x: S11D/SB1D/SBND)")
    layout, b, n = found
    if b >= _ROTARY_MAX_BN or n >= _ROTARY_MAX_BN:
        raise ValueError(f"npu_rotary_mul: B={b} and N={n} of {layout} x {tuple(x.shape)} must be < 1000 (documented)")
    if (r1.requires_grad or r2.requires_grad) and torch.is_grad_enabled() and b * n > _ROTARY_MAX_BN_GRAD:
        raise ValueError(f"npu_rotary_mul: B*N={b * n} of {layout} x {tuple(x.shape)} must be <= 1024 when cos/sin "
                         "need gradients (documented)")
    with torch.no_grad():
        if r1.numel() and (r1.abs().amax() > 1 or r2.abs().amax() > 1):
            raise ValueError("npu_rotary_mul: r1 / r2 values must lie in [-1, 1] (documented)")
    xf = x.float()
    return (xf * r1.float() + _rotate_half(xf) * r2.float()).to(x.dtype)


def npu_swiglu(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """SwiGLU: ``silu(a) * b`` with ``a, b = x.chunk(2, dim)`` (first half gated).

    Args:
        x: 1-8 dims (documented), size along ``dim`` even; float16/bfloat16/float32.
        dim: the dimension split in two halves.

    Returns:
        x's shape with ``dim`` halved, x's dtype.
    """
    _check_float("x", x)
    if not 1 <= x.dim() <= 8:
        raise ValueError(f"npu_swiglu: x must have 1 to 8 dims (documented), got shape {tuple(x.shape)}")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"npu_swiglu: dim {dim} out of range for x with {x.dim()} dims")
    if x.shape[dim] % 2:
        raise ValueError(f"npu_swiglu: size {x.shape[dim]} of x along dim {dim} must be even (gate|up halves)")
    a, b = x.float().chunk(2, dim=dim)
    return (F.silu(a) * b).to(x.dtype)
