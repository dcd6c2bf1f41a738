"""Bad bytes and bad images are bad rows like any other: a DataError naming file:line and its kind
under on_bad_line="raise", skipped and counted per kind under "skip"; never a raw traceback.
The corpus (tests/corpus/data, expected statuses in expected.json) runs through the real PromptDataset."""

from __future__ import annotations

import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from lmm_r1_ascend.data import DataError, PromptDataset
from lmm_r1_ascend.data import readers
from lmm_r1_ascend.data.images import ImageGeometry

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "data"
MANIFEST = json.loads((CORPUS / "expected.json").read_text())["files"]
GOOD = json.dumps({"message": json.dumps([{"role": "user", "content": "What is 2 + 2?"}]), "answer": "4"})


def _png_header(width: int, height: int) -> bytes:
    """A PNG with a real IHDR of this size and no pixel data: enough for a header read."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _corpus_file(name: str, tmp_path: Path) -> Path:
    """The corpus file copied to tmp_path, with the images its manifest entry asks for."""
    data = tmp_path / name
    shutil.copyfile(CORPUS / name, data)
    for image, (kind, width, height) in MANIFEST[name].get("images", {}).items():
        if kind == "rgb":
            Image.new("RGB", (width, height), "white").save(tmp_path / image)
        else:
            (tmp_path / image).write_bytes(_png_header(width, height))
    return data


def _dataset(name, data, tokenizer, image_processor, **kw):
    return PromptDataset(data, tokenizer, image_processor, max_pixels=MANIFEST[name].get("max_pixels"),
                         shuffle=False, **kw)


def test_manifest_covers_the_corpus():
    assert sorted(MANIFEST) == sorted(p.name for p in CORPUS.glob("*.jsonl"))


@pytest.mark.parametrize("name", sorted(n for n in MANIFEST if MANIFEST[n]["bad"]))
def test_corpus_raise_names_file_line_and_kind(tmp_path, tokenizer, image_processor, name):
    data = _corpus_file(name, tmp_path)
    line, kind, pattern = MANIFEST[name]["bad"][0]
    with pytest.raises(DataError, match="^" + re.escape(f"{data}:{line}: ") + pattern) as info:
        _dataset(name, data, tokenizer, image_processor)
    assert (info.value.reason, info.value.source) == (kind, f"{data}:{line}")
    assert "\n" not in str(info.value)  # one line, as the CLI prints it


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_corpus_skip_keeps_good_rows_and_counts_bad(tmp_path, tokenizer, image_processor, name):
    data = _corpus_file(name, tmp_path)
    expected = MANIFEST[name]
    ds = _dataset(name, data, tokenizer, image_processor, on_bad_line="skip")
    items = list(ds)  # decodes the kept images too
    assert len(items) == len(ds) == expected["kept"] == ds.counts["data/kept"]
    assert ds.counts["data/skipped_bad"] == len(expected["bad"]) == len(ds.bad_rows)
    per_kind = {}
    for _, kind, _ in expected["bad"]:
        per_kind[kind] = per_kind.get(kind, 0) + 1
    assert {k.rsplit("/", 1)[1]: v for k, v in ds.counts.items() if k.startswith("data/skipped_bad/")} == per_kind
    for message, (line, _, pattern) in zip(ds.bad_rows, expected["bad"]):
        assert re.match(re.escape(f"{data}:{line}: ") + pattern, message), message


def test_line_over_the_size_limit_is_line_too_long(tmp_path, tokenizer):
    limit = readers.MAX_LINE_BYTES
    assert limit == 16 * 2**20
    at_limit = json.dumps({"message": json.dumps([{"role": "user", "content": "hi"}]), "answer": "1", "pad": ""})
    at_limit = at_limit[:-2] + "x" * (limit - len(at_limit)) + '"}'  # exactly the limit: still a row
    assert len(at_limit.encode()) == limit
    data = tmp_path / "d.jsonl"
    data.write_bytes(f"{GOOD}\n{'x' * (limit + 1)}\n{at_limit}\n{GOOD}\n".encode() + b"y" * (limit + 5))
    with pytest.raises(DataError, match="^" + re.escape(f"{data}:2: the line is {limit + 1} bytes, over the limit "
                                                        f"of {limit} bytes (16 MiB")) as info:
        PromptDataset(data, tokenizer)
    assert info.value.reason == "line_too_long"
    ds = PromptDataset(data, tokenizer, on_bad_line="skip", shuffle=False)
    assert [item.label for item in ds] == ["4", "1", "4"]
    assert ds.counts["data/skipped_bad/line_too_long"] == 2  # line 2, and line 5 (no final newline)
    assert [m.split(": ", 1)[0] for m in ds.bad_rows] == [f"{data}:2", f"{data}:5"]
    assert f"the line is {limit + 5} bytes" in ds.bad_rows[1]


def test_json_array_file_with_bad_bytes_is_a_clear_error(tmp_path, tokenizer):
    data = tmp_path / "a.json"
    data.write_bytes(b"[" + GOOD.encode() + b",\n" + GOOD.encode()[:-1] + b', "x": "\xff"}\n]\n')
    for policy in ("raise", "skip"):  # the hf loader reads the file whole: nothing to skip
        with pytest.raises(DataError, match="^" + re.escape(f"{data}:2: the line is not valid UTF-8")) as info:
            PromptDataset(data, tokenizer, on_bad_line=policy)
        assert info.value.reason == "invalid_utf8" and "loader 'jsonl'" in str(info.value)
    data.write_bytes(b"[" + GOOD.encode() + b",\n\x00]\n")
    with pytest.raises(DataError, match="^" + re.escape(f"{data}:2: the line holds a NUL byte")):
        PromptDataset(data, tokenizer, on_bad_line="skip")


def test_hf_dataset_strings_with_nul_are_nul_byte(tmp_path, tokenizer):
    datasets = pytest.importorskip("datasets")
    good = json.loads(GOOD)
    rows = [good, {**good, "answer": "4\x00"}, good]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'ds'}[row 1]: field 'answer' holds a NUL")):
        PromptDataset(tmp_path / "ds", tokenizer)
    ds = PromptDataset(tmp_path / "ds", tokenizer, on_bad_line="skip")
    assert len(ds) == 2 and ds.counts["data/skipped_bad/nul_byte"] == 1


def test_zero_sized_image_is_bad_image():
    with pytest.raises(DataError, match=r"^r:1: image of 5x0 pixels has zero size") as info:
        ImageGeometry().resized_hw(0, 5, "r:1")
    assert info.value.reason == "bad_image"


def test_dry_run_skips_and_counts_a_bad_utf8_line(tmp_path, capsys):
    from lmm_r1_ascend.train import main

    data = tmp_path / "d.jsonl"
    shutil.copyfile(CORPUS / "invalid_utf8.jsonl", data)
    base = ["--dry-run", f"data.prompt_data=[{data}]", "data.eval_data=[]", "trainer.eval_steps=0",
            "trainer.eval_before_train=false", f"output_dir={tmp_path / 'out'}"]
    assert main(base + ["data.on_bad_line=skip"]) == 0
    out = capsys.readouterr().out
    assert "dry run ok" in out and "(3 usable prompts)" in out
    assert "5 rows: 3 kept, 2 skipped (bad), 0 too long (invalid_utf8 2)" in out  # the header's data line
    assert main(base + ["data.on_bad_line=raise"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {data}:2: the line is not valid UTF-8") and "\n" not in err
