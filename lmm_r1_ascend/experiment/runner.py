"""Run the ablation's variants one after another: train, evaluate, mark done; skip, resume, stop.

Each variant's folder DIR/<variant>/ holds `run/` (the training run), `eval_text/`, `eval_image/`
(eval summaries), the logs of its commands and three markers, each carrying the variant's
fingerprint (variants.py: its exact command lines and the fingerprint of the variant it starts
from):
  started.json  written before its first command; a different fingerprint there (an option
                changed) clears the folder and the variant starts over;
  trained.json  its training run exited 0 (a rerun goes straight to the evaluation);
  done.json     its evaluations exited 0 too: a rerun with the same fingerprint skips it.
Every command started is appended to DIR/commands.log.

Signals: the commands run in sessions of their own, so a Ctrl-C in the terminal reaches only the
experiment, which passes each SIGINT / SIGTERM on to the command under way: the first lets a
training run finish its step and write its checkpoint (trainer/stop.py), a second ends it at once.
The experiment then stops with 128 + the signal; rerunning it resumes that variant's run
(trainer.resume=true) and runs only the variants not done.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lmm_r1_ascend.experiment.variants import VariantRun
from lmm_r1_ascend.trainer.stop import SIGNALS, exit_code, restore, say_in_handler

MODULES = {"train": "lmm_r1_ascend.train", "eval": "lmm_r1_ascend.eval"}


def command_line(module: str, argv: list[str]) -> str:
    return " ".join(["python -m", MODULES[module], *map(shlex.quote, argv)])


class Executor:
    """Runs one CLI command with its output in a log file; returns its exit status. Passes the
    signals the experiment receives on to the command under way."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the first signal received
        self._child: subprocess.Popen | None = None

    def handle(self, signum, _frame) -> None:
        if self.signum is None:
            self.signum = signum
            say_in_handler(f"{signal.Signals(signum).name}: stopping the variant under way (its training run "
                           "writes a checkpoint); send it again to stop at once")
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signum)

    def run(self, module: str, argv: list[str], log: Path) -> int:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("LMM_R1_PROGRESS", None)
        with open(log, "w") as f:
            self._child = subprocess.Popen([sys.executable, "-m", MODULES[module], *argv], stdout=f,
                                           stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                return self._child.wait()
            finally:
                self._child = None


class InProcessExecutor(Executor):
    """The same commands through their main() in this process: no interpreter start per command
    (the tests' short runs), no isolation. The training run's own signal handling applies."""

    def run(self, module: str, argv: list[str], log: Path) -> int:
        import importlib

        main = importlib.import_module(MODULES[module]).main
        with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            rc = main(list(argv))
        if rc in tuple(exit_code(s) for s in SIGNALS) and self.signum is None:
            self.signum = rc - 128  # the run stopped on a signal of its own handling
        return rc


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _reason(log: Path) -> str:
    """The one line that says why a command failed: its last `error:` line, else its last line."""
    try:
        lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "(no log)"
    errors = [x for x in lines if x.startswith("error:")]
    return (errors or lines or ["(empty log)"])[-1]


def is_done(run: VariantRun) -> bool:
    """Finished: done.json carries this fingerprint and every eval summary is there."""
    done = _read(run.folder / "done.json")
    return (done is not None and done.get("fingerprint") == run.fingerprint
            and all((run.eval_dir(k) / "summary.json").is_file() for k in run.eval_argvs))


@dataclass
class Outcome:
    """What happened to each variant: done | skipped (done earlier) | failed | blocked; and a stop."""

    status: dict[str, str] = field(default_factory=dict)
    failures: dict[str, tuple[int, str]] = field(default_factory=dict)  # variant -> (exit code, line)
    stopped: int | None = None  # the signal that stopped the experiment


def _fmt(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


def run_all(runs: list[VariantRun], out: Path, executor: Executor,
            say: Callable[[str], None] = lambda s: print(s, flush=True)) -> Outcome:
    """Run every variant not done yet, in order (see the module docstring)."""
    outcome, started_all, n = Outcome(), time.perf_counter(), len(runs)
    log = out / "commands.log"
    previous = {sig: signal.signal(sig, executor.handle) for sig in SIGNALS}
    try:
        for k, run in enumerate(runs, 1):
            head = f"[variant {k}/{n}] {run.name}"
            if is_done(run):
                outcome.status[run.name] = "skipped"
                say(f"{head}: finished earlier, skipped ({run.folder})")
                continue
            if run.needs and outcome.status.get(run.needs) not in ("done", "skipped"):
                outcome.status[run.name] = "blocked"
                say(f"{head}: not run: it starts from {run.needs}, which did not finish")
                continue
            started = _read(run.folder / "started.json")
            if started is not None and started.get("fingerprint") != run.fingerprint:
                say(f"{head}: its commands changed since its last run: starting it over")
                shutil.rmtree(run.folder)
            run.folder.mkdir(parents=True, exist_ok=True)
            _write(run.folder / "started.json", {"fingerprint": run.fingerprint})
            t0 = time.perf_counter()
            say(f"{head}: start ({'train + ' if run.train_argv else ''}eval; elapsed {_fmt(t0 - started_all)})")
            steps = [] if run.train_argv is None or _trained(run) else [("train", "train", run.train_argv)]
            steps += [(f"eval_{kind}", "eval", argv) for kind, argv in run.eval_argvs.items()]
            times: dict[str, float] = {}
            for what, module, argv in steps:
                if executor.signum is not None:
                    break
                with open(log, "a") as f:
                    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
                    f.write(f"{stamp} {run.name} {what} {command_line(module, argv)}\n")
                s0 = time.perf_counter()
                rc = executor.run(module, argv, run.folder / f"{what}.log")
                times[what] = time.perf_counter() - s0
                if executor.signum is not None:
                    break
                if rc != 0:
                    line = _reason(run.folder / f"{what}.log")
                    outcome.failures[run.name] = (rc, line)
                    outcome.status[run.name] = "failed"
                    say(f"{head}: FAILED: {what} exited {rc}: {line} (log: {run.folder / f'{what}.log'})")
                    break
                if what == "train":
                    _write(run.folder / "trained.json", {"fingerprint": run.fingerprint,
                                                         "seconds": round(times[what], 1)})
            if executor.signum is not None:
                outcome.stopped = executor.signum
                say(f"{head}: stopped by {signal.Signals(executor.signum).name} after "
                    f"{_fmt(time.perf_counter() - t0)}; rerun the same command to resume it")
                return outcome
            if run.name in outcome.failures:
                continue
            wall = time.perf_counter() - t0
            _write(run.folder / "done.json", {
                "fingerprint": run.fingerprint, "seconds": round(wall, 1),
                "command_seconds": {k2: round(v, 1) for k2, v in times.items()},
                "train": command_line("train", run.train_argv) if run.train_argv else None,
                "eval": {kind: command_line("eval", a) for kind, a in run.eval_argvs.items()},
                "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
            outcome.status[run.name] = "done"
            parts = ", ".join(f"{w} {_fmt(s)}" for w, s in times.items())
            say(f"{head}: done in {_fmt(wall)} ({parts}); elapsed {_fmt(time.perf_counter() - started_all)}")
        return outcome
    finally:
        restore(previous)


def _trained(run: VariantRun) -> bool:
    marker = _read(run.folder / "trained.json")
    return marker is not None and marker.get("fingerprint") == run.fingerprint and (run.run_dir / "hf").is_dir()
