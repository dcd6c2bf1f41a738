"""``python -m lmm_r1_ascend.reward``: single answers, jsonl files with bad lines,
Sokoban levels, custom files, the benchmark, usage errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from lmm_r1_ascend.envs.sokoban import save_level
from lmm_r1_ascend.rewards.cli import main

GOOD = "<think> 1+1=2 </think><answer>$\\boxed{2}$</answer>"


def run(capsys, *argv):
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_single_math_answer(capsys):
    code, out, _ = run(capsys, "--task", "math", "--label", "\\frac{1}{2}", "--workers", "1",
                       "--response", "<think> half </think><answer> $\\boxed{0.5}$ </answer>")
    res = json.loads(out)
    assert code == 0 and (res["format"], res["accuracy"], res["total"], res["status"]) == (0.5, 1.0, 1.5, "correct")


def test_single_answer_from_stdin_with_chat_header(capsys, monkeypatch):
    text = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n" + GOOD + "<|im_end|><|endoftext|>"
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    code, out, _ = run(capsys, "--label", "2", "--response", "-", "--workers", "0", "--no-format")
    assert code == 0 and json.loads(out)["total"] == 1.0 and json.loads(out)["format"] == 0.0


def test_file_mode_one_line_per_input_in_order(tmp_path, capsys):
    lines = [
        json.dumps({"label": "2", "response": GOOD}).encode(),
        b"{not json",
        json.dumps({"label": None, "response": GOOD}).encode(),
        json.dumps({"label": "2", "response": 2}).encode(),
        b"\xff\xfe invalid utf-8",
        b"",
        json.dumps([1, 2]).encode(),
        json.dumps({"label": "3"}).encode(),
        json.dumps({"label": "5", "response": "<think>" + "x " * 500_000 + "</think><answer>$\\boxed{5}$</answer>"}).encode(),
        json.dumps({"answer": "$\\boxed{B}$", "query": "<|im_start|>assistant\n<think>t</think><answer>(B)</answer><|im_end|>"}).encode(),
        json.dumps({"label": "7", "response": "<think>t</think><answer>$\\boxed{8}$</answer>"}).encode(),
    ]
    f = tmp_path / "in.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    code, out, err = run(capsys, "--task", "math", "--file", str(f), "--workers", "1", "--batch-size", "4")
    rows = [json.loads(x) for x in out.splitlines()]
    assert [r["line"] for r in rows] == list(range(1, len(lines) + 1))
    assert [r["status"] for r in rows] == [
        "correct", "bad_line", "bad_label", "bad_input", "bad_line", "bad_line", "bad_line", "bad_line",
        "correct", "correct", "wrong"]
    assert all({"format", "accuracy", "total"} <= r.keys() for r in rows)
    assert [r["total"] for r in rows] == [1.5, None, 0.5, 0.0, None, None, None, None, 1.5, 1.5, 0.5]
    assert "invalid JSON" in rows[1]["detail"] and "invalid UTF-8" in rows[4]["detail"]
    assert "empty line" in rows[5]["detail"] and "JSON object" in rows[6]["detail"] and "response" in rows[7]["detail"]
    assert code == 1 and "5 line(s)" in err


def test_sokoban_level(tmp_path, capsys):
    level = save_level(tmp_path / "l.npy", np.array([[0, 0, 0, 0, 0, 0], [0, 5, 4, 1, 2, 0], [0, 0, 0, 0, 0, 0]]))
    code, out, _ = run(capsys, "--task", "sokoban", "--level", str(level),
                       "--response", "<think> push it right twice </think><answer>right, right</answer>")
    res = json.loads(out)
    assert code == 0 and res["status"] == "solved"
    # hand-computed: best 10.8 + format 0.5 + 0.05*2 + 4 words * 0.001
    assert res["total"] == pytest.approx(11.404, abs=1e-9)
    assert {"format", "best_reward", "action_term", "think_term"} <= res.keys()


def test_custom_file_errors_name_file_and_sample(tmp_path, capsys):
    reward = tmp_path / "r.py"
    reward.write_text("def reward_func(q, p, l):\n    return [1 / (len(x) - 3) for x in q]\n")
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"response": r, "label": ""}) for r in ["abcd", "abc"]) + "\n")
    code, out, err = run(capsys, "--task", f"custom:{reward}", "--file", str(data))
    assert code == 1 and out == ""
    assert str(reward) in err and "sample 1" in err and "ZeroDivisionError" in err
    code, out, _ = run(capsys, "--task", f"custom:{reward}", "--file", str(data), "--on-error", "zero")
    rows = [json.loads(x) for x in out.splitlines()]
    assert code == 0 and [r["reward"] for r in rows] == [1.0, 0.0] and rows[1]["status"] == "error"


@pytest.mark.parametrize("argv,msg", [
    (["--task", "math", "--response", "x"], "needs --label"),
    (["--task", "sokoban", "--response", "x", "--level", "/no/such.npy"], "needs --level"),
    (["--file", "/no/such.jsonl"], "no such file"),
    (["--file", __file__, "--route", "nonsense"], "DATASOURCE=SPEC"),
    (["--response", "x", "--label", "1", "--template", "llama99"], "unknown chat template"),
])
def test_usage_errors(capsys, argv, msg):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_bench_prints_rates(capsys):
    code, out, _ = run(capsys, "--bench", "24", "--workers", "1")
    res = json.loads(out)
    assert code == 0 and res["n"] == 24 and res["agree"] == 24  # pool and in-process agree
    assert res["pool_per_s"] > 0 and res["sequential_per_s"] > 0


def test_module_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "lmm_r1_ascend.reward", "--task", "math", "--label", "2", "--response", GOOD],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert (res["format"], res["accuracy"], res["total"]) == (0.5, 1.0, 1.5)
