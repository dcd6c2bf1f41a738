"""Reward CLI: ``python -m lmm_r1_ascend.reward --task SPEC ...``

  --task math --label L --response R      one JSON object: format, accuracy, total, ...
  --task math --file F.jsonl              one JSON line per input line, in order
  --task sokoban --level L.npy --response R   one JSON object: total and its components
  --task custom:PATH.py | http(s)://URL   with --file (or --response / --label)
  --task math --bench N                   answers/s with the worker pool vs sequential

``--response -`` reads the response from stdin (for long ones; argv is limited).
File lines are JSON objects with ``response`` (or ``query``, the full decoded text),
``label`` (or ``answer``), optional ``datasource``, ``prompt``, ``env_path``/``level``.
A line that is not valid UTF-8 or JSON, or lacks a response, is reported in place
(status ``bad_line``, components null) and the rest is scored; the exit status is 1
when some line was rejected, 2 on a usage error, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator

from lmm_r1_ascend.config.cli import CliParser, parse_cli
from lmm_r1_ascend.rewards.extraction import extract_response, get_template
from lmm_r1_ascend.rewards.registry import RewardRouter
from lmm_r1_ascend.rewards.types import RewardError, RewardInput

COMPONENTS = {"math": ("format", "accuracy"), "sokoban": ("format", "best_reward", "action_term", "think_term")}


def _parser() -> argparse.ArgumentParser:
    ap = CliParser(prog="python -m lmm_r1_ascend.reward", description=__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="math", help="math | sokoban | custom:PATH.py | http(s)://URL")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--response", help="the model response (or full decoded text); '-' reads stdin")
    src.add_argument("--file", help="jsonl file of samples")
    src.add_argument("--bench", type=int, metavar="N", help="benchmark N simple math answers")
    ap.add_argument("--label", help="reference answer (math)")
    ap.add_argument("--prompt", default="", help="prompt text (custom rewards)")
    ap.add_argument("--level", help="Sokoban level .npy (single-response mode)")
    ap.add_argument("--route", action="append", default=[], metavar="DATASOURCE=SPEC",
                    help="score lines of a datasource (fnmatch pattern) with another reward")
    ap.add_argument("--format-weight", type=float, default=0.5)
    ap.add_argument("--no-format", action="store_true", help="math: drop the format term")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per answer (math) / per request (http)")
    ap.add_argument("--workers", type=int, default=2, help="math-verify worker processes (0: in-process)")
    ap.add_argument("--on-error", choices=("raise", "zero"), default="raise", help="custom rewards: fail or score 0")
    ap.add_argument("--template", default="chatml", help="chat template for response extraction")
    ap.add_argument("--batch-size", type=int, default=512, help="lines scored per batch in --file mode")
    ap.add_argument("--bench-group", type=int, default=1, help="--bench: responses per label")
    return ap


def _options(args) -> dict[str, dict[str, Any]]:
    math_opts: dict[str, Any] = {"format_weight": args.format_weight, "use_format": not args.no_format,
                                 "workers": args.workers}
    http_opts: dict[str, Any] = {"on_error": args.on_error}
    if args.timeout is not None:
        math_opts["timeout_s"] = http_opts["timeout_s"] = args.timeout
    return {"math": math_opts, "custom": {"on_error": args.on_error}, "http": http_opts}


def _keys(task: str) -> tuple[str, ...]:
    return COMPONENTS.get(task, ("reward",))


def _sample(obj: Any, template: str) -> RewardInput:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    text = obj.get("response", obj.get("query"))
    if text is None:
        raise ValueError("no 'response' (or 'query') field")
    prompt = obj.get("prompt") or ""
    response = extract_response(text, template, prompt) if isinstance(text, str) else text
    meta = {k: obj[k] for k in ("env_path", "level") if k in obj}
    label = obj["label"] if "label" in obj else obj.get("answer")
    query = obj.get("query") if isinstance(obj.get("query"), str) else ""
    return RewardInput(response=response, label=label, query=query, prompt=prompt,
                       datasource=obj.get("datasource"), meta=meta)


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            yield n, raw.rstrip(b"\r\n")


def _decode(n: int, raw: bytes, template: str) -> RewardInput | str:
    """The sample of line ``n``, or an error message."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"line {n}: invalid UTF-8 at byte {e.start}; re-encode the file as UTF-8"
    if not text.strip():
        return f"line {n}: empty line"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return f"line {n}: invalid JSON ({e.msg} at column {e.colno})"
    try:
        return _sample(obj, template)
    except (ValueError, TypeError) as e:
        return f"line {n}: {e}"


def _score_file(router: RewardRouter, args) -> int:
    keys, rejected = _keys(args.task), 0
    batch: list[tuple[int, RewardInput | str]] = []

    def flush() -> None:
        good = [(n, s) for n, s in batch if isinstance(s, RewardInput)]
        outs = iter(router([s for _, s in good]))
        for n, s in batch:
            if isinstance(s, str):
                row = {"line": n, **{k: None for k in keys}, "total": None, "status": "bad_line", "detail": s}
            else:
                row = {"line": n, **next(outs).to_dict()}
            print(json.dumps(row, ensure_ascii=False), flush=False)
        sys.stdout.flush()
        batch.clear()

    for n, raw in _lines(args.file):
        item = _decode(n, raw, args.template)
        rejected += isinstance(item, str)
        batch.append((n, item))
        if len(batch) >= args.batch_size:
            flush()
    flush()
    if rejected:
        print(f"{rejected} line(s) of {args.file} were rejected (status bad_line)", file=sys.stderr)
    return 1 if rejected else 0


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = parse_cli(ap, argv)
    try:
        get_template(args.template)
    except ValueError as e:
        ap.error(str(e))
    if args.bench is not None:
        from lmm_r1_ascend.rewards.bench import run_bench

        if args.bench < 1 or args.bench_group < 1:
            ap.error("--bench and --bench-group take positive numbers")
        print(json.dumps(run_bench(args.bench, max(1, args.workers), args.timeout or 10.0, group=args.bench_group)))
        return 0
    if args.file is not None and not Path(args.file).is_file():
        ap.error(f"--file {args.file}: no such file")
    if args.response is not None:
        if args.task == "math" and args.label is None:
            ap.error("--task math needs --label")
        if args.task == "sokoban" and (args.level is None or not Path(args.level).is_file()):
            ap.error(f"--task sokoban needs --level LEVEL.npy (an existing file), got {args.level!r}")
    routes = dict(r.split("=", 1) for r in args.route if "=" in r)
    if len(routes) != len(args.route):
        ap.error("--route takes DATASOURCE=SPEC")
    options = _options(args)
    if args.response is not None:  # one answer: one worker is enough
        options["math"]["workers"] = min(args.workers, 1)
    try:
        with RewardRouter(args.task, routes, options) as router:
            if args.file is not None:
                return _score_file(router, args)
            text = sys.stdin.read() if args.response == "-" else args.response
            meta = {"env_path": args.level} if args.level else {}
            sample = RewardInput(response=extract_response(text, args.template, args.prompt or None),
                                 label=args.label, query=text, prompt=args.prompt, meta=meta)
            print(json.dumps(router([sample])[0].to_dict(), ensure_ascii=False))
            return 0
    except (RewardError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
