"""A process pool whose tasks have a hard wall-clock limit.

Why not ``concurrent.futures.ProcessPoolExecutor``: it cannot stop one task. A worker
stuck in C code that never returns to the interpreter (so no signal handler runs, and
math-verify's ``signal.alarm`` timeout never fires) would hold its slot forever, and
killing it breaks the whole executor. Here every worker is a process of its own with a
socket; a task that runs past ``timeout_s`` gets its worker SIGKILLed and replaced,
the task is reported as timed out, and the other workers carry on.

Workers are fresh interpreters (``python -c``), not forks: nothing of the caller's
state (threads, a CUDA/NPU context, the main module) is copied or re-imported, so a
script needs no ``if __name__ == "__main__"`` guard. A worker imports only the task
function's module (the function must be importable: defined in a module, not in
``__main__``). The task runs in the worker's main thread, so signal-based timeouts
inside it (math-verify's) work. On Linux a worker is also killed when the thread that
started it ends (PR_SET_PDEATHSIG), so a hung worker never outlives a crashed trainer;
create the pool from a long-lived thread (a worker found dead is simply replaced).
The pool is not thread-safe: one ``map`` at a time (a lock enforces it).
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence

# The directory holding the lmm_r1_ascend package goes first on the worker's path only
# until it receives the parent's sys.path (the parent may have found us via sys.path edits).
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = ("import sys; sys.path.insert(0, sys.argv[2]); "
         "from lmm_r1_ascend.rewards.pool_worker import serve; serve(int(sys.argv[1]))")


@dataclass
class TaskOutcome:
    """Result of one task. ``ok`` with ``value``, or not ok with ``error`` (and
    ``timed_out`` when the hard limit killed the worker). ``seconds``: wall time."""

    ok: bool
    value: Any = None
    error: str | None = None
    timed_out: bool = False
    seconds: float = 0.0


class _Worker:
    def __init__(self, payload: bytes) -> None:
        parent, child = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(child.fileno()), _PACKAGE_PARENT], pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL, close_fds=True,
        )
        child.close()
        self.conn = Connection(parent.detach())
        self.conn.send((list(sys.path), payload))
        self.started_at = time.monotonic()
        self.ready = False
        self.queue: deque[int] = deque()  # indices (into the current map's items) sent, not done
        self.deadline = self.started_task_at = 0.0  # of queue[0], the item being worked on

    def exit_code(self) -> int | None:
        try:
            return self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.conn.close()


def _shutdown(workers: list[_Worker]) -> None:
    for w in workers:
        try:
            w.conn.send(None)
        except (OSError, ValueError):
            pass
    for w in workers:
        try:
            w.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        w.kill()
    workers.clear()


class KillablePool:
    """Run ``fn(item)`` for many items in ``workers`` processes, each task limited to
    ``timeout_s`` seconds of wall time counted from when a worker picks it up.

    fn, init: picklable, importable callables; ``init()`` runs once per worker before
        it takes tasks (imports, warm-up); that time does not count against tasks.
    startup_timeout_s: a worker not ready by then is an error.
    max_chunk: most tasks sent to a worker in one message (each still has its own
        limit, counted from when the worker starts it).
    stats: tasks, timeouts (kills at the limit), worker_deaths, restarts.
    """

    def __init__(self, fn: Callable[[Any], Any], *, workers: int = 2, timeout_s: float = 10.0,
                 init: Callable[[], None] | None = None, startup_timeout_s: float = 120.0,
                 max_chunk: int = 16) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        for f in (fn, init):
            if f is not None and getattr(f, "__module__", None) == "__main__":
                raise ValueError(f"{f.__qualname__} is defined in __main__; workers can only import "
                                 "functions defined in a module")
        try:
            self._payload = pickle.dumps((fn, init))
        except Exception as e:
            raise ValueError(f"the task function must be picklable by reference: {e}") from e
        self.n_workers, self.timeout_s, self.startup_timeout_s = workers, float(timeout_s), startup_timeout_s
        self.max_chunk = max(1, int(max_chunk))
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self.stats = {"tasks": 0, "timeouts": 0, "worker_deaths": 0, "restarts": 0}
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        """Start missing workers (``map`` does this on demand)."""
        if self._closed:
            raise RuntimeError("this KillablePool is closed; create a new one")
        while len(self._workers) < self.n_workers:
            self._workers.append(_Worker(self._payload))

    def close(self) -> None:
        """Stop all workers (politely, then SIGKILL after 1 s). Idempotent."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> "KillablePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers.remove(w)
        self._workers.append(_Worker(self._payload))
        self.stats["restarts"] += 1

    # -- work ------------------------------------------------------------------
    def map(self, items: Sequence[Any]) -> list[TaskOutcome]:
        """Outcomes in the order of ``items``. Never raises for a task's failure."""
        with self._lock:
            self.start()
            try:
                return self._run(list(items))
            except BaseException:  # start-up failure, Ctrl-C: leave no half-done worker
                _shutdown(self._workers)
                raise

    def _chunk(self, n_todo: int) -> int:
        # Several small tasks per message save round trips (a loaded machine makes each
        # one slow); small batches still spread over all workers.
        return max(1, min(self.max_chunk, n_todo // (4 * self.n_workers)))

    def _run(self, items: list[Any]) -> list[TaskOutcome]:
        out: list[TaskOutcome | None] = [None] * len(items)
        todo = deque(range(len(items)))
        self.stats["tasks"] += len(items)
        remaining = len(items)
        while remaining:
            for w in list(self._workers):
                if not (w.ready and not w.queue and todo):
                    continue
                chunk = [todo.popleft() for _ in range(min(self._chunk(len(todo)), len(todo)))]
                try:
                    w.conn.send([(i, items[i]) for i in chunk])
                except (OSError, EOFError):  # the worker just died: the tasks go elsewhere
                    todo.extendleft(reversed(chunk))
                    self.stats["worker_deaths"] += 1
                    self._replace(w)
                    continue
                except Exception:  # an unpicklable item: fail it, send the others again
                    todo.extendleft(reversed(chunk))
                    remaining -= self._drop_unpicklable(items, todo, out)
                    continue
                w.queue.extend(chunk)
                w.started_task_at = time.monotonic()
                w.deadline = w.started_task_at + self.timeout_s
            if not remaining:
                break
            now = time.monotonic()
            deadlines = [w.deadline if w.ready else w.started_at + self.startup_timeout_s
                         for w in self._workers if w.queue or not w.ready]
            ready = wait([w.conn for w in self._workers], timeout=max(0.0, min(deadlines, default=now) - now))
            remaining -= self._collect(ready, out, todo)
            remaining -= self._enforce_deadlines(out, todo)
        return out  # type: ignore[return-value]

    @staticmethod
    def _drop_unpicklable(items: list[Any], todo: deque, out: list) -> int:
        dropped = 0
        for i in list(todo):
            try:
                pickle.dumps(items[i])
            except Exception as e:
                out[i] = TaskOutcome(False, error=f"could not send the task: {type(e).__name__}: {e}")
                todo.remove(i)
                dropped += 1
        return dropped

    def _collect(self, ready: list, out: list, todo: deque) -> int:
        done = 0
        for w in [w for w in self._workers if w.conn in ready]:
            while True:  # drain every reply already there
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    done += self._on_death(w, out, todo)
                    break
                if not w.ready:
                    w.ready = msg[0] == "ready"
                elif w.queue and msg[0] == w.queue[0]:
                    task_id, ok, value, err = msg
                    now = time.monotonic()
                    out[task_id] = TaskOutcome(ok, value if ok else None, err, seconds=now - w.started_task_at)
                    done += 1
                    w.queue.popleft()
                    w.started_task_at, w.deadline = now, now + self.timeout_s  # the next item starts
                if not w.conn.poll():
                    break
        return done

    def _on_death(self, w: _Worker, out: list, todo: deque) -> int:
        code = w.exit_code()
        self.stats["worker_deaths"] += 1
        if not w.ready:
            self._replace(w)
            raise RuntimeError(f"a reward worker died while starting (exit code {code}); see its traceback "
                               "above (stderr)") from None
        done = 0
        if w.queue:  # the item it was on is to blame; the rest of its chunk is re-run
            i = w.queue.popleft()
            out[i] = TaskOutcome(False, error=f"worker process died (exit code {code}) on this task",
                                 seconds=time.monotonic() - w.started_task_at)
            done = 1
        todo.extendleft(reversed(w.queue))
        self._replace(w)
        return done

    def _enforce_deadlines(self, out: list, todo: deque) -> int:
        done, now = 0, time.monotonic()
        for w in list(self._workers):
            if w.ready and w.queue and now >= w.deadline:
                i = w.queue.popleft()
                out[i] = TaskOutcome(False, error=f"killed after the {self.timeout_s:g} s limit",
                                     timed_out=True, seconds=now - w.started_task_at)
                self.stats["timeouts"] += 1
                done += 1
                todo.extendleft(reversed(w.queue))  # the rest of its chunk goes to other workers
                self._replace(w)
            elif not w.ready and now >= w.started_at + self.startup_timeout_s:
                raise RuntimeError(f"a reward worker was not ready after {self.startup_timeout_s:g} s; "
                                   "is the machine overloaded?")
        return done
