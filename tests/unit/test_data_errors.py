"""Bad data rows: each is a DataError naming file:line and what is wrong, or skipped and counted."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
from PIL import Image

from lmm_r1_ascend.data import DataError, PromptDataset


def _msg(content):
    return json.dumps([{"role": "user", "content": content}])


def _image_msg(ref):
    return _msg([{"type": "image", "image": ref}, {"type": "text", "text": "What is shown?"}])


GOOD = json.dumps({"message": _msg("What is 2 + 2?"), "answer": "4"})

# name -> (the bad line, a regex its message must match after "file:line: ", the counted reason)
CASES = {
    "invalid_json": ('{"message": "[]", "answer": ', r"invalid JSON \(Expecting value at column \d+\)", "invalid_json"),
    "row_not_object": ("[1, 2]", r"a row must be a JSON object, got list", "invalid_json"),
    "message_not_list": (json.dumps({"message": json.dumps({"role": "user", "content": "hi"}), "answer": "1"}),
                         r"field 'message' must be a non-empty JSON list of chat turns .*got a JSON object",
                         "bad_message"),
    "message_empty_list": (json.dumps({"message": "[]", "answer": "1"}),
                           r"field 'message' must be a non-empty JSON list .*got an empty list", "bad_message"),
    "message_not_json": (json.dumps({"message": "hello there", "answer": "1"}),
                         r"field 'message' is a string but not valid JSON", "bad_message"),
    "missing_answer": (json.dumps({"message": _msg("hi"), "datasource": "math"}),
                       r"missing field 'answer' or 'label' \(the reference answer\); the row has "
                       r"\['datasource', 'message'\]\. If the field has another name, set label_key", "missing_field"),
    "missing_message": (json.dumps({"prompt": "hi", "answer": "1"}),
                        r"missing field 'message' or 'messages' \(the chat turns\).*set message_key", "missing_field"),
    "missing_image": (json.dumps({"message": _image_msg("imgs/nope.png"), "answer": "1"}),
                      r"image not found: .*imgs/nope\.png \(from 'imgs/nope\.png'; relative paths are resolved "
                      r"against .*\)", "missing_image"),
    "corrupt_image": (json.dumps({"message": _image_msg("bad.png"), "answer": "1"}),
                      r"cannot read image .*bad\.png: cannot identify image file", "corrupt_image"),
    "unsupported_content": (json.dumps({"message": _msg([{"type": "video", "video": "a.mp4"}]), "answer": "1"}),
                            r"turn 0 part 0: unsupported content type 'video'; supported: text, image, image_url",
                            "bad_content"),
    "remote_image": (json.dumps({"message": _image_msg("https://example.com/a.png"), "answer": "1"}),
                     r"unsupported image URI scheme 'https'", "bad_content"),
    "content_not_list": (json.dumps({"message": json.dumps([{"role": "user", "content": 5}]), "answer": "1"}),
                         r"turn 0 \(user\): 'content' must be a string or a list of parts, got a number",
                         "bad_content"),
    "text_not_string": (json.dumps({"message": _msg([{"type": "text", "text": ["a"]}]), "answer": "1"}),
                        r"turn 0 part 0: a text part needs a string 'text', got a list", "bad_content"),
    "extreme_aspect": (json.dumps({"message": _image_msg("thin.png"), "answer": "1"}),
                       r"image of 300x1 pixels cannot be used: absolute aspect ratio must be smaller than 200",
                       "bad_image"),
}


def _fixture_files(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG definitely not an image")
    Image.new("RGB", (300, 1)).save(tmp_path / "thin.png")


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_bad_row_raises_naming_file_and_line(tmp_path, tokenizer, image_processor, name):
    _fixture_files(tmp_path)
    line, pattern, reason = CASES[name]
    data = tmp_path / "d.jsonl"
    data.write_text(f"{GOOD}\n{line}\n{GOOD}\n")
    with pytest.raises(DataError, match="^" + re.escape(f"{data}:2: ") + pattern) as info:
        PromptDataset(data, tokenizer, image_processor)
    assert isinstance(info.value, ValueError)
    assert info.value.reason == reason and info.value.source == f"{data}:2"
    assert str(info.value).endswith("or set on_bad_line='skip' to skip and count such rows")
    copy = pickle.loads(pickle.dumps(info.value))  # crosses process boundaries intact
    assert (str(copy), copy.reason, copy.source) == (str(info.value), reason, f"{data}:2")


def test_skip_mode_drops_and_counts_every_bad_row(tmp_path, tokenizer, image_processor):
    _fixture_files(tmp_path)
    lines, bad_lines, reasons = [], [], {}
    for name in sorted(CASES):
        lines += [GOOD, CASES[name][0], ""]  # blank lines are not rows
        bad_lines.append(len(lines) - 1)
        reasons[CASES[name][2]] = reasons.get(CASES[name][2], 0) + 1
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(lines) + "\n")
    ds = PromptDataset(data, tokenizer, image_processor, on_bad_line="skip")
    counts = ds.counts
    assert counts["data/rows"] == 2 * len(CASES) and counts["data/kept"] == len(CASES) == len(ds)
    assert counts["data/skipped_bad"] == len(CASES) and counts["data/filtered_too_long"] == 0
    assert {k.rsplit("/", 1)[1]: v for k, v in counts.items() if k.startswith("data/skipped_bad/")} == reasons
    assert [int(m.split(":")[1]) for m in ds.bad_rows] == bad_lines
    assert all(item.label == "4" for item in ds)


def test_image_that_fails_to_decode_raises_on_load_or_is_skipped(tmp_path, tokenizer, image_processor, rng_seed):
    rng = np.random.default_rng(rng_seed)
    Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    whole = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(whole[: len(whole) // 2])  # header intact, pixel data cut
    data = tmp_path / "d.jsonl"
    data.write_text(GOOD + "\n" + json.dumps({"message": _image_msg("t.png"), "answer": "1"}) + "\n")

    ds = PromptDataset(data, tokenizer, image_processor, shuffle=False)  # indexing reads headers only
    with pytest.raises(DataError, match="^" + re.escape(f"{data}:2: cannot decode image {tmp_path / 't.png'}")):
        ds[1]
    with pytest.raises(DataError):
        list(ds)
    assert ds.state_dict()["index"] == 1  # the failing prompt is not consumed: a resume retries it

    skipping = PromptDataset(data, tokenizer, image_processor, shuffle=False, on_bad_line="skip")
    assert [item.label for item in skipping] == ["4"]
    assert skipping.counts["data/skipped_bad/corrupt_image"] == 1 and skipping.epoch == 1


def test_images_without_an_image_processor(tmp_path, tokenizer):
    Image.new("RGB", (56, 56)).save(tmp_path / "a.png")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"message": _image_msg("a.png"), "answer": "1"}) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{data}:1: the row has 1 image(s) but no image processor")):
        PromptDataset(data, tokenizer)


def test_literal_image_pad_in_text_is_rejected(tmp_path, tokenizer, image_processor):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"message": _msg("see <|image_pad|>"), "answer": "1"}) + "\n")
    with pytest.raises(DataError, match=re.escape("rendered 1 <|image_pad|> token(s) for 0 image(s)")):
        PromptDataset(data, tokenizer, image_processor)


def test_bad_options_and_paths(tmp_path, tokenizer):
    data = tmp_path / "d.jsonl"
    data.write_text(GOOD + "\n")
    with pytest.raises(ValueError, match="on_bad_line must be one of \\['raise', 'skip'\\], got 'ignore'"):
        PromptDataset(data, tokenizer, on_bad_line="ignore")
    with pytest.raises(ValueError, match="max_prompt_len must be a positive int"):
        PromptDataset(data, tokenizer, max_prompt_len=0)
    with pytest.raises(FileNotFoundError, match="data path not found: .*missing.jsonl"):
        PromptDataset(tmp_path / "missing.jsonl", tokenizer)
    with pytest.raises(ValueError, match="unknown data loader 'csv'"):
        PromptDataset(data, tokenizer, loader="csv")
    data.write_text('{"answer": 1}\n')
    with pytest.raises(ValueError, match="no prompts left .*1 rows read, 1 bad, 0 over max_prompt_len"):
        PromptDataset(data, tokenizer, on_bad_line="skip")
