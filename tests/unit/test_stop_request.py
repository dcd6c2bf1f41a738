"""trainer/stop.py: the first SIGINT / SIGTERM is a request the loop reads, the second raises
Interrupted at once; handlers are restored afterwards; exit codes follow the shells' 128 + N."""

from __future__ import annotations

import os
import signal

import pytest

from lmm_r1_ascend.trainer.stop import Interrupted, StopRequest, exit_code, interrupt_at_once, restore


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_first_signal_asks_second_interrupts_and_handlers_come_back(sig):
    before = signal.getsignal(sig)
    notices: list[str] = []
    with StopRequest(notice=notices.append) as stop:
        assert not stop.requested
        os.kill(os.getpid(), sig)  # handled in this (main) thread before the next line runs
        assert stop.requested and stop.signum == sig
        assert len(notices) == 1 and notices[0].startswith(signal.Signals(sig).name) and "again" in notices[0]
        with pytest.raises(Interrupted) as err:
            os.kill(os.getpid(), sig)
        assert err.value.signum == sig and str(err.value) == signal.Signals(sig).name
    assert signal.getsignal(sig) is before


def test_interrupt_at_once_raises_on_the_first_signal_and_restores():
    before = signal.getsignal(signal.SIGTERM)
    previous = interrupt_at_once()
    try:
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        restore(previous)
    assert signal.getsignal(signal.SIGTERM) is before


def test_exit_codes_are_128_plus_the_signal():
    assert exit_code(signal.SIGINT) == 130 and exit_code(signal.SIGTERM) == 143
