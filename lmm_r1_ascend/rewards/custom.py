"""Custom rewards: a Python file exposing ``reward_func(queries, prompts, labels)``, or an
HTTP endpoint taking ``{"query", "prompts", "labels"}`` and returning ``{"rewards"}``.

Failures are never a silent 0. With ``on_error="raise"`` (default) they raise
``RewardError`` naming the file or URL and, for a Python file, the failing sample
(index and an excerpt of its query); with ``on_error="zero"`` the affected samples
score 0 with status ``error`` and are counted in ``counts``.

``queries`` are the full decoded texts (prompt + response), ``prompts`` the prompts,
``labels`` the labels, one per sample, in order. ``reward_func`` may return a list,
tuple, numpy array or tensor of numbers, or a dict with such a ``"rewards"`` entry.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import random
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from lmm_r1_ascend.rewards.types import RewardError, RewardInput, RewardOutput, short

_ON_ERROR = ("raise", "zero")


def _check_on_error(on_error: str) -> str:
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error must be one of {_ON_ERROR}, got {on_error!r}")
    return on_error


def _columns(samples: Sequence[RewardInput]) -> tuple[list, list, list]:
    queries = [s.query or f"{s.prompt}{s.response}" for s in samples]
    return queries, [s.prompt for s in samples], [s.label for s in samples]


def check_rewards(raw: Any, n: int, where: str) -> list[float | str]:
    """One entry per sample: a finite float, or a message saying what is wrong with that
    sample's value. ValueError naming ``where`` for problems of the whole reply."""
    if isinstance(raw, dict):
        if "rewards" not in raw:
            raise ValueError(f"{where} returned a dict without a 'rewards' entry (keys: {sorted(raw)[:10]})")
        raw = raw["rewards"]
    if hasattr(raw, "tolist"):  # numpy arrays, torch tensors
        raw = raw.tolist()
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"{where} must return a list of {n} numbers, got {type(raw).__name__}")
    if len(raw) != n:
        raise ValueError(f"{where} returned {len(raw)} rewards for {n} samples")
    out: list[float | str] = []
    for i, v in enumerate(raw):
        if hasattr(v, "item") and not isinstance(v, (list, tuple)):  # numpy / torch scalars
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            out.append(f"{where} returned a {type(v).__name__} for sample {i}; rewards must be numbers")
        elif not math.isfinite(v):
            out.append(f"{where} returned a non-finite reward {v} for sample {i}")
        else:
            out.append(float(v))
    return out


def _outputs(values: list[float | str], on_error: str, counts: Counter) -> list[RewardOutput]:
    """RewardOutputs from checked values; per-sample problems raise or score 0 (counted)."""
    bad = [v for v in values if isinstance(v, str)]
    if bad and on_error == "raise":
        raise RewardError(bad[0] + (f" ({len(bad) - 1} more bad values)" if len(bad) > 1 else ""))
    outs = []
    for v in values:
        if isinstance(v, str):
            counts["error"] += 1
            outs.append(RewardOutput(total=0.0, components={"reward": 0.0}, status="error", detail=v))
        else:
            counts["ok"] += 1
            outs.append(RewardOutput(total=v, components={"reward": v}))
    return outs


def _all_failed(n: int, msg: str, counts: Counter) -> list[RewardOutput]:
    counts["error"] += n
    return [RewardOutput(total=0.0, components={"reward": 0.0}, status="error", detail=msg) for _ in range(n)]


def load_reward_file(path: str | Path) -> Callable:
    """Import ``path`` and return its ``reward_func``; ValueError naming the file."""
    p = Path(path).expanduser().resolve()
    if not p.is_file() or p.suffix != ".py":
        raise ValueError(f"custom reward file not found or not a .py file: {p}")
    name = "lmm_r1_custom_reward_" + hashlib.sha1(str(p).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, p)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise ValueError(f"custom reward file {p} failed to import: {type(e).__name__}: {e}") from e
    fn = getattr(module, "reward_func", None)
    if not callable(fn):
        raise ValueError(f"custom reward file {p} must define reward_func(queries, prompts, labels)")
    return fn


def probe_endpoint(url: str, timeout_s: float = 10.0) -> int:
    """POST an empty batch to a reward endpoint: any HTTP reply (even an error status: it may refuse
    an empty batch) shows it answers; ValueError naming the URL when nothing does. Returns the status."""
    body = json.dumps({"query": [], "prompts": [], "labels": []}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, socket.timeout, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ValueError(f"reward endpoint {url} does not answer ({reason}); start it, or fix the URL") from None


class PythonFileReward:
    """Reward from ``reward_func`` in a Python file (see the module docstring)."""

    def __init__(self, path: str | Path, on_error: str = "raise") -> None:
        self.path = str(Path(path).expanduser().resolve())
        self.name = f"custom:{self.path}"
        self.on_error = _check_on_error(on_error)
        self.fn = load_reward_file(self.path)
        self.counts: Counter[str] = Counter()

    def close(self) -> None:
        pass

    def __call__(self, samples: Sequence[RewardInput]) -> list[RewardOutput]:
        if not samples:
            return []
        try:
            raw = self.fn(*_columns(samples))
        except Exception as batch_error:  # noqa: BLE001 - find the sample(s) to blame
            return self._per_sample(samples, batch_error)
        return self._checked(raw, len(samples))

    def _checked(self, raw: Any, n: int) -> list[RewardOutput]:
        try:
            values = check_rewards(raw, n, f"reward_func in {self.path}")
        except ValueError as e:
            if self.on_error == "raise":
                raise RewardError(str(e)) from None
            return _all_failed(n, str(e), self.counts)
        return _outputs(values, self.on_error, self.counts)

    def _per_sample(self, samples: Sequence[RewardInput], batch_error: Exception) -> list[RewardOutput]:
        """reward_func raised on the batch: call it per sample to name the culprit(s)."""
        failures: dict[int, str] = {}
        raws: dict[int, Any] = {}
        for i, s in enumerate(samples):
            try:
                raws[i] = self.fn(*_columns([s]))
            except Exception as e:  # noqa: BLE001
                failures[i] = (f"reward_func in {self.path} failed on sample {i} "
                               f"(query {short(_columns([s])[0][0], 80)!r}): {type(e).__name__}: {e}")
        if not failures:  # only the whole batch fails: nothing to pin on one sample
            msg = (f"reward_func in {self.path} failed on the batch of {len(samples)} samples "
                   f"(but on no single sample): {type(batch_error).__name__}: {batch_error}")
            if self.on_error == "raise":
                raise RewardError(msg) from batch_error
            return _all_failed(len(samples), msg, self.counts)
        if self.on_error == "raise":
            first = min(failures)
            more = f" ({len(failures) - 1} more samples failed)" if len(failures) > 1 else ""
            raise RewardError(failures[first] + more) from batch_error
        outs = []
        for i in range(len(samples)):
            if i in failures:
                outs.extend(_all_failed(1, failures[i], self.counts))
            else:
                outs.extend(self._checked(raws[i], 1))
        return outs


class HttpReward:
    """Reward from an HTTP endpoint: POST ``{"query", "prompts", "labels"}`` as JSON,
    expect ``{"rewards": [...]}``.

    timeout_s: per request. retries: extra attempts after the first, for connection
    errors, timeouts, HTTP 429 and 5xx, waiting backoff_s * 2**k (capped at
    max_backoff_s, +-10% jitter). Other HTTP errors and malformed replies fail at once.
    sleep: injectable for tests.
    """

    def __init__(self, url: str, *, timeout_s: float = 30.0, retries: int = 3, backoff_s: float = 0.5,
                 max_backoff_s: float = 8.0, on_error: str = "raise", headers: dict | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"reward endpoint must be an http(s) URL, got {url!r}")
        if retries < 0 or timeout_s <= 0:
            raise ValueError(f"need retries >= 0 and timeout_s > 0, got {retries}, {timeout_s}")
        self.url, self.name = url, url
        self.timeout_s, self.retries, self.backoff_s, self.max_backoff_s = timeout_s, retries, backoff_s, max_backoff_s
        self.on_error = _check_on_error(on_error)
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.sleep = sleep
        self.counts: Counter[str] = Counter()

    def close(self) -> None:
        pass

    def _post(self, body: bytes) -> Any:
        req = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            raw = resp.read()
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"reward endpoint {self.url} replied with invalid JSON: {short(raw, 100)}") from e

    def request(self, samples: Sequence[RewardInput]) -> list[float | str]:
        """Checked rewards (see ``check_rewards``), or RewardError naming the URL."""
        q, p, lab = _columns(samples)
        try:
            body = json.dumps({"query": q, "prompts": p, "labels": lab}).encode()
        except (TypeError, ValueError) as e:
            raise RewardError(f"cannot send the batch to {self.url}: labels are not JSON-serialisable ({e})") from e
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                self.sleep(delay * random.uniform(0.9, 1.1))
            try:
                return check_rewards(self._post(body), len(samples), f"reward endpoint {self.url}")
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} {e.reason}: {short(e.read().decode('utf-8', 'replace'), 200)}"
                if e.code != 429 and e.code < 500:
                    break
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
                reason = getattr(e, "reason", e)
                last = f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
            except ValueError as e:  # bad reply: a server bug, retrying will not help
                raise RewardError(str(e)) from e
        raise RewardError(f"reward endpoint {self.url} failed after {attempt + 1} attempt(s): {last}")

    def __call__(self, samples: Sequence[RewardInput]) -> list[RewardOutput]:
        if not samples:
            return []
        try:
            values = self.request(samples)
        except RewardError as e:
            if self.on_error == "raise":
                raise
            return _all_failed(len(samples), str(e), self.counts)
        return _outputs(values, self.on_error, self.counts)
