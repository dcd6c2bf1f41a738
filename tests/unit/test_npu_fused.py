"""NPU fused-op emulations against direct formulas; swapped Qwen models equal the originals."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Config, Qwen2ForCausalLM

from lmm_r1_ascend.kernels import npu_emulation
from lmm_r1_ascend.kernels.npu_emulation import npu_rms_norm, npu_rotary_mul, npu_swiglu
from lmm_r1_ascend.kernels.npu_fused import apply_npu_fused_ops, remove_npu_fused_ops

LAYERS, VISION_DEPTH = 2, 1
IMAGE_ID = 60

# ---------------------------------------------------------------- emulated ops vs formulas


def _rotate_half_ref(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return torch.cat((-x[..., d:], x[..., :d]), dim=-1)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 8e-3)])
def test_rms_norm_matches_formula(rng_seed, dtype, tol):
    x = torch.randn(3, 5, 16, dtype=dtype)
    gamma = torch.randn(16, dtype=dtype)
    y, rstd = npu_rms_norm(x, gamma, epsilon=1e-5)
    x64 = x.double()
    rstd_ref = 1 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5)
    assert y.dtype == dtype and y.shape == x.shape
    assert rstd.dtype == torch.float32 and rstd.shape == (3, 5, 1)  # documented: normalised dims -> 1
    torch.testing.assert_close(rstd.double(), rstd_ref, rtol=1e-6, atol=0)  # fp32 rsqrt of an fp32 mean
    # fp32: a few ulps of rounding; bf16: one rounding of the output (2^-8 relative, half-ulp ~ 4e-3)
    torch.testing.assert_close(y.double(), x64 * rstd_ref * gamma.double(), rtol=tol, atol=tol)


def test_rms_norm_multi_dim_gamma_and_grad(rng_seed):
    x = torch.randn(4, 3, 8, requires_grad=True)
    gamma = torch.randn(3, 8, requires_grad=True)
    y, rstd = npu_rms_norm(x, gamma)
    assert rstd.shape == (4, 1, 1)
    ref = x * torch.rsqrt(x.pow(2).mean((-2, -1), keepdim=True) + 1e-6) * gamma
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)  # fp32, same formula up to operation order
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, gamma), g)
    ref_grads = torch.autograd.grad(ref, (x, gamma), g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # fp32 backward, different op order


def test_rotary_mul_matches_formula_and_broadcasts(rng_seed):
    x = torch.randn(2, 3, 5, 8, requires_grad=True)  # (B, N, S, D)
    angle = torch.randn(2, 1, 5, 8)  # broadcast over heads; documented: r1 / r2 values in [-1, 1]
    cos, sin = angle.cos(), angle.sin()
    out = npu_rotary_mul(x, cos, sin)
    # direct per-element formula: out[..., i] = x_i cos_i - x_{i+d/2} sin_i (i < d/2), x_i cos_i + x_{i-d/2} sin_i
    d = 4
    ref = torch.empty_like(x)
    ref[..., :d] = x[..., :d] * cos[..., :d] - x[..., d:] * sin[..., :d]
    ref[..., d:] = x[..., d:] * cos[..., d:] + x[..., :d] * sin[..., d:]
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)  # fp32, identical products and sums
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, g)
    # d out / d x is the transpose of the rotation: g*cos + rotate_half^T(g*sin)
    gs = g * sin
    gx_ref = g * cos + torch.cat((gs[..., d:], -gs[..., :d]), dim=-1)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-6, atol=1e-6)  # fp32, same few products


def test_swiglu_matches_formula_and_grad(rng_seed):
    x = torch.randn(3, 10, 4, requires_grad=True)
    out = npu_swiglu(x, dim=1)
    a, b = x[:, :5], x[:, 5:]
    ref = a * torch.sigmoid(a) * b
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)  # fp32, silu = a * sigmoid(a)
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, g)
    s = torch.sigmoid(a)
    gx_ref = torch.cat((g * b * (s + a * s * (1 - s)), g * a * s), dim=1)  # d silu(a)/da = s(1 + a(1 - s))
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)  # fp32, analytic vs autograd order


def test_fused_op_errors():
    with pytest.raises(ValueError, match="must be even"):
        npu_swiglu(torch.randn(2, 5))
    with pytest.raises(ValueError, match="out of range"):
        npu_swiglu(torch.randn(2, 4), dim=2)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        npu_swiglu(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="trailing dims"):
        npu_rms_norm(torch.randn(2, 8), torch.randn(4))
    with pytest.raises(ValueError, match="must be 4-D"):
        npu_rotary_mul(torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="none of the documented shapes"):
        npu_rotary_mul(torch.randn(1, 2, 5, 8), torch.rand(1, 1, 4, 8), torch.rand(1, 1, 4, 8))
    with pytest.raises(ValueError, match="last dim of x must be even"):
        npu_rotary_mul(torch.randn(1, 2, 5, 7), torch.rand(1, 1, 5, 7), torch.rand(1, 1, 5, 7))
    with pytest.raises(ValueError, match="rotary_mode='half' only"):
        npu_rotary_mul(torch.randn(1, 1, 2, 4), torch.rand(1, 1, 2, 4), torch.rand(1, 1, 2, 4), "interleave")


@pytest.mark.parametrize("call, text", [
    # npu_rms_norm: x 2-8 dims, gamma of x's dtype
    (lambda: npu_rms_norm(torch.randn(8), torch.randn(8)), "2 to 8 dims"),
    (lambda: npu_rms_norm(torch.randn(1, 1, 1, 1, 1, 1, 1, 1, 1, 8), torch.randn(8)), "2 to 8 dims"),
    (lambda: npu_rms_norm(torch.randn(2, 8, dtype=torch.bfloat16), torch.randn(8)), "gamma must have x's dtype"),
    # npu_swiglu: 1-8 dims
    (lambda: npu_swiglu(torch.randn(1, 1, 1, 1, 1, 1, 1, 1, 1, 4)), "1 to 8 dims"),
    # npu_rotary_mul, half mode: D < 896 and even; B, N < 1000; B*N <= 1024 with cos/sin grads; values in [-1, 1]
    (lambda: npu_rotary_mul(torch.randn(1, 1, 2, 896), torch.rand(1, 1, 2, 896), torch.rand(1, 1, 2, 896)),
     "even and < 896"),
    (lambda: npu_rotary_mul(torch.randn(1, 1000, 1, 2), torch.rand(1, 1, 1, 2), torch.rand(1, 1, 1, 2)),
     "must be < 1000"),
    (lambda: npu_rotary_mul(torch.randn(2, 513, 1, 2), torch.rand(2, 1, 1, 2, requires_grad=True),
                            torch.rand(2, 1, 1, 2)), "<= 1024 when cos/sin"),
    (lambda: npu_rotary_mul(torch.randn(1, 2, 3, 4), torch.full((1, 1, 3, 4), 1.01), torch.rand(1, 1, 3, 4)),
     r"\[-1, 1\]"),
    (lambda: npu_rotary_mul(torch.randn(2, 2, 3, 4), torch.rand(1, 1, 1, 4), torch.rand(1, 1, 1, 4)),
     "none of the documented shapes"),  # 111D fits no layout
])
def test_fused_op_documented_constraints(call, text):
    with pytest.raises((ValueError, TypeError), match=text):
        call()


def test_rotary_layouts_and_gradient_limit_allow_what_the_docs_allow(rng_seed):
    """Every documented r1 shape is accepted for its layout; B*N = 1024 with cos/sin gradients passes."""
    x = torch.randn(2, 3, 4, 6)
    a, b, c, d = x.shape
    for shape in [(1, 1, c, d), (a, 1, c, d), (a, b, c, d), (1, b, 1, d), (a, b, 1, d), (a, 1, 1, d)]:
        r = torch.rand(shape) * 2 - 1
        torch.testing.assert_close(npu_rotary_mul(x, r, r), x * r + _rotate_half_ref(x) * r)  # fp32, same formula
    r = torch.rand(2, 1, 1, 2, requires_grad=True)
    npu_rotary_mul(torch.randn(2, 512, 1, 2), r, r).sum().backward()  # BNSD: B*N = 1024
    assert r.grad is not None


# ---------------------------------------------------------------- swapping on tiny models


def _randomise_norms(model: torch.nn.Module) -> None:
    """HF initialises RMSNorm weights to 1; random ones make the gamma path observable."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "norm1" in name or "norm2" in name or "ln_q" in name:
                p.uniform_(0.5, 1.5)


@pytest.fixture(scope="module")
def qwen2() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
    )
    cfg._attn_implementation = "eager"
    model = Qwen2ForCausalLM(cfg).eval()
    _randomise_norms(model)
    return model


@pytest.fixture(scope="module")
def qwen25vl() -> Qwen2_5_VLForConditionalGeneration:
    torch.manual_seed(0)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=LAYERS, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(
            depth=VISION_DEPTH, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=2,
            spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32, window_size=8,
            fullatt_block_indexes=[0], tokens_per_second=2, in_channels=3,
        ),
        image_token_id=IMAGE_ID, video_token_id=61, vision_start_token_id=58, vision_end_token_id=59,
        bos_token_id=1, eos_token_id=2,
    )
    cfg.text_config._attn_implementation = "eager"
    cfg.vision_config._attn_implementation = "eager"
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    _randomise_norms(model)
    # HF's std-0.02 init makes the vision blocks nearly the identity (uniform attention, tiny MLP
    # output): larger weights make the vision swaps observable in the logits.
    with torch.no_grad():
        for p in model.model.visual.blocks.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5)
    return model


def _vl_inputs() -> dict:
    grid = torch.tensor([[1, 4, 6]])
    n = 4 * 6 // 4
    ids = torch.tensor([[5, 6, 58] + [IMAGE_ID] * n + [59, 7, 8, 9]])
    return {
        "input_ids": ids,
        "pixel_values": torch.randn(24, 3 * 2 * 2 * 2),
        "image_grid_thw": grid,
        "mm_token_type_ids": (ids == IMAGE_ID).int(),
    }


def _logits(model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _wrong(op: str) -> types.SimpleNamespace:
    """The emulation namespace with one op deliberately broken."""
    ops = types.SimpleNamespace(
        npu_rms_norm=npu_rms_norm, npu_rotary_mul=npu_rotary_mul, npu_swiglu=npu_swiglu
    )
    if op == "swiglu":  # halves swapped: silu(up) * gate
        ops.npu_swiglu = lambda x, dim=-1: npu_swiglu(torch.cat(x.chunk(2, dim)[::-1], dim), dim)
    elif op == "rotary":  # rotation the other way
        ops.npu_rotary_mul = lambda x, r1, r2: npu_rotary_mul(x, r1, -r2)
    else:  # gamma ignored
        ops.npu_rms_norm = lambda x, g, eps=1e-6: npu_rms_norm(x, torch.ones_like(g), eps)
    return ops


def test_qwen2_swapped_equals_original(qwen2, rng_seed):
    model = copy.deepcopy(qwen2)
    inputs = {"input_ids": torch.randint(0, 64, (2, 11))}
    before = _logits(model, inputs)
    counts = apply_npu_fused_ops(model, npu_emulation)
    # per layer: input + post-attention norm, one attention, one MLP; plus the final norm
    assert counts == {"rms_norm": 2 * LAYERS + 1, "rotary": LAYERS, "swiglu": LAYERS}
    # fp32: the emulation performs the same products as HF (observed bit-equal); 1e-6 leaves op-order ulps
    torch.testing.assert_close(_logits(model, inputs), before, rtol=1e-6, atol=1e-6)
    assert apply_npu_fused_ops(model, npu_emulation) == {"rms_norm": 0, "rotary": 0, "swiglu": 0}  # idempotent
    assert remove_npu_fused_ops(model) == 4 * LAYERS + 1
    assert torch.equal(_logits(model, inputs), before)


def test_qwen2_bf16_swapped_close_to_original(qwen2, rng_seed):
    model = copy.deepcopy(qwen2).to(torch.bfloat16)
    inputs = {"input_ids": torch.randint(0, 64, (2, 11))}
    before = _logits(model, inputs)
    apply_npu_fused_ops(model, npu_emulation)
    after = _logits(model, inputs)
    assert after.dtype == torch.bfloat16
    # HF's RMSNorm rounds to bf16 twice (normalised x, then times gamma), the fused op once: logits of
    # magnitude ~0.5 (bf16 ulp 2^-9 ~ 2e-3) may differ by a few ulps after 2 layers (observed ~2e-3)
    torch.testing.assert_close(after.float(), before.float(), rtol=0, atol=1e-2)


@pytest.mark.parametrize("op", ["swiglu", "rotary", "rms_norm"])
def test_wrong_ops_change_logits_of_that_instance_only(qwen2, op, rng_seed):
    model, other = copy.deepcopy(qwen2), copy.deepcopy(qwen2)
    # 32 tokens: with 9, a sign-flipped rotary once moved the tiny random model's logits by < 1e-3.
    inputs = {"input_ids": torch.randint(0, 64, (1, 32))}
    before = _logits(model, inputs)
    apply_npu_fused_ops(model, _wrong(op))
    assert (_logits(model, inputs) - before).abs().max() > 1e-4  # the swap is live: 100x the equality tolerance
    assert torch.equal(_logits(other, inputs), before)  # another instance of the same classes is untouched
    remove_npu_fused_ops(model)
    assert torch.equal(_logits(model, inputs), before)


def test_qwen25vl_text_and_vision_swapped_equal_original(qwen25vl, rng_seed):
    model = copy.deepcopy(qwen25vl)
    inputs = _vl_inputs()
    before = _logits(model, inputs)
    text = apply_npu_fused_ops(model, npu_emulation)
    assert text == {"rms_norm": 2 * LAYERS + 1, "rotary": LAYERS, "swiglu": LAYERS}
    torch.testing.assert_close(_logits(model, inputs), before, rtol=1e-6, atol=1e-6)  # fp32, see qwen2 test
    vision = apply_npu_fused_ops(model, npu_emulation, include_vision=True)
    # per vision block: norm1, norm2, attention, MLP; plus the merger's ln_q
    assert vision == {"rms_norm": 2 * VISION_DEPTH + 1, "rotary": VISION_DEPTH, "swiglu": VISION_DEPTH}
    torch.testing.assert_close(_logits(model, inputs), before, rtol=1e-6, atol=1e-6)  # fp32, see qwen2 test


@pytest.mark.parametrize("op", ["swiglu", "rotary", "rms_norm"])
def test_qwen25vl_vision_swap_is_live(qwen25vl, op, rng_seed):
    model = copy.deepcopy(qwen25vl)
    inputs = _vl_inputs()
    before = _logits(model, inputs)
    apply_npu_fused_ops(model.model.visual, _wrong(op), include_vision=True)  # vision tower only
    assert (_logits(model, inputs) - before).abs().max() > 1e-3  # 100x the equality tolerance


def test_apply_errors(qwen2):
    with pytest.raises(TypeError, match=r"lacks \['npu_swiglu'\]"):
        apply_npu_fused_ops(qwen2, types.SimpleNamespace(npu_rms_norm=npu_rms_norm, npu_rotary_mul=npu_rotary_mul))
    with pytest.raises(ValueError, match="supports Qwen2 and Qwen2.5-VL"):
        apply_npu_fused_ops(torch.nn.Sequential(torch.nn.Linear(2, 2)), npu_emulation)
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        apply_npu_fused_ops("model", npu_emulation)
