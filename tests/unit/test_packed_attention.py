"""Packed forwards through transformers' AttentionInterface equal per-sample forwards."""

from __future__ import annotations

import pytest
import torch

from lmm_r1_ascend.backends import get_backend
from lmm_r1_ascend.kernels.packing import cu_seqlens_from_lengths, position_ids_from_lengths
from lmm_r1_ascend.models.packed_attention import HOST_CU_SEQLENS_KWARG, packed_kwargs, use_packed_attention
from lmm_r1_ascend.models.tiny import ensure_tiny_model


@pytest.fixture(scope="module")
def tiny_text_path(tmp_path_factory):
    return ensure_tiny_model("tiny-qwen2", cache_dir=tmp_path_factory.mktemp("tiny"))


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()


def _batch(lengths):
    seqs = [torch.randint(10, 600, (n,)) for n in lengths]
    cu = cu_seqlens_from_lengths(lengths)
    return seqs, torch.cat(seqs)[None], position_ids_from_lengths(lengths)[None], cu


@pytest.mark.parametrize("device", ["cpu", "npu-emulated"])
def test_packed_logits_equal_per_sample_logits(tiny_text_path, device, rng_seed):
    model = _load(tiny_text_path)
    lengths = [5, 1, 9, 3]
    seqs, ids, pos, cu = _batch(lengths)
    with torch.no_grad():
        expected = [model(s[None]).logits[0] for s in seqs]  # eager attention, one sample at a time
        use_packed_attention(model, get_backend(device).select_kernels().attention.fn, name=f"test_packed_{device}")
        got = model(input_ids=ids, position_ids=pos, **packed_kwargs(cu, cu.tolist())).logits[0]
    for g, e in zip(got.split(lengths), expected):
        # fp32, 2 layers, different summation order between eager and varlen kernels: ~1e-7 observed.
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_packing_without_cu_seqlens_leaks_across_samples(tiny_text_path, rng_seed):
    """The bug of the public Ascend port: packed rows under plain causal attention see earlier samples."""
    model = _load(tiny_text_path)
    lengths = [6, 6]
    seqs, ids, pos, cu = _batch(lengths)
    with torch.no_grad():
        expected = model(seqs[1][None]).logits[0]
        leaky = model(input_ids=ids, position_ids=pos).logits[0, 6:]
        use_packed_attention(model, get_backend("cpu").select_kernels().attention.fn, name="test_packed_leak")
        fixed = model(input_ids=ids, position_ids=pos, **packed_kwargs(cu, cu.tolist())).logits[0, 6:]
    assert (leaky - expected).abs().max() > 1e-3
    torch.testing.assert_close(fixed, expected, rtol=1e-5, atol=1e-5)


def test_gradients_flow_and_samples_are_isolated(tiny_text_path, rng_seed):
    model = _load(tiny_text_path)
    use_packed_attention(model, get_backend("npu-emulated").select_kernels().attention.fn, name="test_packed_grad")
    lengths = [4, 7]
    seqs, ids, pos, cu = _batch(lengths)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, position_ids=pos, **packed_kwargs(cu, cu.tolist())).logits[0]
    logits[4:].sum().backward()  # a loss on the second sample only
    grad = embeds.grad[0].abs().sum(-1)
    assert (grad[4:] > 0).all()
    assert (grad[:4] == 0).all(), "the second sample's loss reached the first sample's inputs"


def test_unpacked_calls_still_generate(tiny_text_path):
    model = _load(tiny_text_path)
    use_packed_attention(model, get_backend("cpu").select_kernels().attention.fn, name="test_packed_gen")
    prompt = torch.randint(10, 600, (1, 5))
    out = model.generate(prompt, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 9)


def test_host_lengths_reach_the_kernel(tiny_text_path):
    seen = []

    def spy(q, k, v, cu_seqlens, max_seqlen, **kw):
        seen.append((kw["cu_seqlens_host"], max_seqlen, kw["scale"], kw["causal"]))
        return get_backend("cpu").select_kernels().attention.fn(q, k, v, cu_seqlens, max_seqlen, **kw)

    model = _load(tiny_text_path)
    use_packed_attention(model, spy, name="test_packed_spy")
    seqs, ids, pos, cu = _batch([3, 2])
    with torch.no_grad():
        model(input_ids=ids, position_ids=pos, **packed_kwargs(cu, [0, 3, 5]))
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    assert seen and all(s == ([0, 3, 5], 3, head_dim**-0.5, True) for s in seen)
    assert len(seen) == model.config.num_hidden_layers
    assert HOST_CU_SEQLENS_KWARG in packed_kwargs(cu, [0, 3, 5])
