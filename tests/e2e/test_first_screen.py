"""What a new user sees: the demo in a real terminal (a pty of 100 x 25) shows a header that
fits on the first screen and names the backend and the output directory, no library progress
bars, the trainer's bar, and a summary that says where everything is. One step, so it is quick."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import struct
import sys
import tempfile
import termios
import time

ROWS, COLS = 25, 100
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _run_in_pty(args: list[str], timeout: float = 600) -> tuple[int, str]:
    """Run `python -m lmm_r1_ascend.train ARGS` with a pty as its terminal; (exit status, output)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: a 25-row terminal, as a small window would be; never back into pytest
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
            env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "LMM_R1_PROGRESS")}
            env.update(COLUMNS=str(COLS), LINES=str(ROWS), TERM="xterm")
            os.execvpe(sys.executable, [sys.executable, "-m", "lmm_r1_ascend.train", *args], env)
        finally:
            os._exit(127)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if time.monotonic() >= deadline:
            os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode("utf-8", "replace")


def _screen_lines(raw: str) -> list[str]:
    """The lines as a terminal leaves them: escape codes dropped, each line's last carriage-return
    segment kept (a progress bar redraws itself in place)."""
    text = ANSI.sub("", raw).replace("\r\n", "\n")
    return [line.split("\r")[-1] for line in text.split("\n")]


def test_demo_first_screen_in_a_terminal():
    # A short output path, as a user's outputs/demo_fre is: pytest's tmp_path grows with its run
    # counter (pytest-of-root/pytest-1000/...) and the header names the path twice, so the line's
    # length would measure the test machine's history rather than the header.
    base = tempfile.mkdtemp(prefix="fs-", dir="/tmp")
    try:
        _check_first_screen(os.path.join(base, "demo"))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _check_first_screen(out: str) -> None:
    code, raw = _run_in_pty(["trainer.max_steps=1", f"output_dir={out}", "eval.limit=4", "eval.n_samples=2"])
    lines = _screen_lines(raw)
    assert code == 0, raw[-3000:]
    # the library bars ("Loading weights", "Writing model shards") stay quiet: the trainer's bar owns the screen
    assert "Loading weights" not in raw and "Writing model shards" not in raw, raw[:3000]
    assert "resolved config" not in raw and '"trainer": {' not in raw  # no config dump
    start = next(i for i, line in enumerate(lines) if line.startswith("lmm-r1-ascend train: stage fre, recipe demo_fre"))
    end = next(i for i, line in enumerate(lines) if line.strip().startswith("output "))
    header = lines[start:end + 1]
    assert end < ROWS and len(header) <= ROWS, "\n".join(lines[:end + 1])  # on the first screen, from the top
    assert all(len(line) <= 2 * COLS for line in header)
    text = "\n".join(header)
    assert re.search(r"^\s+device\s+cpu .*kernels attention=\w+", text, re.M), text  # backend and kernels
    assert re.search(r"^\s+model\s+demo-fre .*parameters", text, re.M), text
    assert re.search(r"^\s+data\s+.*rows: \d+ kept", text, re.M), text
    assert str(out) in lines[end] and "config.yaml" in lines[end], lines[end]
    # then the held-out eval as one line, the trainer's bar (reward, accuracy, step time), the summary
    after = "\n".join(lines[end + 1:])
    assert re.search(r"held-out eval at step 0 \(4 prompts x 2\): accuracy", after), after
    assert re.search(r"1/1 .*reward [\d.]+ acc [\d.]+ step [\d.]+s held-out [\d.]+", after), after
    assert re.search(r"^done: 1 step \(to step 1\) in ", after, re.M), after
    for label in ("train", "held-out", "checkpoint", "HF model", "metrics", "plot", "evaluate"):
        assert re.search(rf"^\s+{label}\s", after, re.M), (label, after)
    assert f"python -m lmm_r1_ascend.plot {out}" in after
