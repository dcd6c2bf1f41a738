"""`parity compare` on hand-made results: the violation formula, default tolerances by dtype,
overrides, the report, and every unusable-input path (exit 2). No model runs here."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from lmm_r1_ascend.parity.__main__ import main
from lmm_r1_ascend.parity.compare import (
    FP32_TOLERANCE,
    LOW_PRECISION_TOLERANCE,
    UnusableInput,
    compare_results,
    format_report,
    parse_metric_tol,
)
from lmm_r1_ascend.parity.replay import METRICS, RESULT_FORMAT

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def make_result(values: dict[str, list[float]], *, dtype: str = "float32", sha: str = "f" * 64,
                backend: str = "cpu") -> dict:
    """A minimal valid parity result with the given per-step metric values."""
    steps = len(next(iter(values.values())))
    return {
        "format": RESULT_FORMAT,
        "rollout": {"name": "r.pt", "sha256": sha, "steps": steps},
        "environment": {"backend": backend, "device": "cpu", "dtype": dtype, "versions": {"torch": "x"},
                        "kernels": {"attention": {"name": "reference"}}},
        "metrics": list(values),
        "steps": [{"step": k, **{m: v[k] for m, v in values.items()}} for k in range(steps)],
    }


def write(tmp_path: Path, name: str, data: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_violation_formula_matches_a_direct_check(tmp_path, rng_seed):
    """|a - b| > atol + rtol * |a| per value, checked against the formula written out here."""
    rtol, atol = 0.05, 0.01
    a = (torch.randn(200, dtype=torch.float64) * 3).tolist()
    # diffs spread around the tolerance: about half inside, half outside
    scale = torch.rand(200, dtype=torch.float64) * 2
    b = [x + (s * (atol + rtol * abs(x))) * (1 if i % 2 else -1) for i, (x, s) in enumerate(zip(a, scale.tolist()))]
    report = compare_results(make_result({"m": a}), make_result({"m": b}), rtol=rtol, atol=atol)
    expected = [abs(x - y) <= atol + rtol * abs(x) for x, y in zip(a, b)]
    assert [r.ok for r in report.rows] == expected
    assert 0 < sum(expected) < len(expected)  # both outcomes exercised
    worst = max(report.rows, key=lambda r: abs(r.a - r.b) / (atol + rtol * abs(r.a)))
    assert report.worst["m"] == worst
    path_a = write(tmp_path, "a.json", make_result({"m": a}))
    path_b = write(tmp_path, "b.json", make_result({"m": b}))
    rc = main(["compare", path_a, path_b, "--rtol", str(rtol), "--atol", str(atol)])
    assert rc == (0 if all(expected) else 1)


def test_tolerance_scales_with_the_first_file_only():
    """The formula is asymmetric (A is the reference): swapping the files can change the verdict."""
    a, b = make_result({"m": [1.0]}), make_result({"m": [1.5]})
    assert not compare_results(a, b, rtol=0.4, atol=0.0).ok     # 0.5 > 0.4 * 1.0
    assert compare_results(b, a, rtol=0.4, atol=0.0).ok         # 0.5 <= 0.4 * 1.5


def test_boundary_is_inclusive():
    a, b = make_result({"m": [2.0]}), make_result({"m": [2.5]})
    assert compare_results(a, b, rtol=0.125, atol=0.25).ok      # 0.5 == 0.25 + 0.125 * 2 exactly (binary fractions)
    assert not compare_results(a, b, rtol=0.125, atol=0.2499).ok


def test_defaults_depend_on_dtype():
    a = make_result({"m": [1.0, 2.0]})
    b = make_result({"m": [1.005, 2.0]})               # 0.5% off: within bf16 tolerance, outside fp32
    assert compare_results(a, b).defaults == FP32_TOLERANCE
    assert not compare_results(a, b).ok
    low = make_result({"m": [1.005, 2.0]}, dtype="bfloat16")
    report = compare_results(a, low)
    assert report.defaults == LOW_PRECISION_TOLERANCE == (0.02, 0.01)
    assert report.ok
    assert compare_results(low, a).defaults == LOW_PRECISION_TOLERANCE  # either file in bf16


def test_metric_tol_wins_over_rtol_atol():
    a = make_result({"x": [1.0], "y": [1.0]})
    b = make_result({"x": [1.1], "y": [1.1]})
    report = compare_results(a, b, rtol=0.0, atol=0.0, metric_tol=parse_metric_tol(["y=0.2,0"]))
    assert [(r.metric, r.ok) for r in report.rows] == [("x", False), ("y", True)]


def test_non_finite_values_always_fail():
    a = make_result({"m": [math.nan, math.inf, 1.0]})
    b = make_result({"m": [math.nan, math.inf, 1.0]})
    report = compare_results(a, b, rtol=1.0, atol=1.0)
    assert [r.ok for r in report.rows] == [False, False, True]


def test_one_planted_metric_change_names_metric_and_step(tmp_path, capsys):
    golden = json.loads((GOLDEN / "parity-cpu.json").read_text())
    changed = copy.deepcopy(golden)
    changed["steps"][1]["entropy"] *= 1.01  # 1% off: far outside the fp32 tolerance
    rc = main(["compare", str(GOLDEN / "parity-cpu.json"), write(tmp_path, "b.json", changed)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAIL entropy at step 1" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("  FAIL ")] == ["entropy"]
    # with the bf16 tolerance a 1% change passes: the thresholds really come from the options
    assert main(["compare", str(GOLDEN / "parity-cpu.json"), str(tmp_path / "b.json"), "--rtol", "0.02"]) == 0


def test_identical_golden_compares_equal_and_report_shows_both_environments(capsys):
    cpu, npu = GOLDEN / "parity-cpu.json", GOLDEN / "parity-npu-emulated.json"
    assert main(["compare", str(cpu), str(cpu)]) == 0
    capsys.readouterr()
    assert main(["compare", str(cpu), str(npu)]) == 0
    out = capsys.readouterr().out
    for metric in METRICS:
        assert metric in out
    env_line = next(line for line in out.splitlines() if line.startswith("backend"))
    assert "cpu" in env_line and "npu-emulated" in env_line
    assert next(line for line in out.splitlines() if line.startswith("attention")).split()[1:] == \
        ["reference", "npu_fusion"]
    assert "not the Ascend hardware" in out  # the emulation caveat travels with its results


def test_report_formats_every_metric_once():
    a = make_result({"p": [1.0, 2.0], "q": [0.0, 0.0]})
    text = format_report(compare_results(a, a))
    header = [line for line in text.splitlines() if line.startswith("metric")]
    assert len(header) == 1
    assert sum(line.startswith("p ") for line in text.splitlines()) == 1
    assert "OK: all 4 values within tolerance" in text


# ----------------------------------------------------------------- unusable input: exit 2

@pytest.mark.parametrize("case, message", [
    ("missing", "parity result not found"),
    ("not_json", "not a readable JSON file"),
    ("foreign", "is not a parity result of format"),
    ("other_rollout", "runs on different rollouts are not comparable"),
    ("step_count", "has 3 steps but"),
    ("metrics", "record different metrics"),
    ("no_number", "lacks a number for"),
])
def test_unusable_input_exits_2(tmp_path, capsys, case, message):
    a = make_result({"m": [1.0, 2.0, 3.0]})
    b = copy.deepcopy(a)
    if case == "other_rollout":
        b["rollout"]["sha256"] = "0" * 64
    elif case == "step_count":
        b["steps"] = b["steps"][:2]
    elif case == "metrics":
        b = make_result({"n": [1.0, 2.0, 3.0]})
    elif case == "no_number":
        b["steps"][2]["m"] = None
    elif case == "foreign":
        b = {"format": "something-else"}
    path_b = write(tmp_path, "b.json", b)
    if case == "missing":
        path_b = str(tmp_path / "absent.json")
    elif case == "not_json":
        Path(path_b).write_text("{not json")
    rc = main(["compare", write(tmp_path, "a.json", a), path_b])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err


@pytest.mark.parametrize("item, message", [
    ("kl", "is not NAME=RTOL,ATOL"), ("kl=0.1", "is not NAME=RTOL,ATOL"), ("kl=a,b", "is not NAME=RTOL,ATOL"),
    ("kl=-1,0", "must be >= 0"), ("nope=0.1,0.1", "unknown metric"),
])
def test_bad_metric_tol_exits_2(tmp_path, capsys, item, message):
    a = write(tmp_path, "a.json", make_result({"kl": [1.0]}))
    assert main(["compare", a, a, "--metric-tol", item]) == 2
    assert message in capsys.readouterr().err


def test_unusable_input_is_a_value_error():
    with pytest.raises(UnusableInput, match="different rollouts"):
        compare_results(make_result({"m": [1.0]}), make_result({"m": [1.0]}, sha="0" * 64))
    assert issubclass(UnusableInput, ValueError)
