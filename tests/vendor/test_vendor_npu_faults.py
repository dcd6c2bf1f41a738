"""Planted faults fail the vendor checks, each on its own.

Each test plants exactly one fault at the project's call of a torch_npu op (a shim between the
project's call and the schema-bound op that rewrites what the project passes, i.e. what the
call would look like with the bug), or a model width that breaks a documented constraint, and
asserts that the check that passes without it (test_vendor_npu_schemas.py) now fails.
"""

from __future__ import annotations

import pytest
import torch

import npu_paths
from lmm_r1_ascend.kernels import npu_emulation

pytestmark = pytest.mark.vendor


def _plant(monkeypatch, ops, rewrite) -> None:
    """The project's npu_fusion_attention call, with its keyword arguments rewritten by ``rewrite``."""
    def planted(*args, **kwargs):
        return ops.npu_fusion_attention(*args, **rewrite(dict(kwargs)))

    monkeypatch.setattr(npu_emulation, "npu_fusion_attention", planted)


def _rename(kw):
    kw["actual_seq_len"] = kw.pop("actual_seq_qlen")
    return kw


def _as_tensor(kw):
    kw["actual_seq_qlen"] = torch.tensor(kw["actual_seq_qlen"])
    return kw


def _default_softmax_layout(kw):
    kw.pop("softmax_layout")  # softmax_max / softmax_sum then come out NTD but are read as TND
    return kw


def test_wrong_keyword_fails(schema_bound_npu, monkeypatch):
    _plant(monkeypatch, schema_bound_npu, _rename)
    with pytest.raises(RuntimeError, match="Unknown keyword argument 'actual_seq_len'"):
        npu_paths.check_packed_attention()


def test_tensor_for_int_list_fails(schema_bound_npu, monkeypatch):
    _plant(monkeypatch, schema_bound_npu, _as_tensor)
    with pytest.raises(RuntimeError, match=r"Expected a value of type 'Optional\[List\[int\]\]' for argument "
                                           "'actual_seq_qlen' but instead found type 'Tensor'"):
        npu_paths.check_packed_attention()


@pytest.mark.parametrize("lengths, heads", [((3, 4), 4), ((2, 2), 4)])  # T=7 != N=4; T == N == 4
def test_softmax_max_read_in_the_wrong_layout_fails(schema_bound_npu, monkeypatch, lengths, heads, rng_seed):
    npu_paths.check_packed_attention(lengths=lengths, hq=heads, hkv=2, seed=rng_seed)  # passes as the project calls it
    _plant(monkeypatch, schema_bound_npu, _default_softmax_layout)
    with pytest.raises(AssertionError, match="Tensor-likes are not close"):
        npu_paths.check_packed_attention(lengths=lengths, hq=heads, hkv=2, seed=rng_seed)


def test_rotary_head_dim_896_fails(schema_bound_npu):
    """Documented: half-mode rotary needs D < 896. A Qwen2 with head dim 894 passes the same check."""
    npu_paths.check_fused_model(npu_paths.tiny_qwen2(hidden=894, heads=1, kv_heads=1, layers=1),
                                {"input_ids": torch.randint(0, 64, (1, 5))}, atol=1e-4, grads=False)
    with pytest.raises(ValueError, match="even and < 896"):
        npu_paths.check_fused_model(npu_paths.tiny_qwen2(hidden=896, heads=1, kv_heads=1, layers=1),
                                    {"input_ids": torch.randint(0, 64, (1, 5))}, atol=1e-4, grads=False)
