"""A quiet console: third-party start-up notices (DeepSpeed's accelerator line, Ray's
local-instance and token-auth lines, MLflow's table creation) stay off every CLI's output unless
-v; the libraries' other warnings and errors stay."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from lmm_r1_ascend.config.cli import quiet_third_party

DS_NOTICE = "Setting accelerator to CPU"


def _run(*args: str) -> list[str]:
    # DeepSpeed says nothing when DS_ACCELERATOR chooses for it (a backend sets it in this process
    # when an earlier test trained): the CLIs start without it
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return (done.stdout + done.stderr).splitlines()  # DeepSpeed's notice goes to stdout, others' to stderr


def test_plan_prints_its_own_line_first():
    pytest.importorskip("deepspeed")  # plan asks DeepSpeed for its ZeRO estimates: the notice's moment
    lines = _run("-m", "lmm_r1_ascend.plan", "--recipe", "fre_text", "--devices", "8", "--device-memory", "64")
    assert lines[0].startswith("fre_text: "), lines[:3]
    assert not any(DS_NOTICE in line for line in lines)


def test_doctor_prints_its_own_line_first():
    lines = _run("-m", "lmm_r1_ascend.doctor")
    assert lines[0].startswith("backend "), lines[:3]
    assert not any("[WARNING]" in line for line in lines)


def test_v_shows_deepspeeds_notice_again():
    """The notice exists (so the plan test can fail), and -v, which every CLI accepts, shows it."""
    pytest.importorskip("deepspeed")
    code = ("from lmm_r1_ascend.config.cli import CliParser, parse_cli\n"
            "parse_cli(CliParser(prog='x'), ['-v'])\n"  # what every CLI does first
            "import deepspeed\nfrom deepspeed.utils import logger\nlogger.warning('a real warning')\n")
    out = "\n".join(_run("-c", code))
    assert DS_NOTICE in out and "a real warning" in out


class _Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def emit(self, record):
        self.seen.append(record.getMessage())


@pytest.mark.parametrize("verbose", [False, True])
def test_only_the_listed_notices_are_dropped(verbose):
    keep = _Keep()
    ds, db = logging.getLogger("DeepSpeed"), logging.getLogger("mlflow.store.db.utils")
    ray = logging.getLogger("ray._private.worker")
    cases = [  # (logger, level, message, dropped unless verbose)
        (ds, logging.WARNING, DS_NOTICE + ". If you have GPU or other accelerator, we were unable to detect it.", True),
        (ds, logging.ERROR, DS_NOTICE + " failed", False), (ds, logging.WARNING, "a real DeepSpeed warning", False),
        (db, logging.INFO, "Creating initial MLflow database tables...", True), (db, logging.WARNING, "db warning", False),
        (ray, logging.INFO, "Started a local Ray instance.", True), (ray, logging.WARNING, "a real Ray warning", False),
    ]
    for logger in (ds, db, ray):
        logger.addHandler(keep)
        logger.setLevel(logging.INFO)
    try:
        quiet_third_party(verbose=verbose)
        for logger, level, msg, _ in cases:
            logger.handle(logger.makeRecord(logger.name, level, "x.py", 1, msg, (), None))
        assert keep.seen == [msg for _, _, msg, dropped in cases if verbose or not dropped]
    finally:
        quiet_third_party(verbose=True)  # leave the loggers as they were
        for logger in (ds, db, ray):
            logger.removeHandler(keep)
            logger.setLevel(logging.NOTSET)
