"""The run header's and summary's pieces (trainer/console.py) on small inputs."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from lmm_r1_ascend.config import load_config
from lmm_r1_ascend.trainer.console import data_counts, human_count, run_summary
from lmm_r1_ascend.trainer.model_facts import parameter_count


def test_parameter_count_reads_safetensors_headers(tmp_path):
    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, str(tmp_path / "model-1.safetensors"))
    save_file({"c": torch.zeros(2, 2, 2)}, str(tmp_path / "model-2.safetensors"))
    assert parameter_count(tmp_path) == 12 + 5 + 8
    assert parameter_count(tmp_path / "nothing") is None and human_count(None) == "size unknown"
    (tmp_path / "model-3.safetensors").write_bytes(b"\x01")  # truncated: no crash in the header
    assert parameter_count(tmp_path) is None
    assert human_count(876_672) == "876.67K parameters" and human_count(3_090_000_000) == "3.09B parameters"


def test_data_counts_name_the_skip_reasons():
    counts = {"data/rows": 10, "data/kept": 7, "data/skipped_bad": 2, "data/filtered_too_long": 1,
              "data/skipped_bad/missing_image": 2}
    assert data_counts(counts) == "10 rows: 7 kept, 2 skipped (bad), 1 too long (missing_image 2)"


def test_summary_of_a_run_that_had_nothing_left_to_do(tmp_path):
    cfg = load_config("demo_fre", overrides=[f"output_dir={tmp_path}"])
    lines = run_summary(cfg, [], wall_s=1.0)
    assert len(lines) == 1 and lines[0].startswith("done: nothing to train")


def test_summary_names_outputs_and_commands(tmp_path):
    cfg = load_config("demo_fre", overrides=[f"output_dir={tmp_path}", "trainer.tensorboard=false"])
    (tmp_path / "hf").mkdir()
    history = [{"step": 1, "reward/mean": 0.5, "reward/accuracy": 0.25, "timing/step": 2.0},
               {"step": 2, "reward/mean": 0.75, "reward/accuracy": 0.5, "timing/step": 4.0,
                "eval/all/accuracy": 0.4, "eval/all/pass@8": 0.9, "eval/all/pass@2": 0.6}]
    lines = run_summary(cfg, history, wall_s=125.0, train_s=100.0,
                        first_eval=(0, {"eval/all/accuracy": 0.2, "eval/all/pass@8": 0.7}))
    text = "\n".join(lines)
    assert lines[0] == "done: 2 steps (to step 2) in 2m05s (setup 25s), median step 3.0 s"
    assert "reward 0.500 -> 0.750; accuracy 0.250 -> 0.500 (step 1 -> 2)" in text
    assert f"accuracy 0.200 -> 0.400; pass@8 0.700 -> 0.900 (step 0 -> 2; tables in {tmp_path}/eval/)" in text
    assert f"python -m lmm_r1_ascend.plot {tmp_path}" in text and f"--model {tmp_path}/hf" in text


def test_summary_gives_each_held_out_set_apart_when_there_are_several(tmp_path):
    cfg = load_config("demo_fre", overrides=[f"output_dir={tmp_path}"])
    before = {"eval/all/accuracy": 0.115, "eval/text/accuracy": 0.143, "eval/text/pass@8": 0.619,
              "eval/images/accuracy": 0.088, "eval/images/pass@8": 0.495}
    last = {"step": 60, "eval/all/accuracy": 0.188, "eval/text/accuracy": 0.286, "eval/text/pass@8": 0.670,
            "eval/images/accuracy": 0.090, "eval/images/pass@8": 0.330}
    text = "\n".join(run_summary(cfg, [last], wall_s=10.0, first_eval=(0, before)))
    assert "images: accuracy 0.088 -> 0.090; pass@8 0.495 -> 0.330" in text
    assert "text: accuracy 0.143 -> 0.286; pass@8 0.619 -> 0.670" in text
    single = "\n".join(run_summary(cfg, [{"step": 2, "eval/all/accuracy": 0.4, "eval/text/accuracy": 0.4}],
                                    wall_s=1.0, first_eval=(0, {"eval/all/accuracy": 0.2, "eval/text/accuracy": 0.2})))
    assert "text:" not in single  # one set: the 'all' line already says it


def test_eval_line_names_each_sets_accuracy_when_there_are_several():
    from lmm_r1_ascend.trainer.validation import eval_line

    metrics = {"eval/all/accuracy": 0.115, "eval/all/pass@8": 0.557, "eval/all/format_rate": 0.999,
               "eval/text/accuracy": 0.143, "eval/images/accuracy": 0.088}
    assert eval_line(0, metrics, 194, 8) == ("held-out eval at step 0 (194 prompts x 8): accuracy 0.115, "
                                             "pass@8 0.557, format 0.999 (accuracy per set: images 0.088, text 0.143)")
    one = {k: v for k, v in metrics.items() if "/images/" not in k}
    assert eval_line(0, one, 97, 8).endswith("format 0.999")

