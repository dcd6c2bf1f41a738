"""trainer.loggers: the choice of trackers, and the one-line errors when one cannot run."""

from __future__ import annotations

import importlib.util
import random
import string
from pathlib import Path
from types import SimpleNamespace

import pytest

from lmm_r1_ascend.config.errors import SetupError
from lmm_r1_ascend.config.schema import LOGGERS, TrainConfig
from lmm_r1_ascend.trainer import trackers
from lmm_r1_ascend.train import main as train_main

TINY = ["model.pretrain=tiny-qwen2", "data.prompt_data=[demo:arithmetic]", "trainer.max_steps=1", "device=cpu"]


def _trainer(**kw):
    base = dict(loggers=["tensorboard"], tensorboard=True, project="p", run_name="", tags=[], log_artifacts=False)
    return SimpleNamespace(**{**base, **kw})


def test_the_registry_and_the_config_name_the_same_trackers():
    assert tuple(trackers.TRACKERS) == LOGGERS
    assert TrainConfig().trainer.loggers == ["tensorboard"]  # the default writes what it always wrote


def test_tensorboard_false_drops_tensorboard_and_repeats_count_once():
    assert trackers.enabled_loggers(_trainer(loggers=["wandb", "tensorboard", "wandb"])) == ["wandb", "tensorboard"]
    assert trackers.enabled_loggers(_trainer(loggers=["tensorboard", "mlflow"], tensorboard=False)) == ["mlflow"]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_missing_tracker_library_stops_the_cli_in_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "swanlab" else real(name, *a))
    code = train_main([*TINY, f"output_dir={tmp_path}", "trainer.loggers=[tensorboard,swanlab]", "--no-progress"])
    line = _one_error_line(capsys)
    assert code == 2 and "pip install 'lmm-r1-ascend[swanlab]'" in line and "trainer.loggers" in line
    assert not (tmp_path / "tensorboard").exists()  # stopped before anything was opened


def test_an_unknown_tracker_is_one_line_listing_the_known_ones(tmp_path, capsys):
    code = train_main([*TINY, f"output_dir={tmp_path}", "trainer.loggers=[neptune]", "--no-progress"])
    line = _one_error_line(capsys)
    assert code == 2 and "'neptune'" in line and all(name in line for name in LOGGERS)


@pytest.mark.parametrize("name, variable", [("wandb", "WANDB_MODE=offline"), ("swanlab", "SWANLAB_MODE=offline")])
def test_online_without_a_login_says_how_to_log_offline(name, variable, tmp_path, monkeypatch):
    pytest.importorskip(name)
    for var in ("WANDB_MODE", "WANDB_API_KEY", "SWANLAB_MODE", "SWANLAB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # no stored login
    monkeypatch.setenv("SWANLAB_ROOT", str(tmp_path / "swanlab-root"))
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = SimpleNamespace(trainer=_trainer(loggers=[name]))
    if name == "wandb":
        import wandb

        wandb.teardown()  # an earlier wandb run in this process (offline) would otherwise set the mode
    try:
        with pytest.raises(SetupError) as err:
            trackers.open_trackers(cfg, {"seed": 1}, tmp_path, resume_step=0)
    finally:
        if name == "wandb":  # wandb keeps the settings of its first set-up per process (online here): drop them
            import wandb

            wandb.teardown()
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"trainer.loggers: {name} could not start a run") and variable in text


def test_mlflow_names_are_the_metrics_jsonl_names_mlflow_accepts():
    pytest.importorskip("mlflow")
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_metric_name  # MLflow's own rule, the reference

    from lmm_r1_ascend.trainer.trackers.mlflow_tracker import metric_name

    with pytest.raises(MlflowException):
        _validate_metric_name("eval/all/pass@8")  # why the mapping exists
    assert metric_name("eval/geo/pass@8") == "eval/geo/pass_at_8"
    assert metric_name("reward/status/bad_label") == "reward/status/bad_label"  # valid names pass unchanged
    for awkward in ("..x/y", "a/../b", "a//b", "/a", "a/", ".", "a/./b", "...", "a/.."):
        _validate_metric_name(metric_name(awkward))
    rng = random.Random()
    alphabet = string.ascii_letters + string.digits + "_-.@:%()[]+#é "

    def segment():  # a metrics.jsonl key is section/datasource/figure: non-empty parts, never . or ..
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10)))
        return text if text.strip(".") else "x"

    names = {"/".join(segment() for _ in range(rng.randint(1, 3))) for _ in range(300)}
    for name in names:
        _validate_metric_name(metric_name(name))


def test_flatten_gives_dotted_keys():
    assert trackers.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": None}) == {
        "a.b": 1, "a.c.d": [1, 2], "e": {}, "f": None}


def test_scalars_keep_numbers_only():
    row = {"step": 3, "a": 1.5, "b": 2, "c": None, "d": True, "e": "x"}
    assert trackers.scalars_of(row) == {"a": 1.5, "b": 2}


def test_a_resume_reopens_the_recorded_runs_and_a_fresh_run_does_not(tmp_path, monkeypatch):
    seen = []

    class Fake(trackers.Tracker):
        name = "wandb"

        def __init__(self, info):
            seen.append(info.run_id)
            self.run_id = info.run_id or f"new{len(seen)}"

        def close(self):
            pass

    monkeypatch.setattr(trackers.importlib, "import_module", lambda _: SimpleNamespace(open_run=Fake, OFFLINE_HINT=""))
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda _: object())
    cfg = SimpleNamespace(trainer=_trainer(loggers=["wandb"]))
    trackers.open_trackers(cfg, {}, tmp_path, resume_step=0)
    trackers.open_trackers(cfg, {}, tmp_path, resume_step=5)   # continues new1
    trackers.open_trackers(cfg, {}, tmp_path, resume_step=0)   # trainer.resume=false: a new tracker run
    assert seen == [None, "new1", None]
    assert (Path(tmp_path) / "trackers.json").read_text().count("new3") == 1


def test_only_the_driver_opens_trackers():
    """Ray ranks and engine actors run workers/ and distributed/ code; the trackers are opened by
    the controller (trainer/ppo.py) alone, so a multi-rank run logs each step once."""
    root = Path(trackers.__file__).resolve().parents[2]
    callers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                     if "open_trackers(" in p.read_text(encoding="utf-8") and "trackers" not in p.parts)
    assert callers == ["trainer/ppo.py"]
