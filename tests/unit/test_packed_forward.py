"""Packed actor / reference / critic forwards equal padded Hugging Face forwards.

The reference is a separately loaded, untouched HF model (eager attention, no fused ops)
run on a padded batch with an attention mask, its fp32 logits -> log_softmax -> gather
at the next tokens; for VL models HF builds the mRoPE positions itself (get_rope_index),
so our packed positions are checked too. Every attention implementation reachable on CPU
is covered: backend "cpu" (reference kernel) and "npu-emulated" (npu_fusion through the
emulation, plus the emulated fused RMSNorm / rotary / SwiGLU).
"""

from __future__ import annotations

import pytest
import torch

from lmm_r1_ascend.backends import get_backend
from lmm_r1_ascend.models.critic import Critic
from lmm_r1_ascend.models.forward import (
    Sample, pack_samples, packed_log_probs, packed_values, samples_from_experience,
)
from lmm_r1_ascend.models.loading import ModelSpec, load_critic, load_policy, load_reference
from lmm_r1_ascend.models.tiny import ensure_tiny_model

BACKENDS = ["cpu", "npu-emulated"]
# fp32 throughout; packed and padded differ only in summation order (varlen kernel vs eager
# masked softmax, fused-op emulation vs HF modules): max |diff| observed 1e-6 on log-probs
# of magnitude ~7 (a few fp32 ulps), 2e-6 on entropies, 5e-8 on values, over 2 layers.
# 2e-5 leaves 10x margin yet catches any cross-sample leak, position or alignment error
# (each moves log-probs by > 1e-3; checked by mutating the code).
TOL = dict(rtol=2e-5, atol=2e-5)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_fwd")
    paths = {name: str(ensure_tiny_model(name, cache_dir=root)) for name in ("tiny-qwen2", "tiny-qwen2.5-vl")}
    return {**paths, "root": str(root)}


def _hf(path, kind):
    """A fresh, untouched HF model: eager attention, no fused ops, eval mode."""
    import transformers

    cls = {"text": transformers.AutoModelForCausalLM, "vl": transformers.AutoModelForImageTextToText,
           "backbone": transformers.AutoModel}[kind]
    return cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def _pad(seqs, value, left):
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=seqs[0].dtype)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(width - len(s), width) if left else slice(0, len(s))
        out[i, sl], mask[i, sl] = s, 1
    return out, mask


def _gather_response(per_pos, samples, mask, left):
    """per_pos (B, W, ...) at position p predicts token p + 1 -> per-sample (R_i, ...) response rows."""
    width = mask.shape[1]
    out = []
    for i, s in enumerate(samples):
        n, r = len(s.input_ids), s.response_length
        start = width - n if left else 0
        out.append(per_pos[i, start + n - r - 1: start + n - 1])
    return out


def _padded_reference(model, samples, *, left, temperature=1.0, vl=False, critic_head=None):
    """Padded HF forward: per-sample response log-probs and entropies (fp32), or values."""
    pad_id = model.config.pad_token_id if not vl else model.config.text_config.pad_token_id
    ids, mask = _pad([s.input_ids for s in samples], pad_id, left)
    kwargs = {"attention_mask": mask}
    if vl:
        pix = [s.pixel_values for s in samples if s.pixel_values is not None]
        if pix:
            kwargs["pixel_values"] = torch.cat(pix)
            kwargs["image_grid_thw"] = torch.cat([s.image_grid_thw for s in samples if s.image_grid_thw is not None])
        kwargs["mm_token_type_ids"] = (ids == model.config.image_token_id).int()
    else:
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding shifts positions
    if critic_head is not None:
        hidden = model(input_ids=ids, **kwargs).last_hidden_state
        return _gather_response(hidden @ critic_head.t(), samples, mask, left)
    logits = model(input_ids=ids, **kwargs).logits.float() / temperature
    logp = torch.log_softmax(logits, -1)
    nxt = torch.cat([ids[:, 1:], ids[:, :1]], 1)  # the last column never belongs to a response
    tok = logp.gather(-1, nxt[..., None])[..., 0]
    ent = -(logp.exp() * logp).sum(-1)
    return _gather_response(tok, samples, mask, left), _gather_response(ent, samples, mask, left)


def _text_samples(lengths):
    return [Sample(torch.randint(10, 600, (n,)), r) for n, r in lengths]


def _vl_samples(cfg):
    """Samples with 0, 2 and 1 images of different sizes, pads expanded to the merged patch counts."""
    vs, ve, pad = cfg.vision_start_token_id, cfg.vision_end_token_id, cfg.image_token_id

    def text(n):
        return torch.randint(10, 600, (n,))

    def image(grid):
        t, h, w = grid
        return torch.tensor([vs] + [pad] * (t * h * w // 4) + [ve]), torch.randn(t * h * w, 1176)

    (a, pa), (b, pb), (c, pc) = image((1, 4, 6)), image((1, 2, 2)), image((1, 6, 4))
    return [
        Sample(text(9), 4),
        Sample(torch.cat([text(3), a, text(2), b, text(6)]), 5, torch.cat([pa, pb]),
               torch.tensor([[1, 4, 6], [1, 2, 2]])),
        Sample(torch.cat([text(2), c, text(4)]), 3, pc, torch.tensor([[1, 6, 4]])),
    ]


def _vl_shared_samples(cfg):
    """Samples packed with shared prompts: two of one image prompt (the second with an observation
    image inside its response, as multi-turn samples have), one with the same prompt ids but other
    pixels (not the same prompt: 3 groups with the text-only one), and a text-only prompt twice."""
    vs, ve, pad = cfg.vision_start_token_id, cfg.vision_end_token_id, cfg.image_token_id

    def text(n):
        return torch.randint(10, 600, (n,))

    image = torch.tensor([vs] + [pad] * 6 + [ve])  # a (1, 4, 6) grid: 24 patches, 6 merged pads
    grid, obs_grid = torch.tensor([[1, 4, 6]]), torch.tensor([[1, 2, 2]])
    prompt, pixels, t_prompt = torch.cat([text(3), image, text(2)]), torch.randn(24, 1176), text(7)
    obs = torch.tensor([vs, pad, ve])
    turn = torch.cat([text(2), obs, text(3)])
    return [
        Sample(torch.cat([prompt, text(4)]), 4, pixels, grid),
        Sample(torch.cat([t_prompt, text(3)]), 3),
        Sample(torch.cat([prompt, turn]), len(turn), torch.cat([pixels, torch.randn(4, 1176)]),
               torch.cat([grid, obs_grid]), torch.tensor([True, True, False, False, False, True, True, True])),
        Sample(torch.cat([prompt, text(5)]), 5, torch.randn(24, 1176), grid),
        Sample(torch.cat([t_prompt, text(6)]), 6),
    ]


def _vl_case(cfg, prompts):
    samples = _vl_samples(cfg) if prompts == "distinct" else _vl_shared_samples(cfg)
    shared = pack_samples(samples, cfg, share_prompts=True).shared
    assert (shared.groups if shared else len(samples)) == (3 if prompts == "shared" else len(samples))
    return samples


def _assert_lists_close(got, expected):
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, e, **TOL)


def _shared_prompt_samples():
    """Three prompts, two with several samples: packed with one copy each (kernels/shared_prompts.py)."""
    prompts = [torch.randint(10, 600, (n,)) for n in (6, 3, 9)]
    return [Sample(torch.cat((prompts[i], torch.randint(10, 600, (r,)))), r)
            for i, r in ((0, 4), (1, 2), (0, 1), (2, 5), (0, 7), (1, 3))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prompts", ["distinct", "shared"])
def test_text_logprobs_entropy_values_equal_padded_hf(cache, backend, prompts, rng_seed):
    spec = ModelSpec(cache["tiny-qwen2"])  # share_prompts is on by default
    samples = _text_samples([(7, 3), (15, 6), (2, 1), (11, 10)]) if prompts == "distinct" else _shared_prompt_samples()
    temperature = 0.6 + torch.rand(()).item()
    policy = load_reference(spec, get_backend(backend))
    assert (pack_samples(samples, policy.config, share_prompts=True).shared is not None) == (prompts == "shared")
    got = packed_log_probs(policy, samples, temperature=temperature, return_entropy=True, chunk_size=5)
    critic = load_critic(spec, get_backend(backend))
    with torch.no_grad():
        values = packed_values(critic, samples)
    hf, hf_backbone = _hf(spec.path, "text"), _hf(spec.path, "backbone")
    for left in (False, True):  # right and left padding
        ref_lp, ref_ent = _padded_reference(hf, samples, left=left, temperature=temperature)
        _assert_lists_close(got.log_probs, ref_lp)
        _assert_lists_close(got.entropy, ref_ent)
        with torch.no_grad():
            expected = _padded_reference(hf_backbone, samples, left=left, critic_head=critic.value_head.weight)
        _assert_lists_close(values, [e[:, 0] for e in expected])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prompts", ["distinct", "shared"])
def test_multi_image_logprobs_and_values_equal_padded_hf(cache, backend, prompts, rng_seed):
    spec = ModelSpec(cache["tiny-qwen2.5-vl"])
    policy = load_reference(spec, get_backend(backend))
    samples = _vl_case(policy.config, prompts)
    got = packed_log_probs(policy, samples, return_entropy=True)
    critic = load_critic(spec, get_backend(backend))
    with torch.no_grad():
        values = packed_values(critic, samples)
    hf, hf_backbone = _hf(spec.path, "vl"), _hf(spec.path, "backbone")
    for left in (False, True):  # HF builds the mRoPE positions of the padded batch itself
        ref_lp, ref_ent = _padded_reference(hf, samples, left=left, vl=True)
        _assert_lists_close(got.log_probs, ref_lp)
        _assert_lists_close(got.entropy, ref_ent)
        with torch.no_grad():
            expected = _padded_reference(hf_backbone, samples, left=left, vl=True, critic_head=critic.value_head.weight)
        _assert_lists_close(values, [e[:, 0] for e in expected])


def test_qwen2_vl_packed_equals_padded(cache, tmp_path, rng_seed):
    """Qwen2-VL (not 2.5): same packed path, its own vision tower; a random checkpoint built here."""
    from transformers import AutoConfig, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    base = AutoConfig.from_pretrained(cache["tiny-qwen2.5-vl"])
    config = Qwen2VLConfig(
        text_config=base.text_config.to_dict(),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, in_channels=3,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        **{k: getattr(base, k) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                         "vision_end_token_id", "pad_token_id")},
    )
    Qwen2VLForConditionalGeneration(config).save_pretrained(tmp_path)
    # The NPU fused ops cover Qwen2 / Qwen2.5-VL only: by default the model keeps HF's modules.
    with pytest.raises(ValueError, match="apply_npu_fused_ops supports Qwen2 and Qwen2.5-VL"):
        load_reference(ModelSpec(str(tmp_path), fused_ops=True), get_backend("npu-emulated"))
    policy = load_reference(ModelSpec(str(tmp_path)), get_backend("npu-emulated"))
    assert type(policy).__name__ == "Qwen2VLForConditionalGeneration"
    samples = _vl_samples(policy.config)
    ref_lp, _ = _padded_reference(_hf(tmp_path, "vl"), samples, left=True, vl=True)
    _assert_lists_close(packed_log_probs(policy, samples).log_probs, ref_lp)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prompts", ["distinct", "shared"])
def test_gradients_equal_padded_hf_gradients(cache, backend, prompts, rng_seed):
    """d(sum of response log-probs)/d(every parameter), vision tower included, packed vs padded."""
    spec = ModelSpec(cache["tiny-qwen2.5-vl"])
    policy = load_policy(spec, get_backend(backend))
    samples = _vl_case(policy.config, prompts)
    torch.stack([lp.sum() for lp in packed_log_probs(policy, samples, temperature=0.9).log_probs]).sum().backward()
    hf = _hf(spec.path, "vl")
    ref_lp, _ = _padded_reference(hf, samples, left=True, temperature=0.9, vl=True)
    torch.stack([lp.sum() for lp in ref_lp]).sum().backward()
    grads = dict(hf.named_parameters())
    for name, p in policy.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, f"{name}: no gradient reached it"
        # fp32 gradients of O(1) sums: ~1e-6 differences from summation order.
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=2e-5, msg=name)


def test_text_only_vl_batch_keeps_every_vision_parameter_in_the_graph(cache, rng_seed):
    spec = ModelSpec(cache["tiny-qwen2.5-vl"])
    policy = load_policy(spec, get_backend("cpu"))
    samples = _text_samples([(6, 2), (9, 4)])
    vision = {n: p for n, p in policy.named_parameters() if n.startswith("model.visual.")}
    assert vision

    out = packed_log_probs(policy, samples, keep_vision_in_graph=False)
    torch.cat(out.log_probs).sum().backward()
    assert all(p.grad is None for p in vision.values())  # what ZeRO-3 would hang on

    policy.zero_grad(set_to_none=True)
    kept = packed_log_probs(policy, samples)
    torch.cat(kept.log_probs).sum().backward()
    for name, p in vision.items():
        assert p.grad is not None, f"{name} left the graph on a text-only batch"
        assert torch.count_nonzero(p.grad) == 0, f"{name}: the blank image must contribute exactly 0"
    # ... and the blank image changes nothing numerically.
    torch.testing.assert_close(torch.cat(kept.log_probs), torch.cat(out.log_probs), rtol=0, atol=0)


def test_packed_inputs_layout(cache):
    policy = load_reference(ModelSpec(cache["tiny-qwen2.5-vl"]), get_backend("cpu"))
    samples = _vl_samples(policy.config)
    packed = pack_samples(samples, policy.config)
    lengths = [len(s.input_ids) for s in samples]
    total = sum(lengths)
    assert packed.input_ids.shape == (1, total) and packed.position_ids.shape == (4, 1, total)
    assert packed.cu_seqlens.dtype == torch.int32 and packed.cu_seqlens_host == [0, 9, 9 + lengths[1], total]
    assert packed.position_ids[0, 0].tolist() == [p for n in lengths for p in range(n)]
    assert packed.mm_token_type_ids.tolist()[0] == (packed.input_ids == policy.config.image_token_id).int().tolist()[0]
    assert packed.image_grid_thw.tolist() == [[1, 4, 6], [1, 2, 2], [1, 6, 4]]
    assert packed.pixel_values.shape == (24 + 4 + 24, 1176)
    # Each score index predicts the label one position later, inside the same sample's response.
    assert torch.equal(packed.input_ids[0, packed.score_index + 1], packed.score_labels)
    assert packed.score_index.numel() == sum(s.response_length for s in samples)


def test_samples_from_experience(cache):
    from lmm_r1_ascend.experience.batch import ExperienceBatch

    grid = torch.tensor([[1, 2, 2]])
    batch = ExperienceBatch(
        prompt_ids=[torch.tensor([1, 2, 3]), torch.tensor([4])], response_ids=[torch.tensor([5, 6]), torch.tensor([7])],
        action_mask=[torch.ones(2, dtype=torch.bool), torch.ones(1, dtype=torch.bool)],
        log_probs=[torch.zeros(2), torch.zeros(1)], rewards=torch.zeros(2), group_ids=torch.tensor([0, 1]),
        multimodal=[{"pixel_values": torch.ones(4, 1176), "image_grid_thw": grid}, {}],
    )
    a, b = samples_from_experience(batch)
    assert a.input_ids.tolist() == [1, 2, 3, 5, 6] and a.response_length == 2 and a.image_grid_thw is grid
    assert b.input_ids.tolist() == [4, 7] and b.response_length == 1 and b.pixel_values is None


def test_model_without_packed_attention_is_refused(cache):
    policy = load_policy(ModelSpec(cache["tiny-qwen2"]))  # no backend: plain SDPA, which ignores packing
    with pytest.raises(ValueError, match="ignores packing.*enable_packed_forward"):
        packed_log_probs(policy, _text_samples([(4, 2), (3, 1)]))
    critic = Critic(policy.base_model)
    with pytest.raises(ValueError, match="ignores packing"):
        packed_values(critic, _text_samples([(4, 2)]))


def test_bad_samples_are_clear_errors(cache):
    text_cfg = load_reference(ModelSpec(cache["tiny-qwen2"])).config
    cfg = load_reference(ModelSpec(cache["tiny-qwen2.5-vl"])).config
    good = _vl_samples(cfg)[2]  # one 6x4 image -> 6 pads, 24 patch rows

    def vl(**change):
        return [Sample(**{**vars(good), **change})]

    cases = [
        (text_cfg, [Sample(torch.randint(10, 600, (4097,)), 3)],
         "4097 tokens, over the model's max_position_embeddings=4096"),
        (text_cfg, [Sample(torch.arange(5), 5)], r"response_length 5 must be in \[1, 4\]"),
        (text_cfg, [Sample(torch.arange(5), 0)], r"response_length 0 must be in \[1, 4\]"),
        (text_cfg, [Sample(torch.tensor([1, 5000]), 1)], r"outside the model's vocabulary \[0, "),
        (text_cfg, [Sample(torch.rand(5), 1)], "1-D integer tensor"),
        (text_cfg, [], "no samples"),
        (text_cfg, vl(), "has images but the model .Qwen2Config. has no vision tower"),
        (cfg, vl(pixel_values=good.pixel_values[:20]), "20 patch rows but image_grid_thw .* needs sum.t.h.w. = 24"),
        (cfg, vl(image_grid_thw=torch.tensor([[1, 4, 4]])),
         "24 patch rows but image_grid_thw .* needs sum.t.h.w. = 16"),
        (cfg, vl(pixel_values=torch.randn(24, 100)), r"float \(patches, 1176\)"),
        (cfg, vl(image_grid_thw=None), "must be given together"),
        (cfg, vl(pixel_values=None, image_grid_thw=None), "6 image pad tokens but no pixel_values"),
        (cfg, vl(input_ids=torch.cat([torch.tensor([11, cfg.image_token_id]), good.input_ids])),
         r"7 <\|image_pad\|> tokens but its image_grid_thw .* needs .* = 6"),
    ]
    for config, samples, message in cases:
        with pytest.raises(ValueError, match=message):
            pack_samples(samples, config)
    with pytest.raises(TypeError, match=r"samples\[0\] is a dict"):
        pack_samples([{"input_ids": torch.arange(3)}], text_cfg)


def test_benchmark_runs_both_paths_on_the_same_micro_batches(cache):
    """Smoke run of benchmarks/bench_packed_forward.py on a toy case (its ratio is the benchmark's job)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_packed_forward.py"
    spec = importlib.util.spec_from_file_location("bench_packed_forward", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.run(samples=6, median_response=6, max_response=24, prompt_min=3, prompt_max=6, token_budget=48,
                    hidden=32, layers=1, heads=2, kv_heads=1, repeats=1, cache_dir=cache["root"])
    assert res["real_tokens"] < res["padded_tokens"] and 0 < res["pad_fraction"] < 1
    assert all(v > 0 for v in res["tokens_per_s"].values()) and res["micro_batches"] >= 2
    a, b = res["loss_check"]
    assert a == pytest.approx(b, rel=1e-5)  # the two paths computed the same log-probs


def test_image_pad_sampled_in_a_response_is_text(cache, rng_seed):
    """An untrained VL policy can sample <|image_pad|>; that token is text, not an image slot."""
    spec = ModelSpec(cache["tiny-qwen2.5-vl"])
    policy = load_reference(spec, get_backend("cpu"))
    cfg = policy.config
    base = _vl_samples(cfg)[2]  # one image, 3 response tokens
    response = torch.tensor([11, cfg.image_token_id, 12, cfg.image_token_id])
    sample = Sample(torch.cat([base.input_ids, response]), 3 + 4, base.pixel_values, base.image_grid_thw)
    packed = pack_samples([sample], cfg)
    assert int((packed.mm_token_type_ids[0, -4:] != 0).sum()) == 0
    full = packed_log_probs(policy, [sample]).log_probs[0]
    # Causality: the scores up to and including the first sampled pad equal those of the sample cut there.
    cut = Sample(sample.input_ids[:-2], 3 + 2, base.pixel_values, base.image_grid_thw)
    torch.testing.assert_close(full[:5], packed_log_probs(policy, [cut]).log_probs[0], rtol=1e-5, atol=1e-5)


def test_log_probs_come_from_the_backends_kernel_set(cache):
    """packed_log_probs calls the log-prob kernel the backend chose (swapped here for a recording
    one), not a kernel it imports itself; the numbers are the chunked kernel's, unchanged."""
    import dataclasses

    from lmm_r1_ascend.backends.base import KernelChoice
    from lmm_r1_ascend.backends.cpu import CpuBackend

    calls = []

    class RecordingCpu(CpuBackend):
        name = "cpu-recording"

        def select_kernels(self, overrides=None, dtype=None):
            kernels = super().select_kernels(overrides, dtype)
            chunked = kernels.logprobs.fn

            def recording(hidden, weight, labels, **kw):
                calls.append((tuple(hidden.shape), tuple(labels.shape)))
                return chunked(hidden, weight, labels, **kw)

            return dataclasses.replace(kernels, logprobs=KernelChoice("logprobs", "recording", "test", fn=recording))

    spec, samples = ModelSpec(cache["tiny-qwen2"]), _text_samples([(7, 3), (5, 2)])
    policy = load_reference(spec, RecordingCpu())
    got = packed_log_probs(policy, samples, return_entropy=True)
    assert calls == [((5, policy.config.hidden_size), (5,))]  # sum of R_i scored positions, once
    want = packed_log_probs(load_reference(spec, get_backend("cpu")), samples, return_entropy=True)
    for g, w in zip(got.log_probs + got.entropy, want.log_probs + want.entropy):
        assert torch.equal(g, w)


def test_model_without_a_log_prob_kernel_is_refused(cache):
    from lmm_r1_ascend.models.forward import enable_packed_forward

    policy = load_policy(ModelSpec(cache["tiny-qwen2"]))
    enable_packed_forward(policy, get_backend("cpu").select_kernels().attention.fn, name="test_no_logprobs")
    with pytest.raises(ValueError, match="no log-prob kernel is recorded.*logprobs_fn=kernels.logprobs.fn"):
        packed_log_probs(policy, _text_samples([(4, 2)]))
