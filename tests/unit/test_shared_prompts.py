"""Shared-prompt packing (kernels/shared_prompts.py): one copy of each prompt, the same results.

The layout is checked against a loop written the obvious way, and the gradients against the
same model packing every sample whole; the forwards are checked against an untouched Hugging
Face model on a padded batch in test_packed_forward (its "shared" case).
"""

from __future__ import annotations

import pytest
import torch
from test_packed_forward import TOL

from lmm_r1_ascend.backends import get_backend
from lmm_r1_ascend.kernels.shared_prompts import shared_prompt_layout
from lmm_r1_ascend.models.forward import Sample, pack_samples, packed_log_probs
from lmm_r1_ascend.models.loading import ModelSpec, load_policy
from lmm_r1_ascend.models.packed_attention import SHARED_PROMPTS_KWARG, SP_KWARG, make_attention_forward
from lmm_r1_ascend.models.tiny import ensure_tiny_model

BACKENDS = ["cpu", "npu-emulated"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_shared")
    return {name: str(ensure_tiny_model(name, cache_dir=root)) for name in ("tiny-qwen2", "tiny-qwen2.5-vl")}


def _grouped_samples(groups: int = 3, vocab=(10, 600)) -> list[Sample]:
    """1-4 samples per prompt (2-4 for the first, so some prompt is shared), prompts of 2-11
    tokens, responses of 1-8, in shuffled order; one prompt is a strict prefix of another (equal
    ids up to its length, not the same prompt)."""
    prompts = [torch.randint(*vocab, (int(torch.randint(2, 12, ())),)) for _ in range(groups)]
    prompts.append(prompts[0][:-1].clone())
    samples = []
    for j, p in enumerate(prompts):
        for _ in range(int(torch.randint(2 if j == 0 else 1, 5, ()))):
            r = torch.randint(*vocab, (int(torch.randint(1, 9, ())),))
            samples.append(Sample(torch.cat((p, r)), int(r.numel())))
    return [samples[i] for i in torch.randperm(len(samples)).tolist()]


def _reference_layout(samples):
    """The shared row's token ids, built the slow obvious way: for each distinct prompt in order
    of first appearance, its ids once, then every response of a sample with that prompt."""
    order: list[tuple] = []
    for s in samples:
        key = tuple(s.input_ids[:-s.response_length].tolist())
        if key not in order:
            order.append(key)
    row = []
    for key in order:
        row += list(key)
        for s in samples:
            if tuple(s.input_ids[:-s.response_length].tolist()) == key:
                row += s.input_ids[-s.response_length:].tolist()
    return row, len(order)


def test_layout_matches_the_obvious_loop(rng_seed):
    for _ in range(20):
        samples = _grouped_samples()
        layout = shared_prompt_layout([s.input_ids for s in samples],
                                      [len(s.input_ids) - s.response_length for s in samples])
        ids_v = torch.cat([s.input_ids for s in samples])
        expected, groups = _reference_layout(samples)
        assert groups < len(samples)
        assert layout.groups == groups and layout.rows == len(expected)
        shared = ids_v[layout.virtual_of_row]
        assert shared.tolist() == expected
        assert torch.equal(shared[layout.row_of_virtual], ids_v)  # every token of every sample is in the row
        assert torch.equal(layout.row_of_virtual[layout.virtual_of_row], torch.arange(layout.rows))


def test_distinct_prompts_need_no_layout_and_bad_lengths_are_refused():
    seqs = [torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4])]
    assert shared_prompt_layout(seqs, [2, 1]) is None  # [1, 2] vs [1]: different prompts
    assert shared_prompt_layout(seqs, [2, 2]).rows == 4
    with pytest.raises(ValueError, match=r"prompt_lengths\[1\] = 3 must be in \[1, 2\]"):
        shared_prompt_layout(seqs, [2, 3])
    with pytest.raises(ValueError, match="2 sequences but 1 prompt lengths"):
        shared_prompt_layout(seqs, [2])


def test_same_prompt_check_splits_equal_ids():
    """Equal prompt ids group only where same_prompt(first of the group, i) holds (e.g. equal images)."""
    seqs = [torch.tensor([1, 2, 3 + i]) for i in range(4)]
    calls = []

    def same(first, i):
        calls.append((first, i))
        return first % 2 == i % 2

    layout = shared_prompt_layout(seqs, [2] * 4, same)
    assert layout.members == ((0, 2), (1, 3))
    assert calls == [(0, 1), (0, 2), (0, 3), (1, 3)]  # each sample against each earlier group's first
    assert shared_prompt_layout(seqs, [2] * 4, lambda first, i: False) is None


def test_packed_row_scores_each_response_from_the_row_that_predicts_it(cache, rng_seed):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(cache["tiny-qwen2"])
    samples = _grouped_samples()
    whole, shared = pack_samples(samples, config), pack_samples(samples, config, share_prompts=True)
    assert shared.shared is not None and shared.input_ids.shape[1] < whole.input_ids.shape[1]
    for name in ("cu_seqlens_host", "lengths", "response_lengths"):
        assert getattr(shared, name) == getattr(whole, name)
    assert torch.equal(shared.score_labels, whole.score_labels)
    # the same (token, position) predicts each response token in both rows
    assert torch.equal(shared.input_ids[0, shared.score_index], whole.input_ids[0, whole.score_index])
    assert torch.equal(shared.position_ids[0, shared.score_index], whole.position_ids[0, whole.score_index])


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_equal_those_of_whole_samples(cache, backend, rng_seed):
    """A random per-token weighting, so every response sends its own gradient into its prompt."""
    samples = _grouped_samples()
    grads = {}
    for share in (True, False):
        policy = load_policy(ModelSpec(cache["tiny-qwen2"], share_prompts=share), get_backend(backend))
        assert (pack_samples(samples, policy.config, share_prompts=share).shared is not None) == share
        out = packed_log_probs(policy, samples, temperature=0.9, return_entropy=True)
        torch.manual_seed(1)
        weights = torch.randn(sum(s.response_length for s in samples))
        ((torch.cat(out.log_probs) + 0.1 * torch.cat(out.entropy)) * weights).sum().backward()
        grads[share] = {n: p.grad for n, p in policy.named_parameters()}
    for name, g in grads[True].items():
        assert g is not None and g.abs().sum() > 0, name
        # fp32, O(1) sums: the shared row adds each prompt row's gradients in another order (~1e-6)
        torch.testing.assert_close(g, grads[False][name], rtol=1e-4, atol=2e-5, msg=name)


def test_vl_prompts_are_the_same_only_with_the_same_images(cache):
    """Pads do not identify an image: equal prompt ids with other pixels (or another grid of as
    many pads) are another prompt; images only inside the response (multi-turn observations) do
    not count; the same tensor is recognised, a copy compared."""
    from transformers import AutoConfig

    from lmm_r1_ascend.models.vision_inputs import prompt_image_count, same_prompt_images

    config = AutoConfig.from_pretrained(cache["tiny-qwen2.5-vl"])
    vs, ve, pad = config.vision_start_token_id, config.vision_end_token_id, config.image_token_id
    ids = torch.tensor([11, vs, pad, ve, 12, vs, pad, ve, 13])  # prompt: the first 5 tokens (one image)
    grid, pixels = torch.tensor([[1, 2, 2], [1, 2, 2]]), torch.randn(8, 1176)
    k = prompt_image_count(ids, 5, grid, config)
    assert k == 1 and prompt_image_count(ids, 1, grid, config) == 0
    image = (pixels, grid)
    assert same_prompt_images(image, image, k)
    assert same_prompt_images(image, (pixels.clone(), grid.clone()), k)
    other = pixels.clone()
    other[0, 0] += 1
    assert not same_prompt_images(image, (other, grid), k)
    assert not same_prompt_images(image, (pixels.double(), grid), k)
    changed_obs = pixels.clone()
    changed_obs[4:] = 0  # the second image sits in the response
    assert same_prompt_images(image, (changed_obs, grid), k)
    assert not same_prompt_images(image, (changed_obs, grid), 2)
    wide = (torch.randn(16, 1176), torch.tensor([[1, 2, 8]]))  # 4 merged pads either way:
    tall = (wide[0], torch.tensor([[1, 8, 2]]))               # same ids, other image
    assert not same_prompt_images(wide, tall, 1)
    assert same_prompt_images(None, None, 0)  # no prompt image: the ids decide


def test_switched_off_the_model_packs_every_sample_whole(cache, rng_seed):
    from lmm_r1_ascend.models.forward import _packed

    samples = _grouped_samples()
    on = load_policy(ModelSpec(cache["tiny-qwen2"]), get_backend("cpu"))
    off = load_policy(ModelSpec(cache["tiny-qwen2"], share_prompts=False), get_backend("cpu"))
    assert _packed(on, on.base_model, samples).shared is not None
    assert _packed(off, off.base_model, samples).shared is None
    torch.testing.assert_close(torch.cat(packed_log_probs(on, samples).log_probs),
                               torch.cat(packed_log_probs(off, samples).log_probs), **TOL)


def test_sequence_parallel_refuses_a_shared_row():
    forward = make_attention_forward(lambda *a, **k: pytest.fail("the kernel must not run"))
    q = torch.randn(1, 2, 4, 8)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match="shared-prompt rows cannot be split for sequence parallelism"):
        forward(None, q, q, q, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=4,
                **{SP_KWARG: (object(), object()), SHARED_PROMPTS_KWARG: object()})
