"""GuardedEnv (envs/guard.py): every kind of bad environment output becomes one line, a
terminal StepResult (or an EnvError on reset) and a count; good output passes unchanged."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from PIL import Image

from lmm_r1_ascend.envs.base import Environment, Observation, StepResult
from lmm_r1_ascend.envs.guard import EnvError, GuardedEnv, error_metrics

TIMEOUT = 0.2


class Scripted(Environment):
    """reset / step do what the test put in ``reset_does`` / ``step_does`` (a callable)."""

    name = "scripted"

    def __init__(self, reset_does=None, step_does=None):
        self.reset_does = reset_does or (lambda: Observation(text="start"))
        self.step_does = step_does or (lambda text: StepResult(Observation(text=f"saw {text}"), 1.0, False, {}))
        self.closed = False

    def reset(self, seed, task):
        return self.reset_does()

    def step(self, action_text):
        return self.step_does(action_text)

    def close(self):
        self.closed = True


def guard(env, **kw):
    args = {"timeout_s": TIMEOUT, "max_images": 2, "max_image_pixels": 64 * 64, **kw}
    return GuardedEnv(env, **args)


def assert_terminal_error(result, kind, *fragments):
    assert isinstance(result, StepResult) and result.done is True and result.reward == 0.0
    line = result.info["env_error"]
    assert result.info["env_error_kind"] == kind
    assert "\n" not in line and len(line) <= 300
    for f in fragments:
        assert f in line, line
    assert result.observation.text.endswith(line)


def test_good_output_passes_through_unchanged():
    img = Image.new("RGB", (64, 64))
    env = guard(Scripted(lambda: Observation(text="s", images=(img, img))))
    obs = env.reset(0, {})
    assert obs.text == "s" and obs.images == (img, img)
    r = env.step("left")
    assert (r.observation.text, r.reward, r.done) == ("saw left", 1.0, False)
    env.close()
    assert env.inner.closed and not env.error_counts


def test_wrong_return_types():
    env = guard(Scripted(step_does=lambda text: (Observation(text="o"), 1.0, False, {})))  # gym-style tuple
    assert_terminal_error(env.step("x"), "bad_type", "scripted.step returned a tuple", "expected a StepResult")
    with pytest.raises(EnvError, match=r"scripted\.reset returned a dict, expected an Observation") as err:
        guard(Scripted(reset_does=lambda: {"text": "o"})).reset(0, {})
    assert err.value.kind == "bad_type"
    # a malformed StepResult is refused by its own checks inside the env: an exception, one line
    bad = guard(Scripted(step_does=lambda text: StepResult(Observation(text="o"), float("nan"), False)))
    assert_terminal_error(bad.step("x"), "exception", "TypeError", "finite")
    assert bad.error_counts == Counter({"exception": 1})


def test_huge_image_and_too_many_images():
    big = Image.new("RGB", (65, 64))  # 4160 pixels > 64 * 64
    env = guard(Scripted(step_does=lambda text: StepResult(Observation(images=(big,)), 0.5, False)))
    assert_terminal_error(env.step("x"), "huge_image", "image 0 of 65x64", "at most 4096")
    many = Image.new("RGB", (8, 8))
    env = guard(Scripted(reset_does=lambda: Observation(images=(many,) * 3)))
    with pytest.raises(EnvError, match="returned 3 images; at most 2") as err:
        env.reset(0, {})
    assert err.value.kind == "too_many_images" and env.error_counts == Counter({"too_many_images": 1})


def test_exception_in_reset_and_step_is_one_line():
    def boom(*_):
        raise ValueError("line one\nline two")

    env = guard(Scripted(reset_does=boom, step_does=boom))
    with pytest.raises(EnvError) as err:
        env.reset(0, {})
    assert err.value.kind == "exception" and "\n" not in str(err.value)
    assert "scripted.reset raised ValueError" in str(err.value) and "line one line two" in str(err.value)
    assert_terminal_error(env.step("x"), "exception", "scripted.step raised ValueError")
    assert env.error_counts == Counter({"exception": 2})
    # a crash inside the env never reaches the caller, even SystemExit
    env = guard(Scripted(step_does=lambda text: exec("raise SystemExit(3)")))
    assert_terminal_error(env.step("x"), "exception", "SystemExit")


def test_hang_past_timeout_abandons_the_env():
    release = threading.Event()
    calls = []

    def hang(text):
        calls.append(text)
        release.wait(5.0)
        return StepResult(Observation(text="late"), 1.0, False)

    env = guard(Scripted(step_does=hang))
    t0 = time.perf_counter()
    assert_terminal_error(env.step("a"), "timeout", "scripted.step did not return within 0.2 s")
    assert TIMEOUT <= time.perf_counter() - t0 < TIMEOUT + 1.0
    # abandoned: later calls answer at once and never reach the env; close leaves it alone
    t0 = time.perf_counter()
    assert_terminal_error(env.step("b"), "abandoned", "abandoned after an earlier hang")
    with pytest.raises(EnvError, match="abandoned") as err:
        env.reset(0, {})
    assert err.value.kind == "abandoned" and time.perf_counter() - t0 < 0.1
    env.close()
    release.set()
    assert calls == ["a"] and not env.inner.closed
    assert env.error_counts == Counter({"timeout": 1, "abandoned": 2})
    # a second env counts its own errors; error_metrics names the kinds of both
    other = guard(Scripted(step_does=lambda text: None))
    assert_terminal_error(other.step("x"), "bad_type", "returned a NoneType")
    assert other.error_counts == Counter({"bad_type": 1})
    assert error_metrics(env.error_counts + other.error_counts) == {"env/errors/abandoned": 2.0, "env/errors/bad_type": 1.0,
                                     "env/errors/timeout": 1.0}


def test_bad_guard_settings():
    with pytest.raises(ValueError, match="timeout_s must be a number > 0"):
        guard(Scripted(), timeout_s=0)
    with pytest.raises(ValueError, match="max_image_pixels must be an int >= 1"):
        guard(Scripted(), max_image_pixels=0)
    with pytest.raises(TypeError, match="wraps an Environment"):
        GuardedEnv(object(), timeout_s=1, max_images=1, max_image_pixels=1)
