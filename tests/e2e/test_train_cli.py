"""The train CLI: user errors are one line on stderr (exit code 2, no traceback); options and
key=value overrides in any order."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmm_r1_ascend.backends.npu import NpuBackend


def _train(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmm_r1_ascend.train", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_help_lists_the_recipes():
    proc = _train("--help")
    assert proc.returncode == 0
    for name in ("fre_text", "fre_multi", "mgt_geo", "mgt_percereason", "mgt_sokoban", "demo_fre", "demo_mgt"):
        assert name in proc.stdout


@pytest.mark.parametrize("args,needles", [
    (["trainer.max_step=3"], ["unknown config key 'trainer.max_step'", "did you mean 'trainer.max_steps'"]),
    (["optim.actor_lr=fast"], ["optim.actor_lr: expected float, got 'fast'"]),
    (["--recipe", "fre_txt"], ["unknown recipe 'fre_txt'", "fre_text"]),
])
def test_config_errors(args, needles):
    _one_line_error(_train(*args), *needles)


def test_missing_data_file(tmp_path):
    proc = _train("--recipe", "fre_text", f"data.prompt_data={tmp_path}/nope.jsonl", f"output_dir={tmp_path}/o")
    _one_line_error(proc, "data file not found", "nope.jsonl")


def test_mgt_without_an_fre_checkpoint(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"message": "[{\\"role\\": \\"user\\", \\"content\\": \\"1+1?\\"}]", "answer": "2"}\n')
    proc = _train("--stage", "mgt", "--recipe", "mgt_geo", f"data.prompt_data={data}",
                  f"model.init_from={tmp_path}/fre_run", f"output_dir={tmp_path}/o")
    _one_line_error(proc, "no FRE checkpoint", "run stage fre first")


def test_npu_without_cann(tmp_path):
    if NpuBackend.probe()[0]:
        pytest.skip("a real NPU is present")
    _one_line_error(_train("--device", "npu", f"output_dir={tmp_path}/o"), "torch_npu/CANN is missing")


def test_dry_run_checks_every_row(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"message": "[{\\"role\\": \\"user\\", \\"content\\": \\"1+1?\\"}]", "answer": "2"}\n{oops\n')
    proc = _train("--recipe", "fre_text", "model.pretrain=tiny-qwen2", f"data.prompt_data={data}",
                  f"output_dir={tmp_path}/o", "--dry-run")
    _one_line_error(proc, "d.jsonl:2")
    data.write_text('{"message": "[{\\"role\\": \\"user\\", \\"content\\": \\"1+1?\\"}]", "answer": "2"}\n')
    proc = _train("--recipe", "fre_text", "model.pretrain=tiny-qwen2", f"data.prompt_data={data}",
                  f"output_dir={tmp_path}/o", "--dry-run")
    assert proc.returncode == 0 and "dry run ok" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize("order", ["after", "before"])
def test_overrides_before_and_after_options(tmp_path, order):
    """key=value overrides anywhere among the options (argparse's intermixed parsing)."""
    options = ["--recipe", "demo_fre", "--dry-run", "--print-config"]
    overrides = ["trainer.max_steps=2", f"output_dir={tmp_path}/o"]
    args = [*options, *overrides] if order == "after" else [overrides[0], *options[:2], overrides[1], *options[2:]]
    proc = _train(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "max_steps: 2\n" in proc.stdout  # --print-config: the resolved YAML
    assert f"output     {tmp_path}/o/" in proc.stdout and "dry run ok" in proc.stdout


def test_the_issue_command_is_parsed(tmp_path):
    """`trainer.max_steps=2 --recipe fre_multi output_dir=x` once failed with 'unrecognized arguments:
    output_dir=x'; now it parses and stops on what is really missing (the paper's data)."""
    _one_line_error(_train("trainer.max_steps=2", "--recipe", "fre_multi", f"output_dir={tmp_path}/x"),
                    "data.prompt_data is empty")


@pytest.mark.parametrize("args,needles", [
    (["--dryrun"], ["unrecognized arguments: --dryrun", "did you mean --dry-run?"]),
    (["trainer.max_steps=2", "--recipe"], ["argument --recipe: expected one argument"]),
    (["trainer.max_steps", "2"], ["override 'trainer.max_steps' is not key=value"]),
])
def test_usage_errors_are_one_line(args, needles):
    _one_line_error(_train(*args), *needles)
