"""`eval compare` column labels: the run's name and step, or the summary's stamp; --label
overrides; never two equal labels."""

from __future__ import annotations

import json
import random
import re

from hypothesis import given, settings, strategies as st

from lmm_r1_ascend.eval import main as eval_main
from lmm_r1_ascend.evaluation.compare import unique_labels


def _summary(path, accuracy, stamp=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    figures = {"all": {"accuracy": accuracy}, "geo": {"accuracy": accuracy / 2}}
    data = figures if stamp is None else {"format": "lmm-r1-eval/1", "figures": figures, "stamp": stamp}
    path.write_text(json.dumps(data))


def _header(out: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.startswith("| benchmark"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_a_training_runs_validations_are_labelled_by_run_and_step(tmp_path, capsys):
    run = tmp_path / "demo_fre"
    _summary(run / "eval" / "step_0_summary.json", 0.19)
    _summary(run / "eval" / "step_60_summary.json", 0.43)
    png = tmp_path / "t.png"
    assert eval_main(["compare", str(run / "eval/step_0_summary.json"), str(run / "eval/step_60_summary.json"),
                      "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert _header(out) == ["benchmark", "demo_fre@0", "demo_fre@60"]
    assert "deltas against demo_fre@0" in out and "43.0 (+24.0)" in out and png.stat().st_size > 1000
    assert eval_main(["compare", str(run / "eval/step_0_summary.json"), str(run)]) == 0  # a run dir: its latest
    assert _header(capsys.readouterr().out)[1:] == ["demo_fre@0", "demo_fre@60"]


def test_label_overrides_and_a_wrong_count_is_one_line(tmp_path, capsys):
    a, b = tmp_path / "r" / "eval" / "step_0_summary.json", tmp_path / "r" / "eval" / "step_5_summary.json"
    _summary(a, 0.1)
    _summary(b, 0.2)
    assert eval_main(["compare", str(a), str(b), "--label", "before", "after"]) == 0
    out = capsys.readouterr().out
    assert _header(out)[1:] == ["before", "after"] and "deltas against before" in out
    assert eval_main(["compare", str(a), str(b), "--label", "x", "x"]) == 0  # equal labels given: made distinct
    assert _header(capsys.readouterr().out)[1:] == ["x", "x (2)"]
    assert eval_main(["compare", str(a), str(b), "--label", "only-one"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--label gives 1 label(s) for 2 run(s)" in err[0]


def test_eval_outputs_with_the_same_folder_name_fall_back_to_their_stamp_then_path(tmp_path, capsys):
    stamp = {"model": "/m/after-hf", "date_utc": "2026-12-07T08:00:00+00:00"}
    _summary(tmp_path / "a" / "eval" / "summary.json", 0.3, stamp)
    _summary(tmp_path / "b" / "eval" / "summary.json", 0.4, {**stamp, "model": "/m/before-hf"})
    _summary(tmp_path / "c" / "eval" / "summary.json", 0.5, stamp)  # the same stamp as a: the path decides
    assert eval_main(["compare", *(str(tmp_path / x / "eval") for x in "abc")]) == 0
    labels = _header(capsys.readouterr().out)[1:]
    assert labels[1] == "before-hf 2026-12-07 08:00"
    assert labels[0].endswith("a/eval") and labels[2].endswith("c/eval") and len(set(labels)) == 3


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["a", "b", "a (2)", "x@1", "x@1 (2)", ""]), min_size=1, max_size=3),
                min_size=1, max_size=6))
def test_labels_are_always_distinct_and_distinct_names_are_kept(candidates):
    labels = unique_labels(candidates)
    assert len(labels) == len(candidates) and len(set(labels)) == len(labels)
    firsts = [c[0] for c in candidates]
    if len(set(firsts)) == len(firsts):
        assert labels == firsts  # nothing renamed that did not clash
    for label, cands in zip(labels, candidates):  # each label is one of its own candidates, or one + " (k)"
        assert re.sub(r" \(\d+\)$", "", label) in cands or label in cands


def test_many_identical_labels_get_numbers_in_order():
    n = random.randint(3, 9)
    assert unique_labels([["run"]] * n) == ["run"] + [f"run ({k})" for k in range(2, n + 1)]
