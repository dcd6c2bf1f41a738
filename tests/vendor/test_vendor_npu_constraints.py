"""Every documented constraint of the ops the project calls is refused by the emulation, in one line.

Each row names the constraint's text in the pinned wheel's torch_npu/_op_plugin_docs.py (the
test checks the text is there, so a changed doc shows up), a call through the schema-bound op
that breaks it, and the error the emulation must raise. docs/ascend.md lists the same rows.
"""

from __future__ import annotations

import re

import pytest
import torch

import npu_contract

pytestmark = pytest.mark.vendor

MASK = torch.triu(torch.ones(2048, 2048, dtype=torch.bool), diagonal=1)
F32, F64 = torch.float32, torch.float64


def tnd(t=4, n=4, nkv=2, d=8, ends=(2, 4), dtype=F32, kv_dtype=None, **kw):
    kv_dtype = kv_dtype or dtype
    q, k, v = torch.randn(t, n, d, dtype=dtype), torch.randn(t, nkv, d, dtype=kv_dtype), torch.randn(t, nkv, d, dtype=kv_dtype)
    lens = {} if ends is None else dict(actual_seq_qlen=list(ends), actual_seq_kvlen=list(ends))
    return ("npu_fusion_attention", (q, k, v, n, "TND"), dict(lens, **kw))


def bsnd(b=2, s=4, n=4, nkv=2, d=8, skv=None, **kw):
    skv = skv or s
    q, k, v = torch.randn(b, s, n, d), torch.randn(b, skv, nkv, d), torch.randn(b, skv, nkv, d)
    return ("npu_fusion_attention", (q, k, v, n, "BSND"), kw)


def rot(x_shape, r_shape, dtype=F32, r2_shape=None, grad=False, fill=None):
    r1 = torch.rand(r_shape, dtype=dtype) if fill is None else torch.full(r_shape, fill, dtype=dtype)
    return ("npu_rotary_mul", (torch.randn(x_shape, dtype=dtype), r1.requires_grad_(grad),
                               torch.rand(r2_shape or r_shape, dtype=dtype)), {})


# (doc text that states the constraint, the violating call, the error it must raise)
ROWS = [
    # npu_fusion_attention
    ("支持BSH、SBH、BSND、BNSD、TND", ("npu_fusion_attention", tnd()[1][:4] + ("NTD",), {}), "is not supported"),
    ("TND(actual_seq_qlen/actual_seq_kvlen需传值)", tnd(ends=None), "needs actual_seq_qlen"),
    ("query: Tensor类型, 数据类型支持float16、bfloat16、float32", tnd(dtype=F64), "float16, bfloat16 or float32"),
    ("输入query、key、value、pse的数据类型必须一致", tnd(kv_dtype=torch.float16), "share one dtype"),
    ("输入key和value的shape必须一致", ("npu_fusion_attention", (torch.randn(4, 4, 8), torch.randn(4, 2, 8),
                                        torch.randn(4, 1, 8), 4, "TND"), {}), "must have the same shape"),
    ("D: Head Dim必须满足Dq=Dk和Dk≥Dv，取值范围1~768", tnd(d=769), "outside the documented 1..768"),
    ("D: Head Dim必须满足Dq=Dk", ("npu_fusion_attention", (torch.randn(4, 4, 8), torch.randn(4, 2, 6),
                                                      torch.randn(4, 2, 6), 4, "TND"),
                                 dict(actual_seq_qlen=[4], actual_seq_kvlen=[4])), "head dim 8 != key/value head dim 6"),
    ("Nq取值范围1~256", tnd(n=257, nkv=1), "outside the documented 1..256"),
    ("Nq/Nkv必须是非0整数", tnd(n=4, nkv=3), "must be a multiple of key/value heads"),
    ("B: batchsize必须相等", ("npu_fusion_attention", (torch.randn(2, 4, 4, 8), torch.randn(1, 4, 2, 8),
                                                    torch.randn(1, 4, 2, 8), 4, "BSND"), {}), "B must be equal"),
    ("非varlen场景B取值范围1~2M", bsnd(b=(2 << 20) + 1, s=1, n=1, nkv=1, d=1), "outside the documented 1..2M"),
    ("S: sequence length, 取值范围1~1M", bsnd(b=1, s=(1 << 20) + 1, n=1, nkv=1, d=1), "outside the documented 1..1M"),
    ("要求T(B*S)取值范围1~1M", tnd(t=(1 << 20) + 1, n=1, nkv=1, d=1, ends=((1 << 20) + 1,)),
     "outside the documented 1..1M"),
    ("varlen场景下长度最大支持1K", tnd(t=1025, n=1, nkv=1, ends=range(1, 1026)), "at most 1024"),
    ("数据类型支持bool、uint8", tnd(atten_mask=MASK.float(), sparse_mode=3), "bool or uint8"),
    ("输入shape类型支持BNSS格式、B1SS格式、11SS格式、SS格式", bsnd(atten_mask=torch.zeros(1, 4, 4, 4, dtype=torch.bool)),
     "none of the documented shapes BNSS"),
    ("varlen场景只支持SS格式", tnd(atten_mask=torch.zeros(1, 2, 2, dtype=torch.bool)), "must be SS"),
    ("SS分别是maxSq和maxSkv", tnd(atten_mask=torch.zeros(4, 4, dtype=torch.bool)), r"\(max Sq, max Skv\) = \(2, 2\)"),
    ("atten_mask中不能存在某一行全1的场景", tnd(atten_mask=torch.tensor([[False, True], [True, True]])),
     "fully masked row"),
    ("取值范围为(0, 1]", tnd(keep_prob=0.0), r"must be in \(0, 1\]"),
    ("支持配置值为0、1、2、3、4、5、6、7、8", tnd(sparse_mode=9), "not a valid mode"),
    ("传入的atten_mask为优化后的压缩下三角矩阵(2048*2048)", tnd(atten_mask=torch.ones(2, 2, dtype=torch.bool).triu(1),
                                                        sparse_mode=3), "compressed causal mask"),
    ("5: prefix非压缩模式. varlen场景不支持.", tnd(sparse_mode=5), "not supported for varlen"),
    ("7: varlen外切场景, rightDownCausal模式. 仅varlen场景支持.", bsnd(atten_mask=MASK, sparse_mode=7), "TND' only"),
    ("padding_mask: Tensor类型, 暂不支持该传参.", tnd(padding_mask=torch.zeros(1)), "padding_mask is not supported"),
    ("仅支持传入“TND”", tnd(softmax_layout="NTD"), "only documented value"),
    ("当前仅在input\\_layout=“TND”时进行配置", bsnd(softmax_layout="TND"), "input_layout='TND' only"),
    ("next_tockens为负数时, pre_tockens取值必须大于等于next_tockens的绝对值, 且next_tockens的绝对值小于Skv",
     bsnd(atten_mask=torch.zeros(4, 4, dtype=torch.bool), pre_tockens=1, next_tockens=-2), "next_tockens=-2"),
    ("pre_tockens为负数时, next_tockens取值必须大于等于pre_tockens的绝对值, 且pre_tockens的绝对值小于Sq",
     bsnd(atten_mask=torch.zeros(4, 4, dtype=torch.bool), pre_tockens=-4, next_tockens=9), "pre_tockens=-4"),
    # npu_rms_norm
    ("输入shape支持2-8维", ("npu_rms_norm", (torch.randn(8), torch.rand(8)), {}), "2 to 8 dims"),
    ("输入shape支持2-8维", ("npu_rms_norm", (torch.randn([1] * 9 + [8]), torch.rand(8)), {}), "2 to 8 dims"),
    ("支持float16、bfloat16、float32", ("npu_rms_norm", (torch.randn(2, 8, dtype=F64), torch.rand(8, dtype=F64)), {}),
     "float16, bfloat16 or float32"),
    ("数据类型需要和self保持一致", ("npu_rms_norm", (torch.randn(2, 8).bfloat16(), torch.rand(8)), {}),
     "gamma must have x's dtype"),
    # npu_rotary_mul (half mode, jit_compile=False)
    ("input：必选输入，4维Tensor", ("npu_rotary_mul", (torch.randn(2, 3, 8), torch.rand(2, 3, 8), torch.rand(2, 3, 8)),
                                   {}), "must be 4-D"),
    ("数据类型float16, bfloat16, float32", rot((1, 2, 3, 8), (1, 1, 3, 8), F64), "float16, bfloat16 or float32"),
    ("D < 896，且为2的倍数", rot((1, 2, 3, 896), (1, 1, 3, 896)), "even and < 896"),
    ("D < 896，且为2的倍数", rot((1, 2, 3, 7), (1, 1, 3, 7)), "even and < 896"),
    ("B, N < 1000", rot((1, 1000, 2, 4), (1, 1, 2, 4)), "must be < 1000"),
    ("B, N < 1000", rot((1000, 1, 2, 4), (1000, 1, 2, 4)), "must be < 1000"),
    ("当需要计算cos/sin的反向梯度时，B*N <= 1024", rot((2, 513, 1, 4), (2, 1, 1, 4), grad=True), "<= 1024 when cos/sin"),
    ("数据范围：[-1, 1]", rot((1, 2, 3, 4), (1, 1, 3, 4), fill=1.5), r"\[-1, 1\]"),
    ("input为BNSD: 11SD、B1SD、BNSD", rot((2, 2, 3, 4), (1, 1, 1, 4)), "none of the documented shapes"),
    ("input为BSND: 1S1D、BS1D、BSND", rot((2, 3, 2, 4), (1, 3, 2, 4)), "none of the documented shapes"),
    ("r2: 同r1", rot((1, 2, 3, 4), (1, 1, 3, 4), r2_shape=(1, 2, 3, 4)), "must have the same shape"),
    # npu_swiglu
    ("shape支持1-8维", ("npu_swiglu", (torch.randn([1] * 9 + [4]),), {}), "1 to 8 dims"),
    ("dtype支持FP32、FP16或BF16类型", ("npu_swiglu", (torch.randn(2, 4, dtype=F64),), {}), "float16, bfloat16 or float32"),
]


@pytest.mark.parametrize("doc, call, error", ROWS, ids=[f"{r[1][0]}-{i}" for i, r in enumerate(ROWS)])
def test_documented_constraint_is_refused_in_one_line(torch_npu_wheel, npu_vendor_ops, doc, call, error):
    op, args, kwargs = call
    assert doc in npu_contract.op_doc(torch_npu_wheel, op), f"{op}'s documentation no longer says {doc!r}"
    with pytest.raises((ValueError, TypeError)) as info:
        getattr(npu_vendor_ops, op)(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message.strip(), f"not one line: {message!r}"
    assert re.search(error, message), f"{message!r} does not name the constraint ({error!r})"
