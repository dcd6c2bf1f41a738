"""A CPU-runnable stand-in for exactly the torch_npu ops this project calls.

Each op follows the contract documented for torch_npu (see shared ASCEND.md and the
module docstrings): layouts, cumulative lengths without a leading zero, True = masked,
sparse modes, default scale, output tuples. It is the documented contract, not the
hardware: numbers produced through it say nothing about Ascend kernels' precision.

Used as an op namespace in place of the ``torch_npu`` module, e.g.
``ops.npu_fusion_attention(q, k, v, heads, "TND", ...)``.
"""

from lmm_r1_ascend.kernels.npu_emulation.fused_ops import npu_rms_norm, npu_rotary_mul, npu_swiglu
from lmm_r1_ascend.kernels.npu_emulation.fusion_attention import npu_fusion_attention

__all__ = ["npu_fusion_attention", "npu_rms_norm", "npu_rotary_mul", "npu_swiglu"]
