"""The ablation runner (lmm_r1_ascend/experiment): which commands run, which are skipped, resumed or
rerun, how failures and signals end a variant, the table's deltas, the paper-scale plan and bad input.

The runner is driven by a recording executor that stands in for the train / eval subprocesses (it
writes what they would: an hf/ export, an eval summary), so each rule is checked in milliseconds;
tests/e2e/test_experiment_cli.py runs the real commands.
"""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest

from lmm_r1_ascend.experiment import table as T
from lmm_r1_ascend.experiment import variants as V
from lmm_r1_ascend.experiment.__main__ import main
from lmm_r1_ascend.experiment.runner import Executor, is_done, run_all


class Recording(Executor):
    """Writes what the real commands would; fails or takes a signal where told."""

    def __init__(self, fail: dict[str, int] | None = None, signal_at: str | None = None):
        super().__init__()
        self.calls: list[tuple[str, str]] = []  # (variant folder name, module)
        self.fail, self.signal_at = fail or {}, signal_at

    def run(self, module, argv, log):
        folder = log.parent.name
        self.calls.append((folder, module))
        if self.signal_at == f"{folder}:{module}":
            self.signal_at = None
            self.handle(signal.SIGTERM, None)  # the experiment receives SIGTERM during this command
            return 143
        if f"{folder}:{module}" in self.fail:
            log.write_text("loading...\nerror: data.prompt_data: no such file x.jsonl\n")
            return self.fail[f"{folder}:{module}"]
        if module == "train":
            out = Path(next(a for a in argv if a.startswith("output_dir=")).split("=", 1)[1])
            (out / "hf").mkdir(parents=True, exist_ok=True)
        else:
            out = Path(argv[argv.index("--out") + 1])
            out.mkdir(parents=True, exist_ok=True)
            acc = 0.1 * len(folder) / 10  # distinct per variant
            (out / "summary.json").write_text(json.dumps({"figures": {"all": {
                "accuracy": acc, "pass@2": min(1.0, 2 * acc), "response_length/mean": 10.0 + len(folder)}}}))
        return 0


def _runs(out: Path, names=None, steps=2, sets=None):
    names = V.select(V.DEMO_VARIANTS, names)
    return V.resolve(V.DEMO_VARIANTS, names, out, model="tiny-qwen2.5-vl", steps=steps, train_common=["device=cpu"],
                     sets=sets or {}, data={}, eval_data={"text": "t.jsonl", "image": "i.jsonl"}, eval_args=["--n", "2"])


def _quiet(_line):
    pass


def test_a_rerun_skips_finished_variants_and_an_option_change_reruns_the_variant_and_those_from_it(tmp_path):
    first = Recording()
    outcome = run_all(_runs(tmp_path, ["fre_text", "mgt_after_fre", "mgt_direct"]), tmp_path, first, _quiet)
    assert outcome.status == dict.fromkeys(["base", "fre_text", "mgt_after_fre", "mgt_direct"], "done")
    assert len(first.calls) == 2 + 3 * 3  # base: 2 evals; each trained variant: train + 2 evals
    again = Recording()
    outcome = run_all(_runs(tmp_path, ["fre_text", "mgt_after_fre", "mgt_direct"]), tmp_path, again, _quiet)
    assert again.calls == [] and set(outcome.status.values()) == {"skipped"}
    logged = (tmp_path / "commands.log").read_text().splitlines()
    assert len(logged) == 11 and all("python -m lmm_r1_ascend." in x for x in logged)
    # fre_text gets another learning rate: it and mgt_after_fre (which starts from it) rerun, the rest do not
    changed = Recording()
    run_all(_runs(tmp_path, ["fre_text", "mgt_after_fre", "mgt_direct"], sets={"fre_text": ["optim.actor_lr=1e-4"]}),
            tmp_path, changed, _quiet)
    assert sorted({f for f, _ in changed.calls}) == ["fre_text", "mgt_after_fre"]
    # a finished variant whose eval summary went missing is not finished: its train is not redone, its eval is
    (tmp_path / "mgt_direct" / "eval_image" / "summary.json").unlink()
    redo = Recording()
    run_all(_runs(tmp_path, ["fre_text", "mgt_after_fre", "mgt_direct"]), tmp_path, redo, _quiet)
    assert [c for c in redo.calls if c[0] == "mgt_direct"] == [("mgt_direct", "eval"), ("mgt_direct", "eval")]


def test_a_signal_stops_the_variant_under_way_and_the_rerun_resumes_it_and_runs_only_the_unfinished(tmp_path):
    runs = _runs(tmp_path, ["fre_text", "fre_multi", "sft_text"])
    killed = Recording(signal_at="fre_multi:train")
    lines: list[str] = []
    outcome = run_all(runs, tmp_path, killed, lines.append)
    assert outcome.stopped == signal.SIGTERM
    assert killed.calls[-1] == ("fre_multi", "train") and ("sft_text", "train") not in killed.calls
    assert "stopped by SIGTERM" in lines[-1] and "rerun the same command" in lines[-1]
    assert not is_done(runs[2]) and (tmp_path / "fre_multi" / "started.json").exists()
    checkpoint = tmp_path / "fre_multi" / "run" / "ckpt" / "global_step1"  # what the stopped run wrote
    checkpoint.mkdir(parents=True)
    rerun = Recording()
    outcome = run_all(_runs(tmp_path, ["fre_text", "fre_multi", "sft_text"]), tmp_path, rerun, _quiet)
    assert rerun.calls == [("fre_multi", "train"), ("fre_multi", "eval"), ("fre_multi", "eval"),
                           ("sft_text", "train"), ("sft_text", "eval"), ("sft_text", "eval")]  # base, fre_text not rerun
    assert checkpoint.is_dir()  # resumed in place: the variant's folder was not cleared
    assert outcome.status == {"base": "skipped", "fre_text": "skipped", "fre_multi": "done", "sft_text": "done"}
    train = next(x for x in (tmp_path / "commands.log").read_text().splitlines()[::-1] if "fre_multi train" in x)
    assert f"output_dir={tmp_path / 'fre_multi' / 'run'}" in train  # the same run directory: its checkpoint


def test_a_failing_variant_reports_its_exit_code_and_one_line_the_others_still_run_and_those_from_it_do_not(tmp_path):
    lines: list[str] = []
    outcome = run_all(_runs(tmp_path, ["fre_text", "mgt_after_fre", "mgt_direct"]), tmp_path,
                      Recording(fail={"fre_text:train": 2}), lines.append)
    assert outcome.failures == {"fre_text": (2, "error: data.prompt_data: no such file x.jsonl")}
    assert outcome.status == {"base": "done", "fre_text": "failed", "mgt_after_fre": "blocked", "mgt_direct": "done"}
    failed = [x for x in lines if "FAILED" in x]
    assert len(failed) == 1 and "train exited 2" in failed[0] and "fre_text/train.log" in failed[0]


def test_variant_commands_follow_the_table(tmp_path):
    runs = {r.name: r for r in _runs(tmp_path)}
    assert list(runs) == list(V.DEMO_VARIANTS)
    assert runs["base"].train_argv is None and runs["base"].eval_argvs["text"][:2] == ["--model", "tiny-qwen2.5-vl"]
    after = runs["mgt_after_fre"].train_argv
    assert after[:4] == ["--stage", "mgt", "--recipe", "demo_mgt"]
    assert f"model.init_from={tmp_path / 'fre_text' / 'run'}" in after and "trainer.max_steps=2" in after
    assert "model.init_from=pretrain" in runs["mgt_direct"].train_argv
    assert runs["fre_text"].eval_argvs["image"][1] == str(tmp_path / "fre_text" / "run" / "hf")
    # every trained variant has the same step budget; the fingerprint of a variant covers the one it starts from
    assert all("trainer.max_steps=2" in r.train_argv for r in runs.values() if r.train_argv)
    other = {r.name: r for r in _runs(tmp_path, sets={"fre_text": ["seed=1"]})}
    assert other["mgt_after_fre"].fingerprint != runs["mgt_after_fre"].fingerprint
    assert other["mgt_direct"].fingerprint == runs["mgt_direct"].fingerprint


def test_the_table_has_a_row_per_variant_and_deltas_equal_the_direct_subtraction(tmp_path):
    figs = {"base": {"text": {"accuracy": 0.2031, "pass@4": 0.5, "response_length/mean": 31.25},
                     "image": {"accuracy": 0.0, "pass@4": 0.0, "response_length/mean": 40.0}},
            "FRE-Text": {"text": {"accuracy": 0.4453, "pass@4": 0.8125, "response_length/mean": 27.5},
                         "image": {"accuracy": 0.0625, "pass@4": 0.125, "response_length/mean": 12.0}}}
    rows = list(figs.items())
    header, cells, raw = T.build(rows, T.columns(4, ["text", "image"]))
    assert header == ["variant", "text acc (%)", "image acc (%)", "text pass@4 (%)", "image pass@4 (%)",
                      "text length (tokens)", "image length (tokens)"]
    assert [c[0] for c in cells] == ["base", "FRE-Text"]
    assert cells[0][1] == "20.3" and cells[1][1] == "44.5 (+24.2)"  # 100 * (0.4453 - 0.2031)
    assert cells[1][6] == "12.0 (-28.0)"
    for (head, kind, fig, scale), base, cell in zip(T.columns(4, ["text", "image"]), cells[0][1:], cells[1][1:]):
        value, ref = figs["FRE-Text"][kind][fig], figs["base"][kind][fig]
        delta = scale * (value - ref)
        assert base == f"{scale * ref:.1f}" and raw[0][head] == {"value": pytest.approx(scale * ref), "delta": None}
        assert cell == f"{scale * value:.1f} ({delta:+.1f})" and raw[1][head]["delta"] == pytest.approx(delta)
    md, png, text = T.write(rows, 4, ["text", "image"], tmp_path, "title")
    assert md.read_text().count("\n| ") == 3 and png.stat().st_size > 1000


def test_paper_scale_writes_the_plan_with_every_stage_and_a_verdict(tmp_path, capsys):
    assert main(["two-stage", "--out", str(tmp_path), "--scale", "paper", "--devices", "8"]) == 0
    plan = (tmp_path / "plan.md").read_text()
    assert plan == capsys.readouterr().out.split("\nwrote ")[0]
    rows = [x for x in plan.splitlines() if x.startswith("| ") and x[2].isdigit()]
    assert [r.split(" | ")[1].split()[0] for r in rows] == list(V.PAPER_VARIANTS)  # fre_text, then MGT from it, ...
    for row in rows[1:]:
        assert " fits (" in row or "does NOT fit" in row
    assert "8 x 64 GB" in plan and "distributed.world_size=8" in plan and "--recipe mgt_geo" in plan
    assert "Not run: give --model PATH" in plan and not (tmp_path / "fre_text").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--variants", "fre_txt"], "unknown variant(s) fre_txt: choose from base, fre_text"),
    (["--variants", "mgt_after_fre"], "variant mgt_after_fre starts from fre_text: add fre_text to --variants"),
    (["--set", "fre_tex:seed=1"], "unknown variant 'fre_tex'"),
    (["--set", "seed"], "expected [VARIANT:]key=value"),
    (["--steps", "0"], "must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, needle):
    assert main(["two-stage", "--out", str(tmp_path / "x"), "--list", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_out_dir_is_one_line(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    assert main(["two-stage", "--out", str(locked / "exp")]) == 2
    assert capsys.readouterr().err.startswith(f"error: --out {locked / 'exp'}: cannot write there")


def test_an_out_path_that_is_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["two-stage", "--out", str(blocker / "exp")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {blocker / 'exp'}: cannot write there") and err.count("\n") == 1


def test_table_cells_are_coloured_by_the_sign_of_their_delta_and_zero_deltas_stay_plain():
    from lmm_r1_ascend.evaluation.compare import delta_colour

    assert delta_colour("44.5 (+24.2)") == "#e3f4e3" and delta_colour("12.0 (-28.0)") == "#f8e1e1"
    assert delta_colour("0.0 (+0.0)") is None and delta_colour("3.0 (-0.0)") is None and delta_colour("20.3") is None
    assert delta_colour("1.0 (+0.05)") == "#e3f4e3"
