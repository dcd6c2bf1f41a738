"""PromptDataset: length filtering, seeded per-epoch shuffling, exact resume, equivalent
sources (LMM-R1 jsonl, chat jsonl, saved HF dataset, JSON array file), Sokoban rows."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from lmm_r1_ascend.data import DataError, FieldMap, PromptDataset
from lmm_r1_ascend.envs.sokoban_generate import write_dataset


def _text_rows(n, rng):
    rows = []
    for i in range(n):
        words = " ".join(["up", "down", "left", "right"][int(k)] for k in rng.integers(0, 4, int(rng.integers(1, 40))))
        rows.append({"message": json.dumps([{"role": "user", "content": f"Q{i}: {words}"}]), "answer": str(i)})
    return rows


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _take(ds, n):
    """n items across epochs, the way a trainer pulls rollout batches."""
    out = []
    while len(out) < n:
        out += [item.label for item in itertools.islice(ds, n - len(out))]
    return out


def _template_len(tokenizer, turns):
    return len(tokenizer.apply_chat_template(turns, tokenize=True, add_generation_prompt=True,
                                             return_dict=True)["input_ids"])


def test_over_length_prompts_are_filtered_and_counted(tmp_path, tokenizer, image_processor, rng_seed):
    rng = np.random.default_rng(rng_seed)
    # A 112x112 image is 8x8 patches -> 16 pads; the limit sits between its one-pad and its
    # expanded length, so it is filtered only if the expansion is counted.
    Image.new("RGB", (112, 112), "white").save(tmp_path / "a.png")
    image_turns = [{"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "Q"}]}]
    one_pad = _template_len(tokenizer, image_turns)
    limit = one_pad + 7
    rows = [{"message": json.dumps([{"role": "user", "content": "Q"}]), "answer": "short"},
            {"message": json.dumps([{"role": "user", "content": "up " * (limit + 1)}]), "answer": "long"}]
    rows += _text_rows(20, rng) + [{"message": json.dumps(image_turns), "answer": "img"}]
    lengths = [_template_len(tokenizer, json.loads(r["message"])) for r in rows[:-1]] + [one_pad - 1 + 16]
    data = _write(tmp_path / "d.jsonl", rows)
    ds = PromptDataset(data, tokenizer, image_processor, max_prompt_len=limit, shuffle=False)
    kept = [i for i, n in enumerate(lengths) if n <= limit]
    labels = [item.label for item in ds]
    assert labels == [rows[i]["answer"] for i in kept]
    assert "short" in labels and "long" not in labels and "img" not in labels
    assert ds.lengths == [lengths[i] for i in kept]
    assert ds.counts["data/filtered_too_long"] == len(rows) - len(kept)
    assert ds.counts["data/kept"] == len(kept) == len(ds)
    assert ds.too_long[-1] == f"{data}:{len(rows)}"


def test_shuffle_is_seeded_per_epoch_and_covers_every_item(tmp_path, tokenizer, rng_seed):
    rng = np.random.default_rng(rng_seed)
    data = _write(tmp_path / "d.jsonl", _text_rows(23, rng))
    seed = int(rng.integers(0, 2**31))
    a, b = PromptDataset(data, tokenizer, seed=seed), PromptDataset(data, tokenizer, seed=seed)
    a0, a1 = [item.label for item in a], [item.label for item in a]
    assert a.epoch == 2
    assert a0 == [item.label for item in b] and a1 == [item.label for item in b]
    assert sorted(a0, key=int) == sorted(a1, key=int) == [str(i) for i in range(23)]
    # Two fixed orders of 23 items coincide with probability 1/23!: a real difference, not luck.
    assert a0 != a1
    assert a0 != [item.label for item in PromptDataset(data, tokenizer, seed=seed + 1)]
    assert [item.label for item in PromptDataset(data, tokenizer, shuffle=False)] == [str(i) for i in range(23)]


def test_resume_from_state_dict_is_exact(tmp_path, tokenizer, rng_seed):
    rng = np.random.default_rng(rng_seed)
    data = _write(tmp_path / "d.jsonl", _text_rows(11, rng))
    stop = int(rng.integers(1, 30))  # anywhere in epochs 0-2, epoch ends included
    reference = _take(PromptDataset(data, tokenizer, seed=3), stop + 17)
    first = PromptDataset(data, tokenizer, seed=3)
    assert _take(first, stop) == reference[:stop]
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    resumed = PromptDataset(data, tokenizer, seed=3)
    resumed.load_state_dict(state)
    assert _take(resumed, 17) == reference[stop:]
    assert _take(first, 17) == reference[stop:]

    with pytest.raises(ValueError, match="saved seed=3, this dataset has seed=4"):
        PromptDataset(data, tokenizer, seed=4).load_state_dict(state)
    other = PromptDataset(_write(tmp_path / "e.jsonl", _text_rows(10, rng)), tokenizer, seed=3)
    with pytest.raises(ValueError, match="saved num_items=11, this dataset has num_items=10"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="bad data state: epoch=0, index=12"):
        resumed.load_state_dict({**state, "epoch": 0, "index": 12})


def _equivalent_sources(tmp_path, rng):
    (tmp_path / "imgs").mkdir()
    for name in ("a", "b"):
        h, w = (28 * int(v) for v in rng.integers(2, 6, size=2))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{name}.png")
    turns = [
        [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
         {"role": "user", "content": [{"type": "text", "text": "What is 5 - 2?"}]}],
        [{"role": "user", "content": [{"type": "image", "image": "imgs/a.png"},
                                      {"type": "text", "text": "and"},
                                      {"type": "image", "image": (tmp_path / "imgs" / "b.png").as_uri()}]}],
    ]
    answers, sources = ["3", "$x$"], ["math", "geo"]
    lmm = _write(tmp_path / "lmm.jsonl", [{"message": json.dumps(t), "answer": a, "datasource": s}
                                          for t, a, s in zip(turns, answers, sources)])
    chat = _write(tmp_path / "chat.jsonl", [{"messages": t, "label": a, "datasource": s}
                                            for t, a, s in zip(turns, answers, sources)])
    renamed = _write(tmp_path / "renamed.jsonl", [{"conv": t, "gold": a, "domain": s}
                                                  for t, a, s in zip(turns, answers, sources)])
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"messages": t, "answer": a, "datasource": s}
                                 for t, a, s in zip(turns, answers, sources)]))
    return lmm, chat, renamed, array, turns, answers, sources


def _same_items(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert (x.prompt_ids, x.prompt_text, x.label, x.datasource) == (y.prompt_ids, y.prompt_text, y.label,
                                                                        y.datasource)
        assert (x.pixel_values is None) == (y.pixel_values is None)
        if x.pixel_values is not None:  # same files through the same processor: bit-identical
            assert torch.equal(x.pixel_values, y.pixel_values) and torch.equal(x.image_grid_thw, y.image_grid_thw)
            assert x.meta["image_paths"] == y.meta["image_paths"]


def test_chat_jsonl_hf_dataset_and_json_array_equal_lmm_r1_jsonl(tmp_path, tokenizer, image_processor, rng_seed):
    import datasets

    lmm, chat, renamed, array, turns, answers, sources = _equivalent_sources(tmp_path, np.random.default_rng(rng_seed))
    opts = dict(shuffle=False)
    expected = list(PromptDataset(lmm, tokenizer, image_processor, **opts))
    assert [x.num_images for x in expected] == [0, 2] and [x.datasource for x in expected] == sources
    _same_items(list(PromptDataset(chat, tokenizer, image_processor, **opts)), expected)
    fields = FieldMap(message_key="conv", label_key="gold", datasource_key="domain")
    _same_items(list(PromptDataset(renamed, tokenizer, image_processor, fields=fields, **opts)), expected)

    # Saved datasets: LMM-R1 form (message string) and chat form (Arrow fills absent part keys
    # with None). Relative images resolve against image_root (default: the dataset folder).
    lmm_dir, chat_dir = tmp_path / "hf_lmm", tmp_path / "hf_chat"
    datasets.Dataset.from_list([{"message": json.dumps(t), "answer": a, "datasource": s}
                                for t, a, s in zip(turns, answers, sources)]).save_to_disk(str(lmm_dir))
    datasets.Dataset.from_list([{"messages": t, "answer": a, "datasource": s}
                                for t, a, s in zip(turns, answers, sources)]).save_to_disk(str(chat_dir))
    for folder in (lmm_dir, chat_dir):
        _same_items(list(PromptDataset(folder, tokenizer, image_processor, image_root=tmp_path, **opts)), expected)
    with pytest.raises(DataError, match="image not found: .*hf_lmm/imgs/a.png"):
        PromptDataset(lmm_dir, tokenizer, image_processor)
    hf_items = PromptDataset(lmm_dir, tokenizer, image_processor, image_root=tmp_path, **opts)
    assert hf_items.source(1) == f"{lmm_dir}[row 1]"

    _same_items(list(PromptDataset(array, tokenizer, image_processor, hf_cache_dir=str(tmp_path / "cache"),
                                   **opts)), expected)
    # Several sources concatenate in order.
    both = PromptDataset([lmm, chat], tokenizer, image_processor, **opts)
    _same_items(list(both), expected + expected)


def test_sokoban_generator_output_loads(tmp_path, tokenizer, image_processor):
    rows = write_dataset(tmp_path / "sokoban", n=3, seed=5)
    ds = PromptDataset(tmp_path / "sokoban" / "sokoban.jsonl", tokenizer, image_processor, shuffle=False)
    assert ds.counts["data/kept"] == 3
    for row, item in zip(rows, ds):
        assert (item.label, item.datasource) == ("", "sokoban")
        assert item.meta["env_path"] == row["env_path"] and item.meta["question"] == row["question"]
        path = item.meta["image_paths"][0]
        width, height = Image.open(path).size
        assert (width, height) == (224, 224)  # 7 cells of 32 px: a multiple of 28, kept as is
        pads = (height // 14) * (width // 14) // 4
        assert item.prompt_ids.count(tokenizer.convert_tokens_to_ids("<|image_pad|>")) == pads == 64
        assert item.prompt_text.startswith("<|im_start|>system\nYou are a helpful assistant. You first think")
        assert "<|vision_start|><|image_pad|><|vision_end|>This image shows a Sokoban puzzle" in item.prompt_text
