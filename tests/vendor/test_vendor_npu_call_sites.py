"""The project's NPU call sites at Qwen2.5-VL-3B's widths and the recipes' packed lengths stay
inside the documented constraints, through the wheel's schemas; and the TND softmax layout is
read as asked for.

Widths (lmm_r1_ascend/models/shape_models.py): text hidden 2048, 16 query / 2 key-value heads
of dim 128; vision hidden 1280, 16 heads of dim 80, windowed and full-attention blocks.
Packed lengths: the recipes' max_tokens_per_micro_batch (up to 16384). What the documented
limits depend on is the token count, the number of sequences, the heads and head dim, the mask
(the compressed 2048 x 2048 one at any length) and the rotary layouts; none depends on how
long each sequence is, so the packed rows here are many short sequences, which keeps the
emulated attention's per-sequence score matrices small.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import npu_contract
import npu_paths
from lmm_r1_ascend.kernels.attention import varlen_attention_reference
from lmm_r1_ascend.kernels.attention_npu import NPU_MAX_VARLEN_SEQS

pytestmark = pytest.mark.vendor

RECIPES = Path(__file__).resolve().parents[2] / "lmm_r1_ascend" / "recipes"
HQ, HKV, D = 16, 2, 128


def recipe_max_tokens() -> int:
    sizes = [yaml.safe_load(p.read_text()).get("trainer", {}).get("max_tokens_per_micro_batch")
             for p in sorted(RECIPES.glob("*.yaml"))]
    sizes = [s for s in sizes if s]
    assert sizes, f"no max_tokens_per_micro_batch in {RECIPES}"
    return max(sizes)


def _attend(lengths, seed=0, compare=True):
    kernels = npu_paths.backend().select_kernels()
    q, k, v, _, cu, host = npu_paths.packed(lengths, HQ, HKV, D, seed=seed)
    before = npu_contract.CALLS["npu_fusion_attention"]
    out, lse = kernels.attention.fn(q, k, v, cu, max(lengths), return_lse=True, cu_seqlens_host=host)
    calls = npu_contract.CALLS["npu_fusion_attention"] - before
    assert out.shape == (sum(lengths), HQ, D) and lse.shape == (sum(lengths), HQ)
    if not compare:
        return calls
    want_out, want_lse = varlen_attention_reference(q, k, v, cu, max(lengths), return_lse=True, cu_seqlens_host=host)
    # fp32 over 128-wide dot products and <= 128 keys: ~1e-6 of rounding; 1e-4 still separates a wrong mask
    torch.testing.assert_close(out, want_out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lse, want_lse, atol=1e-4, rtol=1e-4)
    return calls


@pytest.mark.slow  # ~20 s on a 2-core CPU: 16384 tokens x 16 heads x 128 through the per-sequence emulation
def test_text_attention_at_3b_widths_and_the_recipes_packed_length(schema_bound_npu):
    total = recipe_max_tokens()
    assert total >= 16384
    # 16-token sequences: 1024 of them fill 16384 tokens, exactly the op's varlen limit (one call)
    assert _attend([16] * (total // 16), compare=False) == 1  # values: test_tnd_softmax_layout_..., _schemas.py


@pytest.mark.slow  # ~15-35 s on a 2-core CPU; the split itself is in the default run (below)
def test_more_than_1024_sequences_run_as_one_call_per_1024(schema_bound_npu):
    """Documented: a varlen call takes at most 1K sequences. A 16384-token row of 1100
    sequences (the packer keeps whole sequences; short ones make many) is split at the call site."""
    lengths = [15] * 984 + [14] * 116
    assert len(lengths) > NPU_MAX_VARLEN_SEQS
    assert _attend(lengths) == 2


def test_rows_over_the_varlen_limit_are_split_per_group(schema_bound_npu, monkeypatch, rng_seed):
    """The split at the call site, with the limit lowered to 2 sequences: 5 sequences -> 3 calls,
    outputs, lse and gradients equal to the reference's."""
    import lmm_r1_ascend.kernels.attention_npu as A

    monkeypatch.setattr(A, "NPU_MAX_VARLEN_SEQS", 2)
    before = npu_contract.CALLS["npu_fusion_attention"]
    npu_paths.check_packed_attention(lengths=(3, 1, 4, 2, 5), hq=4, hkv=2, d=8, seed=rng_seed)
    assert npu_contract.CALLS["npu_fusion_attention"] - before == 4 * 3  # 4 variants (causal x lse) x 3 groups


@pytest.mark.parametrize("lengths, heads", [((5, 2, 9), 4), ((1, 3), 4), ((1,), 1)])  # T != N, T == N, T == N == 1
def test_tnd_softmax_layout_is_read_as_requested(schema_bound_npu, lengths, heads, rng_seed):
    """kernels/attention_npu.py passes softmax_layout="TND" and reads (T, N); its lse equals the reference's."""
    npu_paths.check_packed_attention(lengths=lengths, hq=heads, hkv=1, d=8, seed=rng_seed)


def test_fused_ops_at_3b_widths_text_and_vision(schema_bound_npu):
    """Qwen2.5-VL-3B's widths (1 text layer, a windowed and a full-attention vision block; vocabulary
    cut to 512), fused ops swapped into text and vision, one forward with gradients enabled (the
    rotary's B*N limit applies when cos / sin need gradients). fp32: a bf16 backward at these
    widths takes minutes on a CPU, and no documented limit depends on the dtype among fp16/bf16/fp32."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from lmm_r1_ascend.models.shape_models import shape_config

    cfg = shape_config("qwen2.5-vl-3b-shape", 1, 2)
    assert cfg.vision_config.fullatt_block_indexes == [1]
    ids = dict(image_token_id=500, video_token_id=501, vision_start_token_id=502, vision_end_token_id=503,
               vision_token_id=504)
    for name, value in ids.items():
        setattr(cfg, name, value)
    cfg.text_config.vocab_size, cfg.text_config.pad_token_id = 512, 0
    cfg.pad_token_id = cfg.bos_token_id = cfg.eos_token_id = 0
    cfg.text_config._attn_implementation = cfg.vision_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    counts = npu_paths.backend().select_kernels().fused_ops.fn(model, include_vision=True)
    assert counts == {"rms_norm": 2 + 1 + 2 * 2 + 1, "rotary": 1 + 2, "swiglu": 1 + 2}, counts
    grid = (1, 16, 16)  # 256 patches: 8 x 8 merged units in 2 x 2 windows of 112 px
    inputs = npu_paths.vl_inputs(grid, image_id=500, patch_dim=3 * 2 * 14 * 14)
    before = dict(npu_contract.CALLS)
    logits = model(**inputs).logits
    assert logits.requires_grad and torch.isfinite(logits).all()
    for op in ("npu_rms_norm", "npu_rotary_mul", "npu_swiglu"):
        assert npu_contract.CALLS[op] > before.get(op, 0), op
