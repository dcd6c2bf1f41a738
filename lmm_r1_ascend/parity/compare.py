"""Compare two parity results metric by metric and step by step.

A value pair (a from file A, the reference, e.g. a golden; b from file B) violates its
tolerance when

    |a - b| > atol + rtol * |a|

(numpy.isclose's asymmetric form: the tolerance scales with the reference). A value that is
NaN or infinite in either file is always a violation. Default tolerances:

- either file in bfloat16 (or float16): rtol 0.02, atol 0.01, MindSpeed-RL's NPU-vs-GPU
  acceptance per step (ASCEND.md, known pain point 5);
- both files in float32: rtol 1e-3, atol 1e-4. Two float32 backends differ only in kernel
  summation order: measured on CPU, the reference attention against the NPU path through
  the emulation differs by <= 2e-5 relative on losses and grad norms over 3 steps (6
  optimizer updates each) and by <= 2e-6 absolute on log-prob differences; 1e-3 / 1e-4
  leaves a 50x margin for other fp32 backends' orders while every planted attention bug
  moves some metric by more than 1e-2.

``--rtol`` / ``--atol`` replace the defaults for every metric; ``--metric-tol NAME=RTOL,ATOL``
sets one metric's (and wins over both).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmm_r1_ascend.parity.replay import RESULT_FORMAT

FP32_TOLERANCE = (1e-3, 1e-4)
LOW_PRECISION_TOLERANCE = (0.02, 0.01)
LOW_PRECISION_DTYPES = ("bfloat16", "float16")


class UnusableInput(ValueError):
    """The two files cannot be compared at all (exit status 2)."""


@dataclass(frozen=True)
class Row:
    metric: str
    step: int
    a: float
    b: float
    rtol: float
    atol: float

    @property
    def abs_diff(self) -> float:
        return abs(self.a - self.b)

    @property
    def rel_diff(self) -> float:
        return self.abs_diff / abs(self.a) if self.a != 0 else (0.0 if self.b == 0 else math.inf)

    @property
    def tolerance(self) -> float:
        return self.atol + self.rtol * abs(self.a)

    @property
    def ok(self) -> bool:
        if not (math.isfinite(self.a) and math.isfinite(self.b)):
            return False
        return self.abs_diff <= self.tolerance

    @property
    def severity(self) -> float:
        """abs diff / tolerance: > 1 is a violation; how the worst row per metric is chosen."""
        if not self.ok and not (math.isfinite(self.a) and math.isfinite(self.b)):
            return math.inf
        tol = self.tolerance
        return self.abs_diff / tol if tol > 0 else (math.inf if self.abs_diff > 0 else 0.0)


@dataclass
class Report:
    rows: list[Row]
    envs: tuple[dict, dict]
    names: tuple[str, str]
    defaults: tuple[float, float]
    worst: dict[str, Row] = field(default_factory=dict)

    @property
    def violations(self) -> list[Row]:
        return [r for r in self.rows if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.violations


def load_result(path: str | Path) -> dict[str, Any]:
    """Read a parity result JSON; UnusableInput with a one-line reason when it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise UnusableInput(f"parity result not found: {path} (produce it with "
                            "`python -m lmm_r1_ascend.parity run --device DEV --out FILE.json`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnusableInput(f"{path} is not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != RESULT_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise UnusableInput(f"{path} is not a parity result of format {RESULT_FORMAT!r} (found {found!r})")
    for key in ("rollout", "environment", "metrics", "steps"):
        if key not in data:
            raise UnusableInput(f"{path} has no '{key}' section: re-run `parity run` to produce it")
    if not isinstance(data["steps"], list) or not data["steps"]:
        raise UnusableInput(f"{path} records no steps")
    for k, step in enumerate(data["steps"]):
        missing = [m for m in data["metrics"] if not isinstance(step.get(m), (int, float))]
        if missing:
            raise UnusableInput(f"{path}: step {k} lacks a number for {missing}")
    return data


def default_tolerance(env_a: dict, env_b: dict) -> tuple[float, float]:
    """(rtol, atol): the low-precision defaults when either run was not float32."""
    dtypes = {env_a.get("dtype"), env_b.get("dtype")}
    return LOW_PRECISION_TOLERANCE if dtypes & set(LOW_PRECISION_DTYPES) else FP32_TOLERANCE


def parse_metric_tol(items: list[str] | None) -> dict[str, tuple[float, float]]:
    """["kl=0.05,1e-3", ...] -> {"kl": (0.05, 0.001)}."""
    out = {}
    for item in items or []:
        name, sep, values = item.partition("=")
        parts = values.split(",")
        try:
            if not sep or not name or len(parts) != 2:
                raise ValueError
            rtol, atol = float(parts[0]), float(parts[1])
        except ValueError:
            raise UnusableInput(f"--metric-tol {item!r} is not NAME=RTOL,ATOL (e.g. kl=0.05,0.001)") from None
        if rtol < 0 or atol < 0:
            raise UnusableInput(f"--metric-tol {item!r}: tolerances must be >= 0")
        out[name] = (rtol, atol)
    return out


def compare_results(a: dict, b: dict, *, rtol: float | None = None, atol: float | None = None,
                    metric_tol: dict[str, tuple[float, float]] | None = None,
                    names: tuple[str, str] = ("A", "B")) -> Report:
    """Check that the two results can be compared (else UnusableInput) and compare every value."""
    ra, rb = a["rollout"], b["rollout"]
    if ra.get("sha256") != rb.get("sha256"):
        raise UnusableInput(
            f"{names[0]} replayed rollout {ra.get('name')!r} (sha256 {str(ra.get('sha256'))[:12]}) but {names[1]} "
            f"replayed {rb.get('name')!r} (sha256 {str(rb.get('sha256'))[:12]}): runs on different rollouts are not "
            "comparable; re-run both with the same --rollout file")
    if len(a["steps"]) != len(b["steps"]):
        raise UnusableInput(f"{names[0]} has {len(a['steps'])} steps but {names[1]} has {len(b['steps'])}: "
                            "re-run both on the whole rollout")
    if list(a["metrics"]) != list(b["metrics"]):
        only_a = sorted(set(a["metrics"]) - set(b["metrics"]))
        only_b = sorted(set(b["metrics"]) - set(a["metrics"]))
        raise UnusableInput(f"the files record different metrics (only in {names[0]}: {only_a}; only in {names[1]}: "
                            f"{only_b}): they come from different harness versions; re-run the older one")
    metric_tol = dict(metric_tol or {})
    unknown = sorted(set(metric_tol) - set(a["metrics"]))
    if unknown:
        raise UnusableInput(f"--metric-tol names unknown metric(s) {unknown}; metrics: {', '.join(a['metrics'])}")
    if (rtol is not None and rtol < 0) or (atol is not None and atol < 0):
        raise UnusableInput(f"--rtol and --atol must be >= 0, got rtol={rtol}, atol={atol}")
    base = default_tolerance(a["environment"], b["environment"])
    base = (base[0] if rtol is None else float(rtol), base[1] if atol is None else float(atol))
    rows = []
    for metric in a["metrics"]:
        mr, ma = metric_tol.get(metric, base)
        for k, (sa, sb) in enumerate(zip(a["steps"], b["steps"])):
            rows.append(Row(metric, k, float(sa[metric]), float(sb[metric]), mr, ma))
    report = Report(rows, (a["environment"], b["environment"]), names, base)
    for row in rows:
        cur = report.worst.get(row.metric)
        if cur is None or row.severity > cur.severity:
            report.worst[row.metric] = row
    return report


def _g(x: float) -> str:
    return f"{x:.6g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _env_rows(env_a: dict, env_b: dict) -> list[list[str]]:
    def kern(env, op):
        k = env.get("kernels", {}).get(op, {})
        return k.get("name", "?")

    keys = [("backend", lambda e: e.get("backend", "?")), ("device", lambda e: e.get("device", "?")),
            ("dtype", lambda e: e.get("dtype", "?")), ("attention", lambda e: kern(e, "attention")),
            ("fused_ops", lambda e: kern(e, "fused_ops")), ("plant", lambda e: str(e.get("plant") or "-")),
            ("date_utc", lambda e: e.get("date_utc", "?"))]
    versions = sorted(set(env_a.get("versions", {})) | set(env_b.get("versions", {})))
    keys += [(v, lambda e, v=v: e.get("versions", {}).get(v, "-")) for v in versions]
    return [[name, get(env_a), get(env_b)] for name, get in keys]


def format_report(report: Report) -> str:
    """The worst difference per metric, the violations, and the two environments."""
    header = ["metric", "step", "A", "B", "abs diff", "rel diff", "tolerance", "status"]
    rows = [[r.metric, str(r.step), _g(r.a), _g(r.b), _g(r.abs_diff), _g(r.rel_diff), _g(r.tolerance),
             "OK" if r.ok else "FAIL"] for r in report.worst.values()]
    na, nb = report.names
    out = [f"A = {na}\nB = {nb}",
           f"violation: |A - B| > atol + rtol * |A|; defaults rtol={report.defaults[0]:g} atol={report.defaults[1]:g}",
           "", "worst difference per metric:", _table(header, rows), ""]
    bad = report.violations
    if bad:
        out.append(f"FAIL: {len(bad)} of {len(report.rows)} values outside tolerance:")
        out += [f"  FAIL {r.metric} at step {r.step}: A={_g(r.a)} B={_g(r.b)} |diff|={_g(r.abs_diff)} > "
                f"{_g(r.tolerance)}" for r in bad]
    else:
        out.append(f"OK: all {len(report.rows)} values within tolerance")
    out += ["", "environments:", _table(["", "A", "B"], _env_rows(*report.envs))]
    notes = {e.get("note") for e in report.envs if e.get("note")}
    out += [f"note: {n}" for n in sorted(notes)]
    return "\n".join(out)
