"""Benchmark converters (evaluation/converters.py) and the held-out Sokoban set
(evaluation/sokoban_eval.py). Fixtures are tiny rows written in each dataset's public
column layout (from its HF card), as jsonl, CSV, parquet and saved HF datasets; the output
is loaded through the trainer's own data path and scored with the project's rewards."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lmm_r1_ascend.config import load_config
from lmm_r1_ascend.data import MATH_SYSTEM_PROMPT, DataError
from lmm_r1_ascend.evaluation.converters import BENCHMARKS, boxed, convert, load_rows
from lmm_r1_ascend.rewards.math_reward import MathReward
from lmm_r1_ascend.trainer.setup import prompt_dataset

IMAGE_BENCHMARKS = {"mathvista_testmini", "mathverse_testmini", "mathvision_test", "mmstar"}
PAD = "<|image_pad|>"


def _png(color: str, size=(56, 84)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def public_rows(name: str, image) -> tuple[list[dict], list[str]]:
    """(rows in the dataset's public layout, expected labels). image(k) gives the k-th
    image in the form the source format stores it (a path, bytes dict or PIL image)."""
    if name == "math500":
        rows = [{"problem": "What is $1+1$?", "solution": "It is $\\boxed{2}$.", "answer": "2",
                 "subject": "Prealgebra", "level": 1, "unique_id": "test/prealgebra/1.json"},
                {"problem": "Halve one.", "solution": "...", "answer": "\\frac{1}{2}", "subject": "Algebra",
                 "level": 2, "unique_id": "test/algebra/2.json"}]
        return rows, ["$\\boxed{2}$", "$\\boxed{\\frac{1}{2}}$"]
    if name == "gpqa_diamond":
        rows = [{"Question": f"Which value is number {i}?", "Correct Answer": f" right {i}\n",
                 "Incorrect Answer 1": f"wrong a{i}", "Incorrect Answer 2": f"wrong b{i}",
                 "Incorrect Answer 3": f"wrong c{i}", "Explanation": "...", "Record ID": f"rec{i}",
                 "High-level domain": "Physics", "Subdomain": "Optics"} for i in range(3)]
        return rows, [None, None, None]  # letters depend on the shuffle: checked separately
    if name == "olympiadbench":
        base = {"solution": ["..."], "context": None, "modality": "Text-only", "difficulty": "Competition",
                "unit": None, "answer_type": "Numerical", "error": None, "question_type": "Open-ended",
                "subfield": "Algebra", "subject": "Math", "language": "English",
                **{f"image_{k}": None for k in range(1, 6)}}
        rows = [{**base, "id": 1606, "question": "Find $x$ if $2x=1$.", "final_answer": ["$\\frac{1}{2}$"],
                 "is_multiple_answer": False},
                {**base, "id": 1607, "question": "Find both roots of $x^2-3x+2$.", "final_answer": ["$1$", "$2$"],
                 "is_multiple_answer": True}]
        return rows, ["$\\boxed{\\frac{1}{2}}$", "$\\boxed{1, 2}$"]
    if name == "mathvista_testmini":
        meta = {"category": "math-targeted-vqa", "context": "synthetic scene", "grade": "elementary school",
                "img_height": 84, "img_width": 56, "language": "english", "skills": ["arithmetic reasoning"],
                "source": "CLEVR-Math", "split": "testmini", "task": "math word problem"}
        rows = [{"pid": "1", "question": "How many cubes are left?", "image": "images/1.jpg",
                 "decoded_image": image(0), "choices": None, "unit": None, "precision": None, "answer": "3",
                 "question_type": "free_form", "answer_type": "integer", "metadata": meta,
                 "query": "Hint: Please answer the question requiring an integer answer and provide the final "
                          "value, e.g., 1, 2, 3, at the end.\nQuestion: How many cubes are left?"},
                {"pid": "2", "question": "Which shape is red?", "image": "images/2.jpg", "decoded_image": image(1),
                 "choices": ["cube", "sphere", "cylinder"], "unit": None, "precision": None, "answer": "sphere",
                 "question_type": "multi_choice", "answer_type": "text", "metadata": meta,
                 "query": "Hint: Please answer the question and provide the correct option letter, e.g., A, B, "
                          "C, D, at the end.\nQuestion: Which shape is red?\nChoices:\n(A) cube\n(B) sphere\n"
                          "(C) cylinder"}]
        return rows, ["$\\boxed{3}$", "$\\boxed{B}$"]
    if name == "mathverse_testmini":
        meta = {"split": "testmini", "source": "GeoQA", "subject": "Plane Geometry", "subfield": "Angle"}
        rows = [{"sample_index": "1", "problem_index": "1", "problem_version": "Text Dominant",
                 "question": "As shown, find angle 1.\nChoices:\nA:20°\nB:30°", "image": image(0), "answer": "B",
                 "question_type": "multi-choice", "metadata": meta,
                 "query_wo": "Please directly answer the question and provide the correct option letter, e.g., "
                             "A, B, C, D.\nQuestion: As shown, find angle 1.\nChoices:\nA:20°\nB:30°",
                 "query_cot": "Please first conduct reasoning, and then answer the question and provide the "
                              "correct option letter, e.g., A, B, C, D, at the end.\nQuestion: As shown, find "
                              "angle 1.\nChoices:\nA:20°\nB:30°",
                 "question_for_eval": "As shown, find angle 1."},
                {"sample_index": "5", "problem_index": "1", "problem_version": "Vision Only", "question": "",
                 "image": image(1), "answer": "5", "question_type": "free-form", "metadata": meta,
                 "query_wo": "According to the question shown in the image, directly answer the question.",
                 "query_cot": "According to the question shown in the image, please first conduct reasoning, "
                              "and then answer the question.", "question_for_eval": ""}]
        return rows, ["$\\boxed{B}$", "$\\boxed{5}$"]
    if name == "mathvision_test":
        rows = [{"id": "1", "question": "<image1>\nWhich piece fits?", "options": ["A", "B", "C", "D", "E"],
                 "image": "images/1.jpg", "decoded_image": image(0), "answer": "C", "solution": None, "level": 2,
                 "subject": "logic"},
                {"id": "2", "question": "<image1>\nHow many dots?", "options": [], "image": "images/2.jpg",
                 "decoded_image": image(1), "answer": "7", "solution": None, "level": 1, "subject": "counting"}]
        return rows, ["$\\boxed{C}$", "$\\boxed{7}$"]
    if name == "mmstar":
        rows = [{"index": i, "question": f"What is in picture {i}?\nOptions: A: a cat, B: a dog, C: a car, D: a tree",
                 "image": image(i), "answer": "ABD"[i], "category": "coarse perception",
                 "l2_category": "image scene and topic",
                 "meta_info": {"source": "MMBench", "split": "val", "image_path": f"images/{i}.jpg"}}
                for i in range(3)]
        return rows, ["$\\boxed{A}$", "$\\boxed{B}$", "$\\boxed{D}$"]
    raise KeyError(name)


COLORS = ["red", "green", "blue"]


def _path_image(tmp: Path):
    """jsonl form: an image is a path relative to the data file (MathVista's own layout)."""
    (tmp / "images").mkdir(parents=True, exist_ok=True)

    def image(k):
        rel = f"images/{k}.png"
        (tmp / rel).write_bytes(_png(COLORS[k]))
        return rel
    return image


def _jsonl_source(tmp: Path, name: str) -> tuple[Path, list[dict], list[str]]:
    rows, labels = public_rows(name, _path_image(tmp))
    for row in rows:  # a raw json has paths where the Hub has decoded_image
        if "decoded_image" in row:
            row["image"], row["decoded_image"] = row.pop("decoded_image"), None
    src = tmp / f"{name}.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src, rows, labels


@pytest.fixture(scope="module")
def cfg():
    return load_config(overrides=["data.max_prompt_len=100000"])


def _load(cfg, tokenizer, image_processor, path: Path):
    return list(prompt_dataset(cfg, [str(path)], tokenizer, image_processor, shuffle=False))


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _user(line: dict) -> tuple[str, list[str]]:
    user = json.loads(line["message"])[-1]["content"]
    if isinstance(user, str):
        return user, []
    return ([p["text"] for p in user if p["type"] == "text"][0], [p["image"] for p in user if p["type"] == "image"])


def test_registry_names():
    assert set(BENCHMARKS) == {"math500", "gpqa_diamond", "olympiadbench", "mathvista_testmini",
                               "mathverse_testmini", "mathvision_test", "mmstar"}
    for bench in BENCHMARKS.values():
        assert bench.fn.__doc__ and bench.hf_id.split()[0] in bench.fn.__doc__


@pytest.mark.parametrize("answer, label", [
    ("2", "$\\boxed{2}$"), ("$\\frac{1}{2}$", "$\\boxed{\\frac{1}{2}}$"), ("\\(x^2\\)", "$\\boxed{x^2}$"),
    ("$\\boxed{\\text{B}}$", "$\\boxed{\\text{B}}$"),
    ("\\boxed{a}+\\boxed{b}", "$\\boxed{\\boxed{a}+\\boxed{b}}$"),  # not one box: kept whole
    ("$a$ and $b$", "$\\boxed{$a$ and $b$}$"),  # not one math span: kept whole
])
def test_boxed_label(answer, label):
    assert boxed(answer) == label


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_jsonl_fixture_converts_and_loads_through_the_trainer_path(tmp_path, name, cfg, tokenizer, image_processor):
    src, rows, labels = _jsonl_source(tmp_path / "src", name)
    out = tmp_path / "out" / f"{name}.jsonl"
    report = convert(name, src, out)
    assert (report.rows_written, report.rows_skipped, report.problems) == (len(rows), 0, [])
    lines = _lines(out)
    items = _load(cfg, tokenizer, image_processor, out)
    assert len(items) == len(rows)
    for row, line, item, label in zip(rows, lines, items, labels):
        assert item.datasource == line["datasource"] == name
        if label is not None:
            assert item.label == label
        assert item.prompt_text.startswith(f"<|im_start|>system\n{MATH_SYSTEM_PROMPT}")
        text, images = _user(line)
        assert line["question"] == str(row.get("question", row.get("problem", row.get("Question", "")))).strip()
        assert line["id"] is not None
        if name in IMAGE_BENCHMARKS:
            assert len(images) == 1 and images[0].startswith("file:///")
            path = Path(images[0][len("file://"):])
            assert path.parent == out.parent / f"{name}_images" and path.suffix == ".png"
            assert item.prompt_ids.count(tokenizer.convert_tokens_to_ids(PAD)) > 0
        else:
            assert images == [] and PAD not in item.prompt_text
        assert text in item.prompt_text
    if name == "mathvista_testmini":  # the dataset's own query is the prompt
        assert _user(lines[1])[0] == rows[1]["query"]
    if name == "mathverse_testmini":  # query_cot, even when the question is empty (vision only)
        assert [_user(line)[0] for line in lines] == [r["query_cot"] for r in rows]


def _pixels(uri: str) -> np.ndarray:
    return np.asarray(Image.open(uri[len("file://"):]).convert("RGB"))


def test_parquet_and_saved_dataset_sources_match_jsonl(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    def same_as_jsonl(name, src, **kw):
        ref_src, _, _ = _jsonl_source(tmp_path / f"ref_{name}", name)
        convert(name, ref_src, tmp_path / f"ref_{name}.jsonl")
        report = convert(name, src, tmp_path / f"{name}.jsonl", **kw)
        a, b = _lines(tmp_path / f"ref_{name}.jsonl"), _lines(tmp_path / f"{name}.jsonl")
        assert report.rows_written == len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert (x["answer"], x["question"], x["id"], x["info"]) == (y["answer"], y["question"], y["id"], y["info"])
            (tx, ix), (ty, iy) = _user(x), _user(y)
            assert tx == ty and len(ix) == len(iy)
            for u, v in zip(ix, iy):
                assert np.array_equal(_pixels(u), _pixels(v))

    as_bytes = lambda k: {"bytes": _png(COLORS[k]), "path": f"{k}.png"}  # noqa: E731
    as_pil = lambda k: Image.open(io.BytesIO(_png(COLORS[k])))  # noqa: E731
    # Text, parquet file (MATH-500's Hub layout is test.jsonl; parquet as the viewer exports it).
    rows, _ = public_rows("math500", None)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "math500.parquet")
    same_as_jsonl("math500", tmp_path / "math500.parquet")
    # Image, a Hub snapshot folder holding two splits: the benchmark's own split is taken.
    snap = tmp_path / "MathVista" / "data"
    snap.mkdir(parents=True)
    rows, _ = public_rows("mathvista_testmini", as_bytes)
    pq.write_table(pa.Table.from_pylist(rows), snap / "testmini-00000-of-00001-abc.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:1]), snap / "test-00000-of-00001-def.parquet")
    same_as_jsonl("mathvista_testmini", snap.parent)
    with pytest.raises(ValueError, match=r"several splits \['data/test', 'data/testmini'\]"):
        list(load_rows(snap.parent))
    assert len(list(load_rows(snap.parent, split="test"))) == 1
    # Text, a saved Dataset; image, a saved DatasetDict (one split: taken; two: named).
    rows, _ = public_rows("gpqa_diamond", None)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "gpqa_hf"))
    same_as_jsonl("gpqa_diamond", tmp_path / "gpqa_hf")
    rows, _ = public_rows("mmstar", as_pil)
    ds = datasets.Dataset.from_list(rows)
    assert isinstance(ds.features["image"], datasets.Image)
    datasets.DatasetDict({"val": ds}).save_to_disk(str(tmp_path / "mmstar_hf"))
    same_as_jsonl("mmstar", tmp_path / "mmstar_hf")
    datasets.DatasetDict({"val": ds, "dev": ds}).save_to_disk(str(tmp_path / "mmstar_two"))
    with pytest.raises(ValueError, match=r"several splits \['dev', 'val'\]"):
        list(load_rows(tmp_path / "mmstar_two"))
    assert convert("mmstar", tmp_path / "mmstar_two", tmp_path / "two.jsonl").rows_written == 3
    # OlympiadBench's parquet export holds one CONFIG/train/0000.parquet per subset.
    rows, _ = public_rows("olympiadbench", None)
    for config, part in (("OE_TO_maths_en_COMP", rows), ("OE_TO_physics_en_COMP", rows[:1])):
        (tmp_path / "olympiad" / config / "train").mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(part), tmp_path / "olympiad" / config / "train" / "0000.parquet")
    same_as_jsonl("olympiadbench", tmp_path / "olympiad")


def _options(text: str) -> dict[str, str]:
    return dict(re.findall(r"^\(([A-D])\) (.*)$", text, re.MULTILINE))


def test_gpqa_shuffle_is_deterministic_and_the_gold_letter_is_the_correct_answer(tmp_path):
    rows = [{"Question": f"Q{i}?", "Correct Answer": f"right {i}", "Incorrect Answer 1": f"wa{i}",
             "Incorrect Answer 2": f"wb{i}", "Incorrect Answer 3": f"wc{i}", "Record ID": f"r{i}"} for i in range(12)]
    src = tmp_path / "gpqa_diamond.csv"  # the Hub's own file format
    import csv

    with open(src, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    a, b, c = (tmp_path / f"{k}.jsonl" for k in "abc")
    convert("gpqa_diamond", src, a, seed=0)
    convert("gpqa_diamond", src, b, seed=0)
    convert("gpqa_diamond", src, c, seed=1)
    assert a.read_text() == b.read_text()
    orders = {}
    for out in (a, c):
        for row, line in zip(rows, _lines(out)):
            opts = _options(_user(line)[0])
            assert sorted(opts.values()) == sorted(row[k] for k in row if "Answer" in k)
            letter = re.fullmatch(r"\$\\boxed\{([A-D])\}\$", line["answer"]).group(1)
            assert opts[letter] == row["Correct Answer"]
            orders.setdefault(out.name, []).append(tuple(opts.values()))
    # 12 rows in the same order under both seeds has probability 24**-12: a real difference.
    assert orders["a.jsonl"] != orders["c.jsonl"]
    # The letters are spread (not always A): the shuffle happened.
    assert len({line["answer"] for line in _lines(a)}) > 1


def test_multiple_choice_labels_are_judged_by_the_math_reward(tmp_path):
    reward = MathReward(workers=0)
    checked = 0
    for name in sorted(BENCHMARKS):
        src, _, _ = _jsonl_source(tmp_path / name, name)
        out = tmp_path / f"{name}.jsonl"
        convert(name, src, out)
        for line in _lines(out):
            m = re.fullmatch(r"\$\\boxed\{([A-E])\}\$", line["answer"])
            if not m:
                continue
            gold = m.group(1)
            other = "B" if gold != "B" else "A"
            good = reward.score_one(line["answer"], f"<think> so </think><answer> $\\boxed{{{gold}}}$ </answer>")
            bad = reward.score_one(line["answer"], f"<think> so </think><answer> $\\boxed{{{other}}}$ </answer>")
            assert (good.components["accuracy"], good.status) == (1.0, "correct"), (name, line["answer"])
            assert (bad.components["accuracy"], bad.status) == (0.0, "wrong"), (name, line["answer"])
            checked += 1
    assert checked >= 3 + 1 + 1 + 1 + 3  # gpqa, mathverse, mathvision, mathvista, mmstar
    # A free-form label goes to math-verify.
    ok = reward.score_one("$\\boxed{\\frac{1}{2}}$", "<think> x </think><answer> $\\boxed{0.5}$ </answer>")
    assert ok.status == "correct"


def test_bad_rows_raise_with_the_row_index_or_are_counted(tmp_path, cfg, tokenizer):
    rows, _ = public_rows("math500", None)
    rows = [rows[0], {k: v for k, v in rows[1].items() if k != "answer"}, rows[0]]
    src = tmp_path / "m.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError, match=rf"{re.escape(str(src))}\[row 1\]: math500: missing column 'answer'"):
        convert("math500", src, out)
    assert not out.exists()  # no partial file
    report = convert("math500", src, out, on_bad_line="skip")
    assert (report.rows_written, report.rows_skipped) == (2, 2)
    assert "[row 1]" in report.problems[0] and "'answer'" in report.problems[0]
    assert "[row 3]" in report.problems[1] and "invalid JSON" in report.problems[1]
    assert len(list(prompt_dataset(cfg, [str(out)], tokenizer, None, shuffle=False))) == 2
    assert convert("math500", src, out, on_bad_line="skip", limit=1).rows_written == 1

    # Images: undecodable bytes, a missing file, no image at all; an answer not among the choices.
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = lambda k: {"bytes": _png(COLORS[k]), "path": None}  # noqa: E731
    rows, _ = public_rows("mmstar", good)
    rows[1]["image"] = {"bytes": b"not an image", "path": None}
    rows[2]["image"] = None
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mmstar.parquet")
    with pytest.raises(DataError, match=r"mmstar.parquet\[row 1\]: mmstar: cannot decode the image in column 'image'"):
        convert("mmstar", tmp_path / "mmstar.parquet", out)
    report = convert("mmstar", tmp_path / "mmstar.parquet", out, on_bad_line="skip")
    assert (report.rows_written, report.rows_skipped) == (1, 2)
    assert "missing column 'image'" in report.problems[1]
    import datasets  # a saved dataset with the same rows: its images are decoded per row too

    features = datasets.Features({k: datasets.Image() if k == "image" else datasets.Value("string")
                                  for k in ("question", "image", "answer")})
    datasets.Dataset.from_list([{k: r[k] for k in features} for r in rows], features=features).save_to_disk(
        str(tmp_path / "mmstar_hf"))
    report = convert("mmstar", tmp_path / "mmstar_hf", out, on_bad_line="skip")
    assert (report.rows_written, report.rows_skipped) == (1, 2) and "[row 1]" in report.problems[0]

    src, rows, _ = _jsonl_source(tmp_path / "mv", "mathvista_testmini")
    (src.parent / rows[0]["image"]).unlink()
    rows[1]["answer"] = "torus"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = convert("mathvista_testmini", src, out, on_bad_line="skip")
    assert (report.rows_written, report.rows_skipped) == (0, 2)
    assert "[row 0]" in report.problems[0] and "not found" in report.problems[0]
    assert "[row 1]" in report.problems[1] and "neither an option letter nor one of the 3 options" in report.problems[1]
    with pytest.raises(ValueError, match="unknown benchmark"):
        convert("mathvista", src, out)


def test_sokoban_eval_set_is_deterministic_held_out_and_routed(tmp_path, cfg, tokenizer, image_processor):
    from lmm_r1_ascend.envs.sokoban import load_level
    from lmm_r1_ascend.envs.sokoban_generate import write_dataset
    from lmm_r1_ascend.envs.sokoban_solver import solve
    from lmm_r1_ascend.evaluation.sokoban_eval import build_sokoban_eval_set
    from lmm_r1_ascend.rewards.registry import RewardRouter
    from lmm_r1_ascend.rewards.sokoban import SokobanReward
    from lmm_r1_ascend.rewards.types import RewardInput

    def levels(jsonl: Path) -> list[bytes]:
        return [load_level(r["env_path"]).tobytes() for r in _lines(jsonl)]

    train = write_dataset(tmp_path / "train", n=60, seed=0)  # the generate CLI's default seed
    train_levels = {load_level(r["env_path"]).tobytes() for r in train}
    kw = dict(n_levels=8, num_boxes=2, train_levels=60)
    a = build_sokoban_eval_set(tmp_path / "a", seed=0, **kw)
    b = build_sokoban_eval_set(tmp_path / "b", seed=0, **kw)
    c = build_sokoban_eval_set(tmp_path / "c", seed=1, **kw)
    assert levels(a) == levels(b) and levels(a) != levels(c)
    assert [r["question"] for r in _lines(a)] == [r["question"] for r in _lines(b)]
    for jsonl in (a, c):
        assert not set(levels(jsonl)) & train_levels
        assert len(set(levels(jsonl))) == 8
    # Exclusion is applied: a set built with a's seed but told to avoid a shares no level with it
    # (its first draws are a's levels, all rejected). Box counts cycle over a sequence.
    d = build_sokoban_eval_set(tmp_path / "d", seed=0, n_levels=4, num_boxes=(2, 3), train_levels=0,
                               exclude=[tmp_path / "a"])
    assert not set(levels(d)) & set(levels(a))
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["rejected_draws"] >= 2
    assert [r["question"].split("_")[3] for r in _lines(d)] == ["b2", "b3", "b2", "b3"]

    items = _load(cfg, tokenizer, image_processor, a)
    assert len(items) == 8 and {it.datasource for it in items} == {"sokoban_eval"}
    assert items[0].prompt_text.startswith("<|im_start|>system\nYou are a helpful assistant. You first think")
    router = RewardRouter(default="math", routes={"sokoban*": "sokoban"})
    assert isinstance(router.reward_for(items[0].datasource), SokobanReward)
    plan = solve(load_level(items[0].meta["env_path"]))
    response = f"<think> push the boxes </think><answer> {', '.join(plan)} </answer>"
    out = router([RewardInput(response=response, label=items[0].label, datasource=items[0].datasource,
                              meta=items[0].meta)])[0]
    assert out.status == "solved" and out.total > 10
    router.close()


def test_a_registered_benchmark_converts_and_unreadable_lines_are_bad_rows(tmp_path, monkeypatch):
    """register_benchmark makes a new converter selectable by name; the source reader is the
    training one (data/readers.py), so a line that is not UTF-8 is one bad row with its file:line,
    under the same error type (DataError) as a bad column."""
    from lmm_r1_ascend.evaluation.converters import Benchmark, register_benchmark
    from lmm_r1_ascend.evaluation.converters.common import boxed as box, field_text, output

    monkeypatch.setattr("lmm_r1_ascend.evaluation.converters.registry.BENCHMARKS", dict(BENCHMARKS))

    def toy(row, ctx):
        q = field_text(row, "q")
        return output(q, [], box(field_text(row, "a")), q, ctx.index)

    register_benchmark(Benchmark("toy", "none", ("test",), toy))
    with pytest.raises(ValueError, match="'toy' is already registered"):
        register_benchmark(Benchmark("toy", "none", ("test",), toy))
    src = tmp_path / "toy.jsonl"
    src.write_bytes(b'{"q": "1+1", "a": "2"}\n{"q": "caf\xe9", "a": "1"}\n{"q": "2+2"}\n')
    with pytest.raises(DataError, match=r"toy.jsonl\[row 1\]: toy: the line is not valid UTF-8 .*toy.jsonl:2\)"):
        convert("toy", src, tmp_path / "out.jsonl")
    report = convert("toy", src, tmp_path / "out.jsonl", on_bad_line="skip")
    assert (report.rows_written, report.rows_skipped) == (1, 2)
    assert "missing column 'a'" in report.problems[1]
    (line,) = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert (line["answer"], line["datasource"], line["id"]) == ("$\\boxed{2}$", "toy", "0")
