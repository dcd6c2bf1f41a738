"""Stopping a run on SIGINT / SIGTERM (Ctrl-C, Slurm preemption, Kubernetes eviction, `timeout`).

The first signal asks the run to stop: the step under way finishes (generation, update and
weight sync; a save under way completes), a checkpoint is written, and the run ends with
`RunStopped`. A second signal ends it at once with `Interrupted` (no new checkpoint; the last
good one stays the resume point). The CLI turns both into one line and the exit code
128 + signal number (130 for SIGINT, 143 for SIGTERM), the shells' convention, so a wrapper
can tell "stopped, run the same command again to resume" from success (0) and errors (2-4).

Handlers can only be installed from the main thread; elsewhere (a trainer driven from a
thread) signals keep their previous behaviour.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by signal `signum`: 128 + its number."""
    return 128 + int(signum)


class Interrupted(BaseException):
    """A signal that ends the run at once (a second one, or one during set-up). A BaseException,
    like KeyboardInterrupt, so no `except Exception` in between swallows it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


class RunStopped(Exception):
    """The run stopped on a signal after its checkpoint was written (or failed to be: checkpoint None)."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}")


def say_in_handler(text: str) -> None:
    """Write from a signal handler: os.write, not print (print is not reentrant)."""
    try:
        os.write(2, (text + "\n").encode())
    except OSError:
        pass


def _raise_interrupted(signum, _frame) -> None:
    raise Interrupted(signum)


def interrupt_at_once() -> dict:
    """Set-up: SIGINT and SIGTERM raise Interrupted (no traceback once the CLI catches it).
    Returns the previous handlers (for restore)."""
    return _install(_raise_interrupted)


def _install(handler) -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in SIGNALS}


def restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


class StopRequest:
    """The training loop's view of the signals: `signum` is set by the first one (the loop checks
    `requested` between steps), the second raises Interrupted. notice(text) tells the user what
    the first one does (written straight to stderr)."""

    def __init__(self, notice: Callable[[str], None] = say_in_handler):
        self.signum: int | None = None
        self._notice = notice
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum
        self._notice(f"{signal.Signals(signum).name}: stopping after the current step and writing a checkpoint "
                     "(send it again to exit at once, without a new checkpoint)")

    def __enter__(self) -> StopRequest:
        self._previous = _install(self._handle)
        return self

    def __exit__(self, *exc) -> None:
        restore(self._previous)
        self._previous = {}
