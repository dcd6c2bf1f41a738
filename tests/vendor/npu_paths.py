"""The project's real NPU code paths, driven on CPU, each held to an independent reference.

Every check goes through EmulatedNpuBackend's kernel set (backends/npu.py), i.e. the code
NpuBackend runs with torch_npu, over whatever the emulation module's ops are at the time:
the schema-bound ops of npu_contract in the vendor tests, or those ops with a planted fault.
A check raises (the op's own error, or AssertionError) when the path deviates.
"""

from __future__ import annotations

import copy

import torch

from lmm_r1_ascend.kernels.attention import varlen_attention_reference

# fp32 against per-sequence SDPA: O(1) values, <= 32 keys: a few fp32 roundings (~1e-6);
# 2e-5 separates "same attention" from a wrong mask / scale / layout (O(0.1)).
FP32 = dict(atol=2e-5, rtol=2e-5)
IMAGE_ID = 60


def backend():
    from lmm_r1_ascend.backends.npu import EmulatedNpuBackend

    return EmulatedNpuBackend()


def packed(lengths, hq, hkv, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = sum(lengths)
    q, k, v, dout = (torch.randn(t, h, d, generator=g).to(dtype) for h in (hq, hkv, hkv, hq))
    host = [0]
    for n in lengths:
        host.append(host[-1] + n)
    return q, k, v, dout, torch.tensor(host, dtype=torch.int32), host


def check_packed_attention(lengths=(5, 1, 9, 3), hq=4, hkv=2, d=8, seed=0) -> None:
    """The NPU attention kernel (forward, backward, with and without lse; causal and not) equals
    the per-sequence SDPA reference."""
    kernels = backend().select_kernels()
    assert kernels.attention.name == "npu_fusion", kernels.attention
    fn = kernels.attention.fn
    q, k, v, dout, cu, host = packed(lengths, hq, hkv, d, seed=seed)
    for causal in (True, False):
        for return_lse in (False, True):
            leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
            ref_leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
            kw = dict(scale=0.3, causal=causal, return_lse=return_lse, cu_seqlens_host=host)
            got = fn(*leaves, cu, max(lengths), **kw)
            want = varlen_attention_reference(*ref_leaves, cu, max(lengths), **kw)
            out, ref = (got[0], want[0]) if return_lse else (got, want)
            torch.testing.assert_close(out, ref, **FP32)
            if return_lse:
                assert got[1].shape == (sum(lengths), hq), got[1].shape
                torch.testing.assert_close(got[1], want[1], **FP32)
            out.backward(dout)
            ref.backward(dout)
            for name, a, b in zip("qkv", leaves, ref_leaves):
                torch.testing.assert_close(a.grad, b.grad, **FP32, msg=lambda m, n=name: f"d{n}: {m}")


def tiny_qwen2(hidden=32, heads=4, kv_heads=2, layers=2):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=hidden, intermediate_size=48, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2)
    cfg._attn_implementation = "eager"
    return _randomise(Qwen2ForCausalLM(cfg).eval())


def tiny_qwen25vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
        # two blocks: block 0 windowed (window 8 px = 2x2 merged units of a 4x6-patch grid), block 1 full
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=2,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32, window_size=4,
                           fullatt_block_indexes=[1], tokens_per_second=2, in_channels=3),
        image_token_id=IMAGE_ID, video_token_id=61, vision_start_token_id=58, vision_end_token_id=59,
        bos_token_id=1, eos_token_id=2)
    cfg.text_config._attn_implementation = "eager"
    cfg.vision_config._attn_implementation = "eager"
    model = _randomise(Qwen2_5_VLForConditionalGeneration(cfg).eval())
    with torch.no_grad():  # HF's 0.02 init leaves the vision blocks near the identity
        for p in model.model.visual.blocks.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5)
    return model


def vl_inputs(grid=(1, 4, 6), image_id=IMAGE_ID, patch_dim=3 * 2 * 2 * 2, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    t, h, w = grid
    n = t * h * w // 4
    ids = torch.tensor([[5, 6, image_id - 2] + [image_id] * n + [image_id - 1, 7, 8, 9]])
    return {"input_ids": ids, "pixel_values": torch.randn(t * h * w, patch_dim, generator=g),
            "image_grid_thw": torch.tensor([list(grid)]), "mm_token_type_ids": (ids == image_id).int()}


def _randomise(model):
    """RMSNorm weights start at 1; random ones make the gamma path observable."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "norm1" in name or "norm2" in name or "ln_q" in name:
                p.uniform_(0.5, 1.5)
    return model


def _swap(model):
    kernels = backend().select_kernels()
    assert kernels.fused_ops.name == "npu_fused", kernels.fused_ops
    swapped = copy.deepcopy(model)
    counts = kernels.fused_ops.fn(swapped, include_vision=True)
    assert min(counts.values()) > 0, counts
    return swapped


def check_fused_model(model, inputs: dict, atol=1e-5, grads=True) -> None:
    """The model with the NPU fused ops swapped in (text and vision) gives the original's logits
    and (grads=True) gradients (fp32: the same products up to op order)."""
    swapped = _swap(model)
    outs = []
    for m in (model, swapped):
        m.zero_grad(set_to_none=True)
        logits = m(**inputs).logits
        if grads:
            logits.float().pow(2).mean().backward()
        outs.append((logits.detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=atol, rtol=atol)
    assert outs[1][1].keys() == outs[0][1].keys()
    for name, grad in outs[0][1].items():
        torch.testing.assert_close(outs[1][1][name], grad, atol=atol, rtol=atol, msg=lambda m, n=name: f"{n}: {m}")


def check_vision_tower(model, inputs: dict, atol=1e-5) -> None:
    """The Qwen2.5-VL vision tower alone (window and full-attention blocks) with fused ops equals the original."""
    swapped = _swap(model)
    with torch.no_grad():
        a = model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
        b = swapped.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    a, b = (getattr(x, "pooler_output", x) for x in (a, b))
    a, b = (x[0] if isinstance(x, tuple) else x for x in (a, b))
    torch.testing.assert_close(b, a, atol=atol, rtol=atol)
