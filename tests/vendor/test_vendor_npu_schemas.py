"""Every torch_npu op the project calls, bound to the pinned wheel's own schema, through the
project's real NPU code paths (packed attention, fused RMSNorm / rotary / SwiGLU in Qwen2 and
Qwen2.5-VL text and vision blocks). Ring attention and Ulysses: test_vendor_npu_sequence_parallel.py.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

import npu_contract
import npu_paths

pytestmark = pytest.mark.vendor

ROOT = Path(__file__).resolve().parents[2]
# Where device code may call torch_npu ops: the kernels, the backends and (never, by design) the core.
SOURCES = ("kernels", "backends", "lmm_r1_ascend")
CALL = re.compile(r"\b(?:ops|torch_npu)\.(npu_\w+)\s*\(")


def project_npu_calls() -> dict[str, list[str]]:
    """{op: ["file:line", ...]} for every `ops.npu_*(` / `torch_npu.npu_*(` call in the sources."""
    found: dict[str, list[str]] = {}
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            if "npu_emulation" in path.parts:
                continue  # the emulation defines the ops; it does not call them
            for n, line in enumerate(path.read_text().splitlines(), 1):
                for op in CALL.findall(line):
                    found.setdefault(op, []).append(f"{path.relative_to(ROOT)}:{n}")
    return found


def test_every_called_op_has_a_wheel_schema(torch_npu_wheel):
    calls = project_npu_calls()
    assert set(calls) == set(npu_contract.OPS), (
        f"the project calls {sorted(calls)}; tests/vendor binds {npu_contract.OPS}: add the new op's contract")
    assert set(npu_contract.schemas(torch_npu_wheel)) == set(npu_contract.OPS)


def test_emulation_signatures_are_the_wheel_schemas(torch_npu_wheel):
    """Same arguments, order and defaults as the wheel's schema (the first tensor's name aside:
    the schema calls it `self`, which a Python caller cannot pass by keyword anyway)."""
    kernels = npu_contract._emulation_kernels()
    for op, schema in npu_contract.schemas(torch_npu_wheel).items():
        args = torch._C.parse_schema(schema).arguments
        params = list(inspect.signature(kernels[op]).parameters.values())
        assert len(params) == len(args), f"{op}: emulation takes {len(params)} args, the wheel's schema {len(args)}"
        for i, (p, a) in enumerate(zip(params, args)):
            if i or a.name != "self":
                assert p.name == a.name, f"{op}: argument {i} is {p.name!r}, the schema says {a.name!r}"
            want = inspect.Parameter.empty if not a.has_default_value() else a.default_value
            assert p.default == want or (p.default is None and want is None), f"{op}.{a.name}: {p.default!r} != {want!r}"


def test_fusion_attention_schema_is_the_pinned_one(torch_npu_wheel):
    """The 2.10.0.post4 schema: softmax_layout, sink, dropout_mask, seed, offset after sync."""
    args = [a.name for a in torch._C.parse_schema(npu_contract.schemas(torch_npu_wheel)["npu_fusion_attention"]).arguments]
    assert args[args.index("sync") + 1:] == ["softmax_layout", "sink", "dropout_mask", "seed", "offset"]


def _tnd(n=2):
    q = torch.randn(4, n, 8)
    return q, q.clone(), q.clone()


@pytest.mark.parametrize("kwargs, message", [
    (dict(actual_seq_len=(2, 4), actual_seq_kvlen=(2, 4)), "Unknown keyword argument 'actual_seq_len'"),
    (dict(actual_seq_qlen=torch.tensor([2, 4]), actual_seq_kvlen=(2, 4)),
     r"Expected a value of type 'Optional\[List\[int\]\]' for argument 'actual_seq_qlen'"),
    (dict(actual_seq_qlen=(2.0, 4.0), actual_seq_kvlen=(2, 4)), "for argument 'actual_seq_qlen'"),
    (dict(actual_seq_qlen=(2, 4), actual_seq_kvlen=(2, 4), softmax_layout=None),
     "Expected a value of type 'str' for argument 'softmax_layout'"),
    (dict(actual_seq_qlen=(2, 4), actual_seq_kvlen=(2, 4), atten_mask=[[0]]), "for argument 'atten_mask'"),
])
def test_dispatcher_rejects_wrong_keywords_and_types(npu_vendor_ops, kwargs, message):
    q, k, v = _tnd()
    with pytest.raises(RuntimeError, match=message):
        npu_vendor_ops.npu_fusion_attention(q, k, v, 2, "TND", **kwargs)


def test_dispatcher_rejects_wrong_arity_and_positional_types(npu_vendor_ops):
    q, k, v = _tnd()
    with pytest.raises(RuntimeError, match="expected at most 24 argument"):
        npu_vendor_ops.npu_fusion_attention(q, k, v, 2, "TND", *([None] * 3), 1.0, 1.0, 1, 1, 0, None, (2, 4), (2, 4),
                                            0, True, False, "TND", None, None, 0, 0, 0)
    with pytest.raises(RuntimeError, match="Expected a value of type 'int' for argument 'head_num'"):
        npu_vendor_ops.npu_fusion_attention(q, k, v, 2.0, "TND", actual_seq_qlen=(2, 4), actual_seq_kvlen=(2, 4))
    with pytest.raises(RuntimeError, match="missing value for argument 'input_layout'"):
        npu_vendor_ops.npu_fusion_attention(q, k, v, 2)
    with pytest.raises(RuntimeError, match="Unknown keyword argument 'eps'"):
        npu_vendor_ops.npu_rms_norm(torch.randn(2, 8), torch.ones(8), eps=1e-6)
    with pytest.raises(RuntimeError, match="Expected a value of type 'int' for argument 'dim'"):
        npu_vendor_ops.npu_swiglu(torch.randn(2, 8), dim=-1.0)
    with pytest.raises(RuntimeError, match="for argument 'rotary_mode'"):
        npu_vendor_ops.npu_rotary_mul(torch.randn(1, 1, 2, 4), torch.rand(1, 1, 2, 4), torch.rand(1, 1, 2, 4), 0)


def test_all_24_arguments_pass_positionally(npu_vendor_ops):
    """The full positional call the schema allows reaches the emulation (and returns the 7-tuple)."""
    q, k, v = _tnd()
    res = npu_vendor_ops.npu_fusion_attention(q, k, v, 2, "TND", None, None, None, 0.5, 1.0, 2147483647, 2147483647,
                                              0, None, [2, 4], [2, 4], 0, True, False, "TND", None, None, 0, 0)
    assert len(res) == 7 and [type(x) for x in res[4:]] == [int, int, int]


def test_packed_attention_forward_backward_through_the_schema(schema_bound_npu, rng_seed):
    before = npu_contract.CALLS["npu_fusion_attention"]
    npu_paths.check_packed_attention(lengths=(5, 1, 9, 3), hq=4, hkv=2, d=8, seed=rng_seed)
    npu_paths.check_packed_attention(lengths=(7,), hq=3, hkv=3, d=16, seed=rng_seed + 1)
    assert npu_contract.CALLS["npu_fusion_attention"] - before == 8


def test_fused_qwen2_through_the_schema(schema_bound_npu, rng_seed):
    before = dict(npu_contract.CALLS)
    npu_paths.check_fused_model(npu_paths.tiny_qwen2(), {"input_ids": torch.randint(0, 64, (2, 11))})
    for op in ("npu_rms_norm", "npu_rotary_mul", "npu_swiglu"):
        assert npu_contract.CALLS[op] > before.get(op, 0), op


def test_fused_qwen25vl_text_and_vision_through_the_schema(schema_bound_npu):
    model, inputs = npu_paths.tiny_qwen25vl(), npu_paths.vl_inputs()
    npu_paths.check_fused_model(model, inputs)
    before = dict(npu_contract.CALLS)
    npu_paths.check_vision_tower(model, inputs)  # a windowed block and a full-attention block
    for op in ("npu_rms_norm", "npu_rotary_mul", "npu_swiglu"):
        assert npu_contract.CALLS[op] > before.get(op, 0), f"the vision tower did not call {op}"
