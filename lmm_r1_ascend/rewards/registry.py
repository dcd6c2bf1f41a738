"""One registry of reward functions by name, and per-sample routing by ``datasource``.

Specs: ``math`` (format + math-verify accuracy), ``sokoban``, ``custom:PATH.py`` (a
Python file with ``reward_func``), ``http://...`` / ``https://...`` (an endpoint).
``build_reward(spec, **options)`` makes one; options go to its constructor (e.g.
``format_weight``, ``timeout_s``, ``workers`` for math; ``on_error`` for custom files
and endpoints; ``timeout_s``, ``retries`` for endpoints).

``RewardRouter(default, routes)`` scores a mixed batch: each sample goes to the reward
of the first route whose pattern (``fnmatch``, e.g. ``"sokoban*"``) matches its
datasource, else to ``default``; each reward sees its samples as one batch; outputs
come back in input order. ``counts()`` sums the statuses of all rewards.
"""

from __future__ import annotations

from collections import Counter
from fnmatch import fnmatchcase
from typing import Any, Callable, Mapping, Sequence

from lmm_r1_ascend.rewards.custom import HttpReward, PythonFileReward
from lmm_r1_ascend.rewards.math_reward import MathReward
from lmm_r1_ascend.rewards.sokoban import SokobanReward
from lmm_r1_ascend.rewards.types import RewardFunction, RewardInput, RewardOutput

BUILDERS: dict[str, Callable[..., RewardFunction]] = {
    "math": MathReward,
    "sokoban": SokobanReward,
}


def register_reward(name: str, builder: Callable[..., RewardFunction]) -> None:
    """Add a named reward (a class or factory taking keyword options)."""
    if not name or ":" in name or name.startswith("http"):
        raise ValueError(f"reward name {name!r} is reserved or empty")
    BUILDERS[name] = builder


def build_reward(spec: str, **options: Any) -> RewardFunction:
    """A reward function from its spec (see the module docstring)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"a reward spec is a non-empty string, got {spec!r}")
    if spec.startswith(("http://", "https://")):
        return HttpReward(spec, **options)
    if spec.startswith("custom:"):
        return PythonFileReward(spec[len("custom:"):], **options)
    if spec.endswith(".py"):
        return PythonFileReward(spec, **options)
    if spec not in BUILDERS:
        raise ValueError(
            f"unknown reward {spec!r}: use one of {sorted(BUILDERS)}, custom:PATH.py or an http(s):// URL"
        )
    try:
        return BUILDERS[spec](**options)
    except TypeError as e:
        raise ValueError(f"bad options for reward {spec!r}: {e}") from e


class RewardRouter:
    """Scores a batch whose samples may need different rewards (see module docstring).

    default: spec or reward function for unrouted samples.
    routes: datasource pattern -> spec or reward function.
    options: spec -> constructor options, used when a spec is built here.
    """

    def __init__(self, default: str | RewardFunction = "math",
                 routes: Mapping[str, str | RewardFunction] | None = None,
                 options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self._options = {k: dict(v) for k, v in (options or {}).items()}
        self._built: dict[str, RewardFunction] = {}
        self.default = self._resolve(default)
        self.routes = [(pattern, self._resolve(r)) for pattern, r in (routes or {}).items()]

    def _resolve(self, r: str | RewardFunction) -> RewardFunction:
        if not isinstance(r, str):
            return r
        if r not in self._built:
            key = "custom" if r.startswith("custom:") or r.endswith(".py") else (
                "http" if r.startswith(("http://", "https://")) else r)
            self._built[r] = build_reward(r, **self._options.get(r, self._options.get(key, {})))
        return self._built[r]

    def reward_for(self, datasource: str | None) -> RewardFunction:
        if datasource is not None:
            for pattern, fn in self.routes:
                if fnmatchcase(str(datasource), pattern):
                    return fn
        return self.default

    def __call__(self, samples: Sequence[RewardInput]) -> list[RewardOutput]:
        groups: dict[int, tuple[RewardFunction, list[int]]] = {}
        for i, s in enumerate(samples):
            fn = self.reward_for(s.datasource)
            groups.setdefault(id(fn), (fn, []))[1].append(i)
        outs: list[RewardOutput | None] = [None] * len(samples)
        for fn, idx in groups.values():
            res = fn([samples[i] for i in idx])
            if len(res) != len(idx):
                raise RuntimeError(f"reward {getattr(fn, 'name', fn)!r} returned {len(res)} outputs for {len(idx)} samples")
            for i, r in zip(idx, res):
                outs[i] = r
        return outs  # type: ignore[return-value]

    def _all(self) -> list[RewardFunction]:
        seen, out = set(), []
        for fn in [self.default, *(fn for _, fn in self.routes)]:
            if id(fn) not in seen:
                seen.add(id(fn))
                out.append(fn)
        return out

    def counts(self) -> dict[str, int]:
        """Statuses so far, e.g. {"math/correct": 12, "math/timeout": 1, "sokoban/solved": 3}."""
        total: Counter[str] = Counter()
        for fn in self._all():
            name = getattr(fn, "name", type(fn).__name__)
            for status, n in getattr(fn, "counts", {}).items():
                total[f"{name}/{status}"] += n
        return dict(total)

    def close(self) -> None:
        for fn in self._all():
            fn.close()

    def __enter__(self) -> "RewardRouter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
