"""KillablePool: a task that hangs where no signal can reach it is killed at the limit
and counted, its worker replaced, the other tasks of the batch still scored; a worker
that dies is replaced; start-up failures are clear errors; close() leaves no process."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from lmm_r1_ascend.rewards.pool import KillablePool

LIMIT_S = 1.0


def hang_or_double(x):
    """Module-level (picklable) task: 'hang' blocks forever with every catchable signal
    blocked and SIGALRM ignored, so only SIGKILL ends it; 'die' exits the process."""
    if x == "hang":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGTERM, signal.SIGINT})
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.alarm(1)  # what math-verify would do; it cannot interrupt this task
        threading.Event().wait()
    if x == "die":
        os._exit(3)
    if x == "raise":
        raise KeyError("bad item")
    return 2 * x


def failing_init():
    raise ImportError("this worker cannot start")


@pytest.fixture(scope="module")
def pool():
    p = KillablePool(hang_or_double, workers=2, timeout_s=LIMIT_S)
    p.map([0])  # start the workers outside the timed part
    yield p
    p.close()


def test_hung_task_is_killed_and_the_rest_scored(pool, rng_seed):
    import random

    values = [random.Random(rng_seed).randint(-1000, 1000) for _ in range(40)]
    before = dict(pool.stats)
    t0 = time.monotonic()
    out = pool.map(["hang", *values])
    wall = time.monotonic() - t0
    # The hung task returns at the limit (+ the kill); the other worker scores the rest
    # meanwhile (including tasks queued behind the hung one, which are re-sent).
    # 1.5 s of slack covers a loaded 2-core machine.
    assert out[0].timed_out and not out[0].ok and "limit" in out[0].error
    assert LIMIT_S <= out[0].seconds < LIMIT_S + 1.0
    assert wall < LIMIT_S + 1.5
    assert all(o.ok for o in out[1:]) and [o.value for o in out[1:]] == [2 * v for v in values]
    assert pool.stats["timeouts"] - before["timeouts"] == 1
    assert pool.stats["restarts"] - before["restarts"] == 1


def test_dead_worker_and_raising_task(pool):
    before = dict(pool.stats)
    out = pool.map([*range(10), "die", "raise", *range(10, 20)])
    died, raised = out[10], out[11]
    assert not died.ok and "died" in died.error and "exit code 3" in died.error
    assert not raised.ok and "KeyError" in raised.error and not raised.timed_out
    rest = out[:10] + out[12:]
    assert all(o.ok for o in rest) and [o.value for o in rest] == [2 * i for i in range(20)]
    assert pool.stats["worker_deaths"] - before["worker_deaths"] == 1
    assert pool.stats["restarts"] - before["restarts"] == 1


def test_pool_keeps_working_after_kills(pool):
    out = pool.map(list(range(10)))
    assert [o.value for o in out] == [2 * i for i in range(10)]
    assert len(pool._workers) == 2 and all(w.proc.poll() is None for w in pool._workers)


def test_two_hangs_on_two_workers_are_killed_in_parallel(pool):
    pool.map([1, 2])  # both workers up
    t0 = time.monotonic()
    out = pool.map(["hang", "hang"])
    wall = time.monotonic() - t0
    assert [o.timed_out for o in out] == [True, True]
    # In parallel: about one limit. One after the other would take two limits plus a
    # worker restart (> 2 s).
    assert wall < 2 * LIMIT_S - 0.1
    assert pool.map([5])[0].value == 10


def test_close_stops_every_worker_and_refuses_new_work():
    p = KillablePool(hang_or_double, workers=2, timeout_s=LIMIT_S)
    p.map([1, 2])
    procs = [w.proc for w in p._workers]
    p.close()
    p.close()  # idempotent
    assert all(pr.poll() is not None for pr in procs)
    with pytest.raises(RuntimeError, match="closed"):
        p.map([1])


def test_worker_start_failure_is_a_clear_error():
    p = KillablePool(hang_or_double, workers=1, timeout_s=LIMIT_S, init=failing_init)
    try:
        with pytest.raises(RuntimeError, match="died while starting"):
            p.map([1])
    finally:
        p.close()


@pytest.mark.parametrize("kwargs", [{"workers": 0}, {"timeout_s": 0}, {"timeout_s": -1}])
def test_bad_pool_arguments(kwargs):
    with pytest.raises(ValueError):
        KillablePool(hang_or_double, **kwargs)


def test_unpicklable_item_fails_alone(pool):
    out = pool.map([1, lambda: 0, 2, 3])
    assert [o.ok for o in out] == [True, False, True, True]
    assert "could not send the task" in out[1].error and [out[0].value, out[2].value, out[3].value] == [2, 4, 6]


def test_main_module_functions_are_refused():
    def local():
        pass

    local.__module__ = "__main__"
    with pytest.raises(ValueError, match="__main__"):
        KillablePool(local)
