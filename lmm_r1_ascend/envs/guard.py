"""GuardedEnv: an Environment wrapper that turns bad environment behaviour into one clear
line and a counted, terminal sample, never a crash or a lost sample (issue 34).

    env = GuardedEnv(make_env("sokoban"), timeout_s=10, max_images=1, max_image_pixels=512 * 512)
    obs = env.reset(seed, task)   # EnvError (one line, .kind) when reset goes wrong
    result = env.step(text)       # a bad step: StepResult(done=True, reward=0.0,
                                  #   info={"env_error": "<one line>", "env_error_kind": kind})
    error_metrics(env.error_counts)  # {"env/errors/<kind>": n}

What counts as bad (the error kinds):
- ``exception``: reset or step raised (an env that builds a malformed StepResult or
  Observation raises TypeError / ValueError from their checks, and lands here too);
- ``bad_type``: reset did not return an Observation, or step not a StepResult (e.g. a
  gym-style tuple);
- ``too_many_images``: an observation with more than ``max_images`` images;
- ``huge_image``: an image with more than ``max_image_pixels`` pixels (width x height);
- ``timeout``: reset or step did not return within ``timeout_s`` seconds;
- ``abandoned``: any call on an env that timed out before (see below).

Reset failures raise ``EnvError`` (one line; ``kind`` is one of the above) and are
counted: there is no episode yet, so there is no StepResult to end. The rollout turns
the EnvError into a failed sample (reward 0, its kind on the sample), so the sample is not lost.

Hangs. Each reset / step runs in a fresh daemon *thread*, and the caller waits at most
``timeout_s`` for it. A thread rather than a process because environments hold state
that cannot cross a process boundary cheaply or at all (a C++ game engine, an open
simulator, PIL images each turn), and the wrapped env must keep that state between
calls. The price: a Python thread cannot be killed. A call that passes ``timeout_s``
is left running in the background (a daemon thread, so it never blocks interpreter
exit; it keeps whatever CPU it spins on until it returns or the process ends); the
env is abandoned: every later call on it returns the error at once without touching
the env, and ``close`` does not call the inner env's ``close`` (the hung call may still
be inside it). Build a new env for the next episode. Environments that can hang in C
code holding the GIL cannot be bounded this way; run those in their own process.

Counts. ``error_counts`` (a Counter of kind -> n) is per GuardedEnv. The trainer counts
errors from the samples instead (each carries its episode's error kind, wherever it was
played: rollout/multi_turn.py ``env_error_metrics``); ``error_metrics(counts)`` names
them ``env/errors/<kind>``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from lmm_r1_ascend.envs.base import Environment, Observation, StepResult

ERROR_KINDS = ("exception", "bad_type", "too_many_images", "huge_image", "timeout", "abandoned")
_MAX_LINE = 300


class EnvError(RuntimeError):
    """A guarded environment failed to reset; ``kind`` is one of ERROR_KINDS, str() is one line."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def one_line(text: str, limit: int = _MAX_LINE) -> str:
    """``text`` on one line (whitespace runs become one space), cut to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def error_metrics(counts: Mapping[str, int], prefix: str = "env/errors/") -> dict[str, float]:
    """``{"env/errors/<kind>": n}`` for every kind in ``counts`` (the trainer's metric names)."""
    return {f"{prefix}{kind}": float(n) for kind, n in sorted(counts.items())}


class _Failure(Exception):
    """Internal: a checked failure of one call (kind, one-line message)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message


class GuardedEnv(Environment):
    """Wrap ``env`` (see the module docstring).

    timeout_s: the longest one reset / step may take (> 0).
    max_images: most images one observation may carry (>= 0).
    max_image_pixels: most pixels (width x height) one image may have (>= 1).
    """

    name = "guarded"

    def __init__(self, env: Environment, *, timeout_s: float, max_images: int, max_image_pixels: int) -> None:
        if not isinstance(env, Environment):
            raise TypeError(f"GuardedEnv wraps an Environment, got {type(env).__name__}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ValueError(f"GuardedEnv: timeout_s must be a number > 0, got {timeout_s!r}")
        for key, v, lo in (("max_images", max_images, 0), ("max_image_pixels", max_image_pixels, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"GuardedEnv: {key} must be an int >= {lo}, got {v!r}")
        self.inner = env
        self.env_name = getattr(type(env), "name", None) or type(env).__name__
        self.timeout_s, self.max_images, self.max_image_pixels = float(timeout_s), max_images, max_image_pixels
        self.error_counts: Counter[str] = Counter()
        self.abandoned: str | None = None  # the timeout message, once a call hung

    # -- the guarded calls ---------------------------------------------------------------
    def reset(self, seed: int, task: Mapping[str, Any]) -> Observation:
        try:
            obs = self._call("reset", self.inner.reset, seed, task)
            if not isinstance(obs, Observation):
                raise _Failure("bad_type", f"{self.env_name}.reset returned a {type(obs).__name__}, "
                                           "expected an Observation")
            self._check_images(obs, "reset")
        except _Failure as f:
            self._count(f.kind)
            raise EnvError(f.kind, f.message) from None
        return obs

    def step(self, action_text: str) -> StepResult:
        try:
            result = self._call("step", self.inner.step, action_text)
            if not isinstance(result, StepResult):
                raise _Failure("bad_type", f"{self.env_name}.step returned a {type(result).__name__}, "
                                           "expected a StepResult")
            self._check_images(result.observation, "step")
        except _Failure as f:
            self._count(f.kind)
            return StepResult(Observation(text=f"environment error: {f.message}"), 0.0, True,
                              {"env_error": f.message, "env_error_kind": f.kind})
        return result

    def close(self) -> None:
        """Close the inner env, unless it was abandoned (a hung call may still be inside it).
        A failing close is counted as ``exception`` and not raised: the episode is over."""
        if self.abandoned is not None:
            return
        try:
            self._call("close", self.inner.close)
        except _Failure as f:
            self._count(f.kind)

    # -- helpers -------------------------------------------------------------------------
    def _count(self, kind: str) -> None:
        self.error_counts[kind] += 1

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on a daemon thread, waiting at most timeout_s; _Failure on error / hang."""
        if self.abandoned is not None:
            raise _Failure("abandoned", f"{self.env_name} was abandoned after an earlier hang ({self.abandoned})")
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn(*args)
            except BaseException as e:  # noqa: BLE001 - everything the env throws becomes one line
                box["error"] = e

        worker = threading.Thread(target=run, name=f"env-{self.env_name}-{what}", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            msg = f"{self.env_name}.{what} did not return within {self.timeout_s:g} s"
            self.abandoned = msg
            raise _Failure("timeout", msg)
        if "error" in box:
            e = box["error"]
            raise _Failure("exception", one_line(f"{self.env_name}.{what} raised {type(e).__name__}: {e}"))
        return box.get("value")

    def _check_images(self, obs: Observation, what: str) -> None:
        if len(obs.images) > self.max_images:
            raise _Failure("too_many_images", f"{self.env_name}.{what} returned {len(obs.images)} images; "
                                              f"at most {self.max_images} are allowed per observation")
        for i, im in enumerate(obs.images):
            if im.width * im.height > self.max_image_pixels:
                raise _Failure("huge_image", f"{self.env_name}.{what} returned image {i} of {im.width}x{im.height} "
                                             f"= {im.width * im.height} pixels; at most {self.max_image_pixels} "
                                             "are allowed (downscale it in the env)")
