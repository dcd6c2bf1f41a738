"""Packed Qwen2.5-VL mRoPE positions equal the model's own per-sample positions."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from lmm_r1_ascend.kernels.mrope import mm_token_type_ids_from_input_ids, mrope_position_ids
from lmm_r1_ascend.kernels.packing import cu_seqlens_from_lengths

MERGE = 2
IMAGE_ID, VIDEO_ID, VSTART, VEND = 60, 61, 58, 59
PIXEL_DIM = 3 * 2 * 2 * 2  # channels * temporal_patch * patch * patch


@pytest.fixture(scope="module")
def model() -> Qwen2_5_VLForConditionalGeneration:
    torch.manual_seed(0)  # weights only; the inputs below are drawn from the test's seed
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(
            depth=1, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=2, spatial_merge_size=MERGE,
            temporal_patch_size=2, out_hidden_size=32, window_size=8, fullatt_block_indexes=[0],
            tokens_per_second=2, in_channels=3,
        ),
        image_token_id=IMAGE_ID, video_token_id=VIDEO_ID, vision_start_token_id=VSTART, vision_end_token_id=VEND,
        bos_token_id=1, eos_token_id=2,
    )
    cfg.text_config._attn_implementation = "eager"
    cfg.vision_config._attn_implementation = "eager"
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


def _text(rnd: random.Random, lo: int = 1, hi: int = 5) -> list[int]:
    return [rnd.randrange(3, 50) for _ in range(rnd.randint(lo, hi))]


def _sample(rnd: random.Random, n_images: int) -> tuple[list[int], list[list[int]]]:
    """Token ids with text before, between and after ``n_images`` images, and their grids."""
    ids, grids = _text(rnd), []
    for _ in range(n_images):
        grid = [1, MERGE * rnd.randint(1, 3), MERGE * rnd.randint(1, 3)]  # distinct h, w exercise max(h, w)
        grids.append(grid)
        ids += [VSTART] + [IMAGE_ID] * (grid[0] * grid[1] * grid[2] // MERGE**2) + [VEND] + _text(rnd)
    return ids, grids


def _model_positions(model, ids: list[int], grids: list[list[int]], video_grids=None, seconds=None) -> torch.Tensor:
    """The model's own (3, 1, L) positions for one sample alone."""
    input_ids = torch.tensor([ids])
    types = mm_token_type_ids_from_input_ids(input_ids, IMAGE_ID, VIDEO_ID)
    pos, _ = model.model.get_rope_index(
        input_ids,
        mm_token_type_ids=types,
        image_grid_thw=torch.tensor(grids) if grids else None,
        video_grid_thw=torch.tensor(video_grids) if video_grids else None,
        second_per_grid_ts=seconds,
    )
    return pos


def test_packed_positions_equal_model_per_sample(model, rng_seed):
    rnd = random.Random(rng_seed)
    samples = [_sample(rnd, n) for n in rnd.sample([0, 1, 2, 2, 1, 0], 6)]
    ids = [i for s, _ in samples for i in s]
    grids = [g for _, gs in samples for g in gs]
    lengths = [len(s) for s, _ in samples]
    types = mm_token_type_ids_from_input_ids(torch.tensor(ids), IMAGE_ID, VIDEO_ID)

    ours = mrope_position_ids(types, lengths, torch.tensor(grids), spatial_merge_size=MERGE)
    expected = torch.cat([_model_positions(model, s, gs) for s, gs in samples], dim=-1)

    assert ours.shape == (3, 1, sum(lengths)) and ours.dtype == torch.int64
    assert torch.equal(ours, expected)  # integer positions: exact
    # positions restart per sample: each sample starts at 0 on all three rows
    starts = cu_seqlens_from_lengths(lengths)[:-1].long()
    assert torch.equal(ours[:, 0, starts], torch.zeros(3, len(lengths), dtype=torch.int64))


def test_video_positions_equal_model(model, rng_seed):
    rnd = random.Random(rng_seed)
    video = [2, 2 * rnd.randint(1, 2), 2 * rnd.randint(1, 3)]
    n = video[0] * video[1] * video[2] // MERGE**2
    ids = _text(rnd) + [VSTART] + [VIDEO_ID] * n + [VEND] + _text(rnd)
    img_ids, img_grids = _sample(rnd, 1)
    seconds = torch.tensor([rnd.choice([0.5, 1.3, 2.0])])
    ours = mrope_position_ids(
        mm_token_type_ids_from_input_ids(torch.tensor(ids + img_ids), IMAGE_ID, VIDEO_ID),
        [len(ids), len(img_ids)],
        torch.tensor(img_grids),
        torch.tensor([video]),
        spatial_merge_size=MERGE,
        tokens_per_second=model.config.vision_config.tokens_per_second,
        second_per_grid_ts=seconds,
    )
    expected = torch.cat(
        [_model_positions(model, ids, [], [video], seconds), _model_positions(model, img_ids, img_grids)], dim=-1
    )
    assert torch.equal(ours, expected)  # integer positions: exact


def test_packed_forward_with_text_positions_matches_per_sample_logits(model, rng_seed):
    """The (4, 1, T) form makes one packed forward equal the separate forwards."""
    rnd = random.Random(rng_seed)
    samples = [_sample(rnd, n) for n in (1, 0, 2)]
    lengths = [len(s) for s, _ in samples]
    grids = [g for _, gs in samples for g in gs]
    pixels = torch.randn(sum(t * h * w for t, h, w in grids), PIXEL_DIM)
    ids = torch.tensor([[i for s, _ in samples for i in s]])
    types = mm_token_type_ids_from_input_ids(ids, IMAGE_ID, VIDEO_ID)
    pos = mrope_position_ids(types, lengths, torch.tensor(grids), spatial_merge_size=MERGE, with_text_positions=True)
    assert pos.shape == (4, 1, sum(lengths))
    with torch.no_grad():
        # use_cache=False: transformers detects packing from position_ids only without a KV cache
        packed = model(
            input_ids=ids, position_ids=pos, pixel_values=pixels, image_grid_thw=torch.tensor(grids), use_cache=False
        ).logits
        singles, offset = [], 0
        for s, gs in samples:
            n_pix = sum(t * h * w for t, h, w in gs)
            one = torch.tensor([s])
            kwargs = {"pixel_values": pixels[offset : offset + n_pix], "image_grid_thw": torch.tensor(gs)} if gs else {}
            offset += n_pix
            kwargs["mm_token_type_ids"] = mm_token_type_ids_from_input_ids(one, IMAGE_ID, VIDEO_ID)
            singles.append(model(input_ids=one, **kwargs).logits)
    # fp32, same ops on the same rows; only the attention's reduction lengths differ: 1e-5
    torch.testing.assert_close(packed, torch.cat(singles, dim=1), rtol=1e-5, atol=1e-5)


def test_model_needs_mm_token_type_ids(model, rng_seed):
    """ASCEND.md fact: without mm_token_type_ids Qwen2.5-VL silently uses 1-D positions."""
    rnd = random.Random(rng_seed)
    ids, grids = _sample(rnd, 1)
    input_ids = torch.tensor([ids])
    pixels = torch.randn(sum(t * h * w for t, h, w in grids), PIXEL_DIM)
    common = {"input_ids": input_ids, "pixel_values": pixels, "image_grid_thw": torch.tensor(grids)}
    types = mm_token_type_ids_from_input_ids(input_ids, IMAGE_ID, VIDEO_ID)
    ours = mrope_position_ids(types, None, torch.tensor(grids), spatial_merge_size=MERGE)
    with torch.no_grad():
        with_types = model(**common, mm_token_type_ids=types).logits
        without = model(**common).logits
        explicit = model(**common, position_ids=ours).logits
    assert not torch.allclose(with_types, without, atol=1e-4)
    torch.testing.assert_close(explicit, with_types, rtol=0, atol=0)  # same positions, same ops: bit-equal


def test_errors_are_clear():
    types = torch.tensor([0, 1, 1, 0])
    with pytest.raises(ValueError, match="image_grid_thw has 0 rows|more image spans"):
        mrope_position_ids(types, spatial_merge_size=MERGE)
    with pytest.raises(ValueError, match="needs 1 .*separated"):
        mrope_position_ids(types, None, torch.tensor([[1, 2, 2]]), spatial_merge_size=MERGE)
    with pytest.raises(ValueError, match="found 1 image spans but image_grid_thw has 2 rows"):
        mrope_position_ids(types, None, torch.tensor([[1, 2, 4], [1, 2, 2]]), spatial_merge_size=MERGE)
    with pytest.raises(ValueError, match="divisible by spatial_merge_size"):
        mrope_position_ids(types, None, torch.tensor([[1, 2, 3]]), spatial_merge_size=MERGE)
    with pytest.raises(ValueError, match="allowed values are 0 text, 1 image, 2 video"):
        mrope_position_ids(torch.tensor([0, 3]), spatial_merge_size=MERGE)
    with pytest.raises(ValueError, match="lengths sum to 3"):
        mrope_position_ids(torch.tensor([0, 0]), [1, 2], spatial_merge_size=MERGE)
    with pytest.raises(ValueError, match="second_per_grid_ts has 2 entries for 0 videos"):
        mrope_position_ids(torch.tensor([0, 0]), second_per_grid_ts=[1.0, 2.0], spatial_merge_size=MERGE)
    with pytest.raises(ValueError, match="integer"):
        mrope_position_ids(torch.zeros(3), spatial_merge_size=MERGE)
