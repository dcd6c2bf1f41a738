"""The worker side of ``pool.KillablePool``: a fresh interpreter started with
``python -c``, talking to the pool over one socket (``multiprocessing.connection``
framing and pickling). Kept apart so that a worker imports nothing but this module and
the task function's module.
"""

from __future__ import annotations

import os
import pickle
import sys
from multiprocessing.connection import Connection


def _die_with_parent() -> None:
    try:  # Linux: SIGKILL this worker when the thread that started it ends
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:
        pass


def serve(fd: int) -> None:
    """Worker main loop on the socket ``fd``: receive (sys.path, pickled (fn, init)),
    run init, say ready, then answer every (task_id, item) of each chunk in order."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent()
    os.dup2(2, 1)  # a chatty task must not write into the caller's stdout (JSON output)
    sys.stdout = sys.stderr
    conn = Connection(fd)
    sys_path, fn_bytes = conn.recv()
    sys.path[:] = sys_path
    fn, init = pickle.loads(fn_bytes)
    if init is not None:
        init()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        for task_id, item in msg:  # a chunk; one reply per item, sent as soon as it is done
            try:
                reply = (task_id, True, fn(item), None)
            except BaseException as e:  # noqa: BLE001 - report everything, keep serving
                reply = (task_id, False, None, f"{type(e).__name__}: {str(e)[:300]}")
            try:
                conn.send(reply)
            except Exception as e:  # unpicklable result
                conn.send((task_id, False, None, f"result could not be sent back: {type(e).__name__}: {e}"))
