"""The `hf` rollout engine on the built-in tiny models: order, stops, log-probs, seeds, weights, images.

Log-prob references are teacher-forced recomputations: one unpadded forward of the
same weights over prompt + response, log_softmax(fp32 logits / temperature) gathered at
the sampled tokens. The engine instead decodes left-padded batches token by token with
a KV cache, so agreement is only up to fp32 rounding (see TOL).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmm_r1_ascend.data.types import PromptItem
from lmm_r1_ascend.models.tiny import ensure_tiny_model
from lmm_r1_ascend.rollout.base import RolloutSample, SamplingConfig, make_sample
from lmm_r1_ascend.rollout.registry import available_engines, engine_class
from lmm_r1_ascend.kernels.decode_attention import decode_attention_matmul
from lmm_r1_ascend.rollout.hf_engine import HFRolloutEngine, load_generation_model

# fp32 everywhere. Cached decoding vs one full forward only reorders the same fp32 sums
# (attention over a growing cache, padded vs unpadded matmuls). The log-probs have
# magnitude ~7, where the fp32 spacing is 4.8e-7; observed gaps are 1-2 such ulps.
# 1e-5 (~20 ulps) leaves headroom for other CPUs' kernels and stays far below what a
# real bug gives on these random tiny models: wrong temperature ~1e-1, stale weights
# ~1e0, missing mRoPE token types ~1e-3 (each is checked below to show the test can fail).
TOL = 1e-5
QUESTIONS = ["What is 3 + 4?", "Solve the puzzle: push every box onto a target. Actions: up, down",
             "Find the area"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_cache")


@pytest.fixture(scope="module")
def text_path(cache):
    return ensure_tiny_model("tiny-qwen2", cache_dir=cache)


@pytest.fixture(scope="module")
def vl_path(cache):
    return ensure_tiny_model("tiny-qwen2.5-vl", cache_dir=cache)


@pytest.fixture(scope="module")
def tok(text_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(text_path)


@pytest.fixture(scope="module")
def text_engine(text_path):
    # several generate() calls per rollout; decode steps through the CPU backend's kernel, so every
    # log-prob check below also checks it against teacher forcing (the VL engine keeps SDPA)
    return engine_class("hf")(text_path, max_batch_rows=4, decode_attention=decode_attention_matmul)


@pytest.fixture(scope="module")
def vl_engine(vl_path):
    return engine_class("hf")(vl_path)


def text_prompt(tok, question: str) -> PromptItem:
    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    return PromptItem(prompt_ids=tok(text).input_ids, prompt_text=text)


def vl_prompt(tok, processor, images, question: str) -> PromptItem:
    """Build by hand what the data pipeline builds: one pad per image in the text, expanded in the ids."""
    content = [{"type": "image", "image": "x"} for _ in images] + [{"type": "text", "text": question}]
    text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    if not images:
        return PromptItem(prompt_ids=tok(text).input_ids, prompt_text=text)
    pix = processor(images=images, return_tensors="pt")
    grid = pix["image_grid_thw"]
    counts = [int(g.prod()) // processor.merge_size**2 for g in grid]
    parts = text.split("<|image_pad|>")
    expanded = parts[0] + "".join("<|image_pad|>" * c + rest for c, rest in zip(counts, parts[1:]))
    return PromptItem(prompt_ids=tok(expanded).input_ids, prompt_text=text, images=list(images),
                      pixel_values=pix["pixel_values"], image_grid_thw=grid)


def random_image(rng: np.random.Generator, w: int, h: int):
    from PIL import Image

    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def teacher_forced(model, s: RolloutSample, temperature: float, mm_types: bool = True) -> torch.Tensor:
    """(R,) float32 log-probs of the response under one unpadded, uncached forward."""
    ids = torch.cat([s.prompt_ids, s.response_ids])[None]
    kwargs = {}
    if s.prompt.pixel_values is not None:
        kwargs = dict(pixel_values=s.prompt.pixel_values, image_grid_thw=s.prompt.image_grid_thw)
        if mm_types:
            kwargs["mm_token_type_ids"] = (ids == model.config.image_token_id).long()
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False, **kwargs).logits[0].float()
    p = s.prompt_ids.numel()
    lsm = F.log_softmax(logits[p - 1:-1] / temperature, dim=-1)
    return lsm.gather(1, s.response_ids[:, None]).squeeze(1)


def max_gap(model, samples, temperature, **kw) -> float:
    return max(float((teacher_forced(model, s, temperature, **kw) - s.logprobs).abs().max()) for s in samples)


def check_samples(samples, prompts, cfg, stop_ids):
    """The RolloutSample contract, checked sample by sample."""
    assert len(samples) == len(prompts) * cfg.n
    for k, s in enumerate(samples):
        assert (s.prompt_index, s.sample_index) == divmod(k, cfg.n)  # prompt-major
        assert s.prompt is prompts[s.prompt_index]
        assert s.prompt_ids.tolist() == prompts[s.prompt_index].prompt_ids and s.prompt_ids.dtype == torch.int64
        r = s.response_ids.numel()
        assert 1 <= r <= cfg.max_new_tokens and s.response_ids.dtype == torch.int64
        assert s.logprobs.shape == (r,) and s.logprobs.dtype == torch.float32 and (s.logprobs <= 0).all()
        assert s.action_mask.dtype == torch.bool and s.action_mask.shape == (r,) and s.action_mask.all()
        is_stop = [t in stop_ids for t in s.response_ids.tolist()]
        assert not any(is_stop[:-1]), "a stop token inside the response: it must end right after the first one"
        assert not is_stop[0] or cfg.min_new_tokens == 0  # min_new_tokens=1: never an immediate stop
        assert s.finish_reason == ("stop" if is_stop[-1] else "length")
        if s.finish_reason == "length":
            assert r == cfg.max_new_tokens


def test_registry_and_config_errors(text_path):
    assert {"hf", "vllm"} <= set(available_engines())
    with pytest.raises(ValueError, match=r"unknown rollout engine 'sglang'.*'hf'"):
        engine_class("sglang")(text_path)
    with pytest.raises(ValueError, match="not a directory"):
        engine_class("hf")(text_path / "missing")
    for bad, match in [(dict(n=0), "n must be an int >= 1"), (dict(temperature=-0.5), "temperature.*>= 0"),
                       (dict(top_p=1.5), r"top_p must be in \(0, 1\]"), (dict(top_k=0), "top_k must be -1"),
                       (dict(max_new_tokens=2, min_new_tokens=3), "min_new_tokens .* exceeds"),
                       (dict(stop_token_ids="x"), "stop_token_ids")]:
        with pytest.raises((ValueError, TypeError), match=match):
            SamplingConfig(**bad)


@pytest.mark.parametrize("device,decode", [("cpu", "matmul"), ("npu-emulated", "sdpa")])
def test_from_config_takes_the_backends_decode_attention(vl_path, tok, device, decode, rng_seed):
    from lmm_r1_ascend.config.schema import RolloutConfig
    from lmm_r1_ascend.rollout.base import EngineRun

    engine = HFRolloutEngine.from_config(RolloutConfig(), EngineRun(seed=1, device=device, n_samples_per_prompt=2),
                                         str(vl_path), torch.device("cpu"), torch.float32)
    impl = engine.model.config.text_config._attn_implementation
    assert impl.startswith("lmm_r1_sdpa_decode_") if decode == "matmul" else impl == "sdpa"
    assert engine.model.config.vision_config._attn_implementation == "sdpa"  # the vision tower keeps its own
    if decode == "sdpa":
        return
    from transformers import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil.from_pretrained(vl_path)
    rng = np.random.default_rng(rng_seed)
    prompts = [vl_prompt(tok, processor, [random_image(rng, 56, 84)], "What is shown?"),
               text_prompt(tok, QUESTIONS[0])]
    samples = engine.generate(prompts, SamplingConfig(n=2, temperature=0.7, max_new_tokens=6))
    assert max_gap(engine.model, samples, 0.7) < TOL  # the VL decoder's decode steps, against teacher forcing


def test_make_sample_cuts_after_the_first_stop_token():
    p = PromptItem(prompt_ids=[1, 2], prompt_text="")
    s = make_sample(0, 0, p, [5, 6, 9, 7, 9, 0], [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0], stop_ids={9, 8})
    assert s.response_ids.tolist() == [5, 6, 9] and s.logprobs.tolist() == [-1.0, -2.0, -3.0]
    assert s.action_mask.tolist() == [True] * 3 and s.finish_reason == "stop"
    s = make_sample(0, 1, p, [5, 6, 7], [-1.0, -2.0, -3.0], stop_ids={9})
    assert s.response_ids.tolist() == [5, 6, 7] and s.finish_reason == "length"


def test_text_rollout_order_stops_and_logprobs(text_engine, tok, rng_seed):
    prompts = [text_prompt(tok, q) for q in QUESTIONS]  # three lengths: left padding is exercised
    assert len({len(p.prompt_ids) for p in prompts}) == 3
    # A random half of the vocabulary as stop tokens makes early stops near-certain (each
    # step stops with probability ~1/2) whatever the weights: P(no stop in 9 samples) ~ 2^-54.
    vocab = text_engine.model.config.vocab_size
    stop = torch.randperm(vocab)[: vocab // 2].tolist()
    cfg = SamplingConfig(n=3, temperature=0.7, top_p=0.9, max_new_tokens=8, stop_token_ids=stop, seed=rng_seed)
    samples = text_engine.generate(prompts, cfg)
    check_samples(samples, prompts, cfg, set(stop) | set(text_engine.eos_ids))
    assert any(s.finish_reason == "stop" for s in samples)
    gap = max_gap(text_engine.model, samples, cfg.temperature)
    print(f"text: max |engine - teacher-forced| log-prob = {gap:.2e}")
    assert gap < TOL
    # The temperature is really applied (and top_p=0.9 does not renormalise the reported log-probs).
    assert max_gap(text_engine.model, samples, 1.0) > 1e-2  # observed 1e-1 .. 6e-1


def test_greedy_decoding_takes_the_argmax_and_reports_untempered_log_probs(text_engine, tok, rng_seed):
    prompts = [text_prompt(tok, q) for q in QUESTIONS]
    cfg = SamplingConfig(n=2, temperature=0.0, max_new_tokens=6, seed=rng_seed)
    assert cfg.greedy and cfg.logprob_temperature == 1.0
    a = text_engine.generate(prompts, cfg)
    b = text_engine.generate(prompts, SamplingConfig(n=2, temperature=0.0, max_new_tokens=6, seed=rng_seed + 1))
    check_samples(a, prompts, cfg, set(text_engine.eos_ids))
    assert all(torch.equal(x.response_ids, y.response_ids) for x, y in zip(a, b))  # no seed changes greedy
    for s in a:  # every token is the teacher-forced argmax, and its log-prob the untempered one
        ids = torch.cat([s.prompt_ids, s.response_ids])[None]
        with torch.no_grad():
            logits = text_engine.model(input_ids=ids, use_cache=False).logits[0].float()
        p = s.prompt_ids.numel()
        assert torch.equal(logits[p - 1:-1].argmax(-1), s.response_ids)
    assert max_gap(text_engine.model, a, 1.0) < TOL


def test_length_finish_and_same_seed_same_samples(text_engine, tok, rng_seed):
    prompts = [text_prompt(tok, q) for q in QUESTIONS[:2]]
    cfg = SamplingConfig(n=2, temperature=1.0, max_new_tokens=6, seed=rng_seed)
    a, b = text_engine.generate(prompts, cfg), text_engine.generate(prompts, cfg)
    check_samples(a, prompts, cfg, set(text_engine.eos_ids))
    assert any(s.finish_reason == "length" for s in a)  # EOS has p ~ 1/700 per step under random weights
    assert all(torch.equal(x.response_ids, y.response_ids) and torch.equal(x.logprobs, y.logprobs)
               for x, y in zip(a, b))
    c = text_engine.generate(prompts, SamplingConfig(n=2, temperature=1.0, max_new_tokens=6, seed=rng_seed + 1))
    assert any(not torch.equal(x.response_ids, y.response_ids) for x, y in zip(a, c))


def test_vl_rollout_with_images_end_to_end(vl_engine, vl_path, tok, rng_seed):
    from transformers import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil.from_pretrained(vl_path)
    rng = np.random.default_rng(rng_seed)
    prompts = [
        vl_prompt(tok, processor, [random_image(rng, 56, 84)], "Find the angle"),
        vl_prompt(tok, processor, [random_image(rng, 112, 56), random_image(rng, 56, 56)], "Compare the images"),
        vl_prompt(tok, processor, [], "What is 3 + 4?"),  # a text-only prompt in the same batch
    ]
    assert [p.num_images for p in prompts] == [1, 2, 0]
    cfg = SamplingConfig(n=2, temperature=0.9, max_new_tokens=6, seed=rng_seed)
    samples = vl_engine.generate(prompts, cfg)
    check_samples(samples, prompts, cfg, set(vl_engine.eos_ids))
    assert samples[0].multimodal["pixel_values"] is prompts[0].pixel_values and samples[-1].multimodal == {}
    gap = max_gap(vl_engine.model, samples, cfg.temperature)
    print(f"vl: max |engine - teacher-forced| log-prob = {gap:.2e}")
    assert gap < TOL
    # Without mm_token_type_ids transformers falls back to 1-D positions: the engine's
    # log-probs must then NOT match, which shows it built 3-D mRoPE positions.
    # (Random tiny weights attend almost uniformly, so positions move log-probs by only
    # ~1e-3 here; 1e-4 is still 10x TOL.)
    assert max_gap(vl_engine.model, samples[:4], cfg.temperature, mm_types=False) > 1e-4


def test_update_weights_then_engine_matches_trainer(text_path, tok, rng_seed):
    engine = HFRolloutEngine(text_path)
    trainer = load_generation_model(text_path).eval()
    with torch.no_grad():
        for p in trainer.parameters():  # the trainer "takes an optimizer step"
            p.add_(0.05 * torch.randn_like(p))
    prompts = [text_prompt(tok, q) for q in QUESTIONS]
    cfg = SamplingConfig(n=2, temperature=1.0, max_new_tokens=6, seed=rng_seed)
    stale = max_gap(trainer, engine.generate(prompts, cfg), cfg.temperature)
    loaded = engine.update_weights(trainer.named_parameters())
    assert loaded == len(list(trainer.named_parameters()))
    fresh = max_gap(trainer, engine.generate(prompts, cfg), cfg.temperature)
    print(f"after update_weights: max |engine - trainer| log-prob = {fresh:.2e} (before: {stale:.2e})")
    assert stale > 1e-2  # the comparison can fail: old weights are visibly different
    assert fresh < TOL


def test_update_weights_errors_leave_the_model_untouched(text_path):
    engine = HFRolloutEngine(text_path)
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    name, param = next(iter(engine.model.named_parameters()))
    good = (name, torch.zeros_like(param))
    with pytest.raises(ValueError, match=r"unknown parameter name.*module\.lm_head\.weight.*Nothing was loaded"):
        engine.update_weights([good, ("module.lm_head.weight", torch.zeros(3))])
    with pytest.raises(ValueError, match=rf"shape mismatch.*{name}: got \(3, 4\)"):
        engine.update_weights([good, (name, torch.zeros(3, 4))])
    with pytest.raises(TypeError, match="pairs"):
        engine.update_weights([good, (name, [1.0])])
    after = engine.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_generate_input_errors_and_lifecycle(text_engine, vl_engine, vl_path, tok):
    from transformers import Qwen2VLImageProcessorPil

    cfg = SamplingConfig(max_new_tokens=2)
    with pytest.raises(ValueError, match="non-empty list"):
        text_engine.generate([], cfg)
    with pytest.raises(TypeError, match="SamplingConfig"):
        text_engine.generate([text_prompt(tok, "hi")], {"n": 1})
    processor = Qwen2VLImageProcessorPil.from_pretrained(vl_path)
    p = vl_prompt(tok, processor, [random_image(np.random.default_rng(0), 56, 56)], "x")
    with pytest.raises(ValueError, match="no vision tower"):
        text_engine.generate([p], cfg)
    first_pad = p.prompt_ids.index(vl_engine.image_token_id)
    short = PromptItem(prompt_ids=p.prompt_ids[:first_pad] + p.prompt_ids[first_pad + 1:], prompt_text=p.prompt_text,
                       pixel_values=p.pixel_values, image_grid_thw=p.image_grid_thw)  # one pad dropped
    with pytest.raises(ValueError, match="3 image pad tokens but its image_grid_thw needs 4"):
        vl_engine.generate([short], cfg)

    engine = HFRolloutEngine(text_engine.model)  # an engine over an existing model (same weights)
    engine.sleep()
    engine.sleep()  # idempotent; on the CPU nothing moves
    with pytest.raises(RuntimeError, match="asleep; call wake_up"):
        engine.generate([text_prompt(tok, "hi")], cfg)
    with pytest.raises(RuntimeError, match="asleep"):
        engine.update_weights([])
    engine.wake_up()
    assert len(engine.generate([text_prompt(tok, "hi")], cfg)) == 1
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate([text_prompt(tok, "hi")], cfg)


def test_update_weights_with_meta_streams_and_checks_the_announcement(text_path, rng_seed):
    """With meta (a ZeRO-3 gather stream), tensors are copied as they arrive: the iterator is
    consumed lazily, the result equals the held update, and a departure from the meta raises."""
    engine = HFRolloutEngine(text_path)
    named = [(n, torch.randn(p.shape, generator=torch.Generator().manual_seed(rng_seed + i)))
             for i, (n, p) in enumerate(engine.model.named_parameters())]
    meta = [(n, tuple(t.shape)) for n, t in named]
    seen = []

    def stream():
        for name, t in named:
            seen.append(name)
            # the previous tensor is already in the model when the next one is produced
            if len(seen) > 1:
                prev_name, prev = named[len(seen) - 2]
                assert torch.equal(dict(engine.model.named_parameters())[prev_name], prev)
            yield name, t

    assert engine.update_weights(stream(), meta=meta) == len(named)
    params = dict(engine.model.named_parameters())
    assert all(torch.equal(params[n], t) for n, t in named)
    with pytest.raises(ValueError, match="unknown parameter name.*Nothing was loaded"):
        engine.update_weights(iter(named), meta=meta + [("module.x", (1,))])
    with pytest.raises(ValueError, match="tensor 1 is"):
        engine.update_weights(iter([named[0], named[2]]), meta=meta[:2])
    with pytest.raises(ValueError, match="got 1 tensors, announced 2"):
        engine.update_weights(iter(named[:1]), meta=meta[:2])
