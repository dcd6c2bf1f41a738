"""The emulation's outputs have the shapes and dtypes the pinned wheel's Meta kernels compute.

For each input set (the project's call shapes and the op's other layouts), the schema-bound op
runs the emulation on CPU and the wheel's own Meta kernel (op_plugin/meta/_meta_registrations.py,
executed from the wheel) runs on meta copies of the same arguments; every output must agree in
shape and dtype, and the trailing ints in type.
"""

from __future__ import annotations

import pytest
import torch

import npu_contract

pytestmark = pytest.mark.vendor

MASK = torch.triu(torch.ones(2048, 2048, dtype=torch.bool), diagonal=1)


def _fa(layout, q_shape, kv_shape, dtype=torch.float32, **kw):
    q, k, v = torch.randn(q_shape).to(dtype), torch.randn(kv_shape).to(dtype), torch.randn(kv_shape).to(dtype)
    heads = kw.pop("heads")
    return (q, k, v, heads, layout), kw


def _rot(x_shape, r_shape, dtype=torch.float32):
    return (torch.randn(x_shape).to(dtype), torch.rand(r_shape).to(dtype), torch.rand(r_shape).to(dtype)), {}


CASES = {
    "npu_fusion_attention": [
        # the project's call: TND, causal (sparse_mode 3 + compressed mask), T != N, GQA, both softmax layouts
        _fa("TND", (11, 4, 8), (11, 2, 8), heads=4, atten_mask=MASK, scale=0.3, sparse_mode=3,
            actual_seq_qlen=[3, 4, 9, 11], actual_seq_kvlen=[3, 4, 9, 11], softmax_layout="TND"),
        _fa("TND", (11, 4, 8), (11, 2, 8), heads=4, atten_mask=MASK, scale=0.3, sparse_mode=3,
            actual_seq_qlen=[3, 4, 9, 11], actual_seq_kvlen=[3, 4, 9, 11]),
        _fa("TND", (6, 6, 16), (6, 6, 16), torch.bfloat16, heads=6, scale=0.3,
            actual_seq_qlen=[6], actual_seq_kvlen=[6], softmax_layout="TND"),  # not causal, T == N
        _fa("BSND", (2, 5, 4, 8), (2, 5, 2, 8), heads=4, atten_mask=MASK, sparse_mode=2),
        _fa("BNSD", (2, 4, 5, 8), (2, 2, 7, 8), torch.float16, heads=4),
        _fa("BSH", (2, 5, 32), (2, 7, 16), heads=4),
        _fa("SBH", (5, 2, 32), (7, 2, 16), heads=4),
    ],
    "npu_rms_norm": [
        ((torch.randn(2, 7, 16), torch.rand(16)), {"epsilon": 1e-6}),           # text (B, S, H)
        ((torch.randn(9, 16).bfloat16(), torch.rand(16).bfloat16()), {}),       # vision (S, H), bf16
        ((torch.randn(3, 4, 8), torch.rand(4, 8)), {}),                         # 2-D gamma
    ],
    "npu_rotary_mul": [
        _rot((2, 4, 7, 8), (2, 1, 7, 8)),                                        # text: BNSD x, B1SD cos
        _rot((1, 9, 2, 8), (1, 9, 1, 8)),                                        # vision: BSND x, 1S1D cos
        _rot((7, 2, 3, 8), (7, 1, 1, 8), torch.bfloat16),                        # SBND x, S11D
    ],
    "npu_swiglu": [
        ((torch.randn(2, 7, 48),), {"dim": -1}),                                 # the MLP's gate|up
        ((torch.randn(3, 10, 4).half(),), {"dim": 1}),
        ((torch.randn(6),), {}),
    ],
}


def _to_meta(x):
    if isinstance(x, torch.Tensor):
        return x.to("meta")
    return x


def _flat(res):
    return res if isinstance(res, (tuple, list)) else (res,)


@pytest.mark.parametrize("op, case", [(op, i) for op, cases in CASES.items() for i in range(len(cases))])
def test_emulation_outputs_match_the_wheels_meta_kernel(torch_npu_wheel, npu_vendor_ops, op, case):
    args, kwargs = CASES[op][case]
    got = _flat(getattr(npu_vendor_ops, op)(*args, **kwargs))
    meta = npu_contract.meta_kernels(torch_npu_wheel)[op]
    want = _flat(meta(*(_to_meta(a) for a in args), **{k: _to_meta(v) for k, v in kwargs.items()}))
    assert len(got) == len(want), f"{op}: {len(got)} outputs, the Meta kernel {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        if isinstance(w, torch.Tensor):
            assert isinstance(g, torch.Tensor), f"{op} output {i}: {type(g).__name__}, Meta gives a tensor"
            assert (tuple(g.shape), g.dtype) == (tuple(w.shape), w.dtype), (
                f"{op} output {i}: emulation {tuple(g.shape)} {g.dtype}, Meta {tuple(w.shape)} {w.dtype}")
        else:
            assert type(g) is type(w), f"{op} output {i}: {type(g).__name__}, Meta gives {type(w).__name__}"
