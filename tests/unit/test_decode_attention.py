"""Decode-step attention (kernels/decode_attention.py) against a per-row, per-head loop, and
generation through it against transformers' eager attention."""

from __future__ import annotations

import math

import pytest
import torch

from lmm_r1_ascend.backends import get_backend
from lmm_r1_ascend.kernels.decode_attention import decode_attention_matmul
from lmm_r1_ascend.kernels.packing import cu_seqlens_from_lengths, position_ids_from_lengths
from lmm_r1_ascend.models.packed_attention import make_attention_forward, packed_kwargs, use_decode_attention
from lmm_r1_ascend.models.tiny import ensure_tiny_model


def loop_reference(query, key, value, keep, scale):
    """The definition, one sequence and one query head at a time, in float64.

    keep: bool (B, L) or (B, Hq, L), True where the query may look."""
    batch, heads, _, dim = query.shape
    groups = heads // key.shape[1]
    out = torch.zeros(batch, 1, heads, dim, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            row_keep = keep[b] if keep.dim() == 2 else keep[b, h]
            k = key[b, h // groups].double()[row_keep]
            v = value[b, h // groups].double()[row_keep]
            weights = torch.softmax(k @ query[b, h, 0].double() * scale, dim=0)
            out[b, 0, h] = weights @ v
    return out


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (4, 4), (6, 1)])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive", "per_head_bool"])
def test_matmul_kernel_equals_the_loop(heads, kv_heads, mask_kind, rng_seed):
    batch, length, dim = 5, int(torch.randint(3, 40, ()).item()), 16
    query = torch.randn(batch, heads, 1, dim)
    key, value = torch.randn(batch, kv_heads, length, dim), torch.randn(batch, kv_heads, length, dim)
    pads = torch.randint(0, length - 1, (batch,))  # left padding, as batched generation has
    keep = torch.arange(length)[None] >= pads[:, None]  # (B, L); the last key (the token itself) always kept
    mask = None
    if mask_kind == "bool":
        mask = keep[:, None, None, :]
    elif mask_kind == "additive":
        mask = torch.zeros(batch, 1, 1, length).masked_fill(~keep[:, None, None, :], torch.finfo(torch.float32).min)
    elif mask_kind == "per_head_bool":
        keep = keep[:, None, :] & (torch.rand(batch, heads, length) > 0.3)
        keep[..., -1] = True
        mask = keep[:, :, None, :]
    if mask_kind == "none":
        keep = torch.ones(batch, length, dtype=torch.bool)
    scale = float(torch.rand(()) + 0.1)
    got = decode_attention_matmul(query, key, value, mask, scale=scale)
    assert got.shape == (batch, 1, heads, dim) and got.dtype == torch.float32 and got.is_contiguous()
    # fp32 sums of <= 40 products of O(1) terms: ~1e-6 from the float64 loop
    torch.testing.assert_close(got.double(), loop_reference(query, key, value, keep, scale), rtol=1e-5, atol=1e-5)
    default = decode_attention_matmul(query, key, value, mask)
    torch.testing.assert_close(default.double(), loop_reference(query, key, value, keep, 1 / math.sqrt(dim)),
                               rtol=1e-5, atol=1e-5)


def test_bfloat16_inputs_give_a_bfloat16_output_close_to_the_definition(rng_seed):
    query, key, value = torch.randn(3, 4, 1, 8), torch.randn(3, 2, 20, 8), torch.randn(3, 2, 20, 8)
    got = decode_attention_matmul(query.bfloat16(), key.bfloat16(), value.bfloat16())
    assert got.dtype == torch.bfloat16
    keep = torch.ones(3, 20, dtype=torch.bool)
    # bf16 inputs and output: 8 mantissa bits, ~4e-3 relative per rounding, a few roundings deep
    torch.testing.assert_close(got.double(), loop_reference(query.bfloat16().float(), key.bfloat16().float(),
                                                            value.bfloat16().float(), keep, 8 ** -0.5),
                               rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("bad,match", [
    (dict(query=torch.randn(2, 4, 3, 8)), "one query token"),
    (dict(query=torch.randn(2, 3, 1, 8)), "multiple of key/value heads"),
    (dict(value=torch.randn(2, 2, 9, 8)), "same shape"),
    (dict(key=torch.randn(3, 2, 10, 8), value=torch.randn(3, 2, 10, 8)), "share batch"),
    (dict(mask=torch.ones(2, 1, 1, 9, dtype=torch.bool)), "must broadcast"),
    (dict(query=torch.randn(4, 8)), "must be a"),
])
def test_bad_shapes_get_a_clear_error(bad, match):
    args = dict(query=torch.randn(2, 4, 1, 8), key=torch.randn(2, 2, 10, 8), value=torch.randn(2, 2, 10, 8), mask=None)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        decode_attention_matmul(args["query"], args["key"], args["value"], args["mask"])


def test_the_forward_routes_one_token_queries_only(rng_seed):
    calls = []

    def decode(query, key, value, mask, *, scale=None):
        calls.append(query.shape)
        return decode_attention_matmul(query, key, value, mask, scale=scale)

    forward = make_attention_forward(lambda *a, **k: None, decode)

    class Module:
        num_key_value_groups, is_causal = 2, True

    key, value = torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    out, weights = forward(Module(), torch.randn(2, 4, 1, 8), key, value, None)
    assert out.shape == (2, 1, 4, 8) and weights is None and len(calls) == 1
    forward(Module(), torch.randn(2, 4, 6, 8), key, value, None)  # prefill: SDPA
    forward(Module(), torch.randn(2, 4, 1, 8), key, value, None, position_bias=torch.zeros(2, 4, 1, 6))  # SDPA only
    assert len(calls) == 1


@pytest.fixture(scope="module")
def tiny_text_path(tmp_path_factory):
    return ensure_tiny_model("tiny-qwen2", cache_dir=tmp_path_factory.mktemp("tiny"))


def test_cpu_generation_through_the_decode_kernel_equals_eager(tiny_text_path, rng_seed):
    from transformers import AutoModelForCausalLM

    kernels = get_backend("cpu").select_kernels()
    assert kernels.decode_attention.name == "matmul"
    eager = AutoModelForCausalLM.from_pretrained(tiny_text_path, attn_implementation="eager", dtype=torch.float32).eval()
    ours = AutoModelForCausalLM.from_pretrained(tiny_text_path, attn_implementation="eager", dtype=torch.float32).eval()
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return kernels.decode_attention.fn(*args, **kwargs)

    use_decode_attention(ours, counted)
    ids = torch.randint(10, 600, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    mask[2, :1] = 0
    settings = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, output_scores=True,
                    return_dict_in_generate=True, pad_token_id=0)
    with torch.no_grad():
        expected, got = eager.generate(ids, **settings), ours.generate(ids, **settings)
    assert len(calls) == 11 * ours.config.num_hidden_layers  # every decode step of every layer, not the prefill
    assert torch.equal(got.sequences, expected.sequences)
    # fp32 logits of a 2-layer model through two attention orders: ~1e-6 observed
    torch.testing.assert_close(torch.stack(got.scores), torch.stack(expected.scores), rtol=1e-4, atol=1e-4)
    cu = cu_seqlens_from_lengths([3, 4])
    with pytest.raises(ValueError, match="serves generation only"):  # a packed forward needs models.loading
        ours(input_ids=ids[:1], position_ids=position_ids_from_lengths([3, 4])[None], **packed_kwargs(cu, cu.tolist()))

