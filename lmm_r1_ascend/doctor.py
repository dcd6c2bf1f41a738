"""`python -m lmm_r1_ascend.doctor [--device NAME] [--json]`: what this machine will run and why.

Prints the selected backend (and, for auto, why better devices were skipped), the device
count, the collective backend, the Ray actor options and the weight-sync transports the
code uses, the kernel set the core calls (attention, log-probs, fused ops: the
implementation chosen for each, with the reason for each fallback), the ring and Ulysses
sequence-parallel kernels built on that attention, the software stack's
versions, and the relevant environment variables.
"""

from __future__ import annotations

import json
import os
import platform
import sys

from lmm_r1_ascend.backends.base import COMMON_ENV_VARS, BackendUnavailable
from lmm_r1_ascend.backends.registry import backend_names, get_backend, resolve_name
from lmm_r1_ascend.backends.stack import stack_versions
from lmm_r1_ascend.config.cli import CliParser, parse_cli


def collect(device: str = "auto") -> dict:
    """The doctor report as a JSON-able dict. Raises BackendUnavailable for an unusable device."""
    name, skipped = resolve_name(device)
    backend = get_backend(name)
    ok, why = type(backend).probe()
    kernels = backend.select_kernels()
    env_names = list(dict.fromkeys(COMMON_ENV_VARS + backend.env_vars))
    return {
        "requested": device,
        "backend": backend.describe(),
        "why": why if device != "auto" or not skipped else f"{why} (auto: " + "; ".join(f"{n} skipped: {w}" for n, w in skipped) + ")",
        "skipped": [{"backend": n, "reason": w} for n, w in skipped],
        "kernels": {c.op: {"implementation": c.name, "reason": c.reason,
                           "fallbacks": [{"implementation": n, "reason": w} for n, w in c.rejected]}
                    for c in kernels},
        "sequence_parallel": {mode: {"implementation": c.name, "reason": c.reason}
                              for mode, c in backend.sequence_parallel_kernels(kernels).items()},
        "versions": {"python": platform.python_version(), **stack_versions()},
        "environment": {k: os.environ.get(k) for k in env_names},
        "known_backends": sorted(backend_names()),
    }


def format_report(report: dict) -> str:
    b = report["backend"]
    lines = [
        f"backend     {b['name']}  ({report['why']})",
        f"devices     {b['device_count']} x {b['device_type']}",
        f"collectives {b['dist_backend']} (mixed: {b['dist_backend_mixed']})",
        f"ray         {b['ray_resource'] or 'CPU bundles'}; actor options per device: {b['ray_actor_options'] or '{}'}",
        f"weight sync {', '.join(b['weight_sync_transports'])}; DS_ACCELERATOR={b['ds_accelerator']}; dtype {b['default_dtype']}",
        "kernels chosen:",
    ]
    for op, k in report["kernels"].items():
        lines.append(f"  {op:<16} {k['implementation']}: {k['reason']}")
        lines += [f"  {'':<16}   (not {f['implementation']}: {f['reason']})" for f in k["fallbacks"]]
    lines.append("sequence parallel (distributed.sequence_parallel_mode):")
    for mode, k in report.get("sequence_parallel", {}).items():
        lines.append(f"  {mode:<16} {k['implementation']}: {k['reason']}")
    lines.append("versions:")
    lines += [f"  {name:<14} {ver}" for name, ver in report["versions"].items()]
    lines.append("environment:")
    lines += [f"  {name}={val if val is not None else '(unset)'}" for name, val in report["environment"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = CliParser(prog="python -m lmm_r1_ascend.doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=os.environ.get("LMM_R1_DEVICE", "auto"),
                        help=f"auto (npu, then cuda, then cpu) or one of: {', '.join(sorted(backend_names()))}")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parse_cli(parser, argv)
    try:
        report = collect(args.device)
    except (BackendUnavailable, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=None if args.json else 2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
