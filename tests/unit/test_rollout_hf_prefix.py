"""The hf engine's shared prefill: each distinct prompt is prefilled once, then copied to its n samples.

Reference: the same engine with the sharing switched off (generate() over the full repeated,
left-padded batch, as before the change). Greedy decoding makes both sides' tokens comparable
one for one; the log-probs agree to fp32 rounding (batch shapes differ, so matmul sums may be
reordered: TOL as in test_rollout_hf.py, ~20 ulps at magnitude ~7).
"""

from __future__ import annotations

import pytest
import torch

from lmm_r1_ascend.data.types import PromptItem
from lmm_r1_ascend.models.tiny import ensure_tiny_model
from lmm_r1_ascend.rollout.base import SamplingConfig
from lmm_r1_ascend.rollout.hf_engine import HFRolloutEngine

TOL = 1e-5


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return HFRolloutEngine(ensure_tiny_model("tiny-qwen2", cache_dir=tmp_path_factory.mktemp("tiny")), max_batch_rows=8)


def prompts(lengths: list[int]) -> list[PromptItem]:
    g = torch.Generator().manual_seed(0)
    return [PromptItem(prompt_ids=torch.randint(3, 600, (n,), generator=g).tolist(), prompt_text="") for n in lengths]


def test_shared_prefill_matches_the_full_batch_and_prefills_distinct_prompts_once(engine, monkeypatch):
    items = prompts([5, 11, 2, 8])  # left padding of unequal prompts; 8-row chunks hold 2 prompts x 4 samples
    cfg = SamplingConfig(n=4, temperature=0.0, max_new_tokens=6, seed=0)
    rows_seen: list[tuple[int, int]] = []
    hook = engine.model.register_forward_pre_hook(
        lambda _m, _a, kw: rows_seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        shared = engine.generate(items, cfg)
    finally:
        hook.remove()
    # per chunk: one prefix forward over the 2 distinct prompts (width - 1 columns), then
    # generate's first step over all 8 rows and one column, then one column per new token
    assert rows_seen[0] == (2, 10) and rows_seen[1] == (8, 1)
    assert all(shape[1] == 1 for shape in rows_seen[1:] if shape[0] == 8)
    monkeypatch.setattr(engine, "_shared_prefix_cache", lambda rows: None)
    plain = engine.generate(items, cfg)
    assert len(shared) == len(plain) == 16
    for a, b in zip(shared, plain):
        assert (a.prompt_index, a.sample_index) == (b.prompt_index, b.sample_index)
        assert torch.equal(a.response_ids, b.response_ids)
        assert float((a.logprobs - b.logprobs).abs().max()) < TOL


def test_no_sharing_without_repeats_or_with_one_column(engine):
    items = prompts([5, 11, 2])
    assert engine._shared_prefix_cache(items) is None  # every prompt distinct: nothing to share
    one = prompts([1])
    assert engine._shared_prefix_cache(one * 3) is None  # width 1: no prefix to prefill
    inputs, cache = engine._shared_prefix_cache([items[0]] * 2 + [items[1]] * 2)
    assert inputs["input_ids"].shape == (4, 11) and cache.get_seq_length() == 10
    assert torch.equal(inputs["attention_mask"].sum(1), torch.tensor([5, 5, 11, 11]))


def test_vl_model_text_samples_after_an_image_batch(tmp_path):
    """Regression: on Qwen2.5-VL the shared prefill left the model's mRoPE offsets (rope_deltas) of the
    previous batch in place, and text prompts with n > 1 after an image batch crashed. VL models keep
    generate()'s own full-batch prefill."""
    from lmm_r1_ascend.data import PromptDataset, load_processors
    from lmm_r1_ascend.demo.arithmetic import write_demo_dataset

    path = ensure_tiny_model("tiny-qwen2.5-vl", cache_dir=tmp_path / "tiny")
    tok, proc = load_processors(path)
    files = write_demo_dataset(tmp_path / "data", n_train=2, n_eval=2, images=True)
    images = list(PromptDataset([str(files["train_images"])], tok, proc, shuffle=False))
    texts = list(PromptDataset([str(files["train"])], tok, proc, shuffle=False))
    vl = HFRolloutEngine(path, max_batch_rows=8)
    assert vl._shared_prefix_cache([texts[0]] * 2 + [texts[1]] * 2) is None
    cfg = SamplingConfig(n=2, temperature=1.0, max_new_tokens=4, seed=0)
    # one image prompt (2 rows), then 2 text prompts (4 rows): the stale offsets of a batch of another
    # row count are what crashed (with equal row counts they would be silently wrong instead)
    assert len(vl.generate(images[:1], cfg)) == 2
    out = vl.generate(texts, cfg)
    assert [(s.prompt_index, s.sample_index) for s in out] == [(0, 0), (0, 1), (1, 0), (1, 1)]
