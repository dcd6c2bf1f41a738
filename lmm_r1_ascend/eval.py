"""`python -m lmm_r1_ascend.eval`: evaluate a model on LMM-R1 jsonl benchmarks, compare runs,
convert the paper's benchmarks.

    python -m lmm_r1_ascend.eval --model PATH_OR_BUILTIN --data FILE [FILE ...] [--n 8] [--out DIR] [key=value ...]
    python -m lmm_r1_ascend.eval compare RUN_A RUN_B [...] [--label A B ...] [--png table.png]
    python -m lmm_r1_ascend.eval convert NAME SRC --out FILE.jsonl

The first form loads the data with the training loader (templating, images, data.on_bad_line),
samples with the rollout engine (`--engine hf|vllm`; greedy by default), scores with the
training reward router and writes samples.jsonl, summary.json and a printed table into
`--out`. Any training config key may be given as key=value, before or after the options (e.g.
reward.routes, data.max_prompt_len, distributed.mode=ray to sample on the cluster's engine actors).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import platform
import sys
from pathlib import Path

from lmm_r1_ascend.config.cli import CliParser, parse_cli, quiet_library_progress

DEFAULT_OUT = "outputs/eval"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_hash(path: str) -> str:
    """sha256 over the weight files' names and sizes and the config (cheap for GBs of weights)."""
    p = Path(path)
    if not p.is_dir():
        return ""
    h = hashlib.sha256()
    for f in sorted(p.iterdir()):
        if f.suffix in (".safetensors", ".bin", ".json") and f.is_file():
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            if f.suffix == ".json" or f.stat().st_size < (8 << 20):
                h.update(f.read_bytes())
    return h.hexdigest()


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "math-verify", "vllm", "lmm-r1-ascend"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _run_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m lmm_r1_ascend.eval", description=__doc__.split("\n\n")[0],
                                epilog="subcommands: compare RUN [RUN ...] | convert NAME SRC --out FILE")
    p.add_argument("--model", required=True, help="a model directory, or a built-in name (demo-fre, tiny-qwen2, ...)")
    p.add_argument("--data", nargs="+", required=True, help="LMM-R1 jsonl files (or demo:arithmetic-eval)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, npu, npu-emulated")
    p.add_argument("--engine", default="hf", help="rollout engine: hf or vllm")
    p.add_argument("--n", type=int, default=1, help="samples per prompt (pass@k / maj@k for k <= n)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts (after bad rows are dropped)")
    p.add_argument("--batch-prompts", type=int, default=64, help="prompts per generate() call")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="training config overrides")
    return p


def eval_config(args: argparse.Namespace, data: list[str]):
    """The TrainConfig that loads `data` and serves `args.model` like training would (and
    trains nothing: one sample per prompt, no reference, no critic)."""
    from lmm_r1_ascend.config import load_config

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    overrides = [
        f"model.pretrain={args.model}", f"device={args.device}", f"rollout.engine={args.engine}",
        f"rollout.max_new_tokens={args.max_new_tokens}", f"rollout.micro_rollout_batch_size={args.batch_prompts}",
        "rollout.rollout_batch_size=1", "trainer.train_batch_size=1", "algorithm.n_samples_per_prompt=1",
        "algorithm.advantage_estimator=reinforce", "algorithm.init_kl_coef=0.0", f"seed={args.seed}",
        f"output_dir={args.out}", "data.shuffle=false", *args.overrides,
    ]
    if not any(o.startswith("reward.routes") for o in args.overrides):  # benchmarks mix math and Sokoban rows
        overrides.insert(0, 'reward.routes={"sokoban*": sokoban}')
    cfg = load_config(overrides=overrides)
    import dataclasses

    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, prompt_data=list(data)))


def _resolve_data(entries: list[str], out: Path) -> list[str]:
    from lmm_r1_ascend.demo.data import materialise_eval

    return materialise_eval(entries, out / "data")


def _first_prompts(dataset, limit: int | None) -> list:
    """The dataset's prompts in order, only the first `limit` when given (after bad rows are dropped)."""
    prompts = []
    for item in dataset:
        prompts.append(item)
        if limit is not None and len(prompts) >= limit:
            break
    return prompts


def _sampler(cfg, backend, actor_path: str) -> tuple:
    """(generate, where, engine, cluster): the rollout engine in this process (distributed.mode=local),
    else the training placement's ranks and engine actors, as a run would start them."""
    import dataclasses

    import torch

    if cfg.distributed.mode == "local":
        from lmm_r1_ascend.workers.builders import build_rollout_engine

        dtype = backend.default_dtype if cfg.model.dtype == "auto" else getattr(torch, cfg.model.dtype)
        engine = build_rollout_engine(cfg, actor_path, backend.device(0), dtype)
        return engine.generate, f"{cfg.rollout.engine} engine in this process", engine, None
    from lmm_r1_ascend.trainer.setup import build_components

    cluster = build_components(dataclasses.replace(cfg, data=cfg.data), backend, log=lambda s: None)
    return cluster.rollout.generate, cluster.rollout.describe(), None, cluster


def _sample_and_score(args: argparse.Namespace, cfg, backend, actor_path: str, prompts: list, tokenizer, sampling):
    """Generate and score every prompt (evaluation.runner.evaluate); returns (result, kept, where): kept
    are the Sokoban rows' samples (a multi-turn sample's trajectory is on it), where says what sampled.
    The reward, the engine and the cluster are closed at the end, also on failure."""
    from lmm_r1_ascend.evaluation.runner import evaluate
    from lmm_r1_ascend.evaluation.sokoban_eval import is_sokoban
    from lmm_r1_ascend.trainer.setup import reward_router

    generate, where, engine, cluster = _sampler(cfg, backend, actor_path)
    reward = reward_router(cfg)
    kept: list = []

    def generate_and_keep(chunk, sampling_cfg):
        samples = generate(chunk, sampling_cfg)
        kept.extend(s for s in samples if is_sokoban(s.prompt.datasource))
        return samples

    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), desc="eval", unit="prompt", dynamic_ncols=True)
    try:
        result = evaluate(prompts, generate=generate_and_keep, reward=reward, tokenizer=tokenizer, sampling=sampling,
                          batch_prompts=args.batch_prompts, progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
        for part in (reward, engine, cluster):  # vLLM's engine processes and KV cache go with it
            if part is not None and hasattr(part, "close"):
                part.close()
    return result, kept, where


def _add_sokoban_figures(result, kept: list, tokenizer) -> dict:
    """{datasource: Sokoban figures} of the kept samples, also stored as sokoban/<figure> in
    result.summary (compare --metric sokoban/success_rate reads them there)."""
    from lmm_r1_ascend.evaluation.sokoban_eval import episodes_from_samples, sokoban_figures

    sokoban = {source: sokoban_figures(eps) for source, eps in episodes_from_samples(
        kept, lambda s: tokenizer.decode(s.response_ids, skip_special_tokens=True)).items()}
    for source, figures in sokoban.items():
        result.summary[source].update({f"sokoban/{k}": v for k, v in figures.items()})
    return sokoban


def _stamp(args: argparse.Namespace, cfg, backend, actor_path: str, dataset, sampling, result, where: str) -> dict:
    """What the figures were measured on: model, data, engine, sampling, versions, date."""
    import dataclasses

    return {
        "model": actor_path, "model_hash": _model_hash(actor_path),
        "data": [{"path": p, "sha256": _sha256(Path(p))} for p in cfg.data.prompt_data],
        "data_counts": dataset.counts, "engine": cfg.rollout.engine, "where": where, "device": backend.name,
        "sampling": dataclasses.asdict(sampling), "limit": args.limit, "seconds": round(result.seconds, 3),
        "versions": _versions(), "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def run_eval(args: argparse.Namespace) -> dict:
    """Load the data, sample and score every prompt, write samples.jsonl and summary.json into
    --out, print the tables; returns the summary."""
    from lmm_r1_ascend.backends import get_backend
    from lmm_r1_ascend.evaluation.runner import format_table
    from lmm_r1_ascend.evaluation.sokoban_eval import format_sokoban_table
    from lmm_r1_ascend.rollout.base import SamplingConfig
    from lmm_r1_ascend.trainer.setup import prepare_data

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = eval_config(args, _resolve_data(list(args.data), out))
    sampling = SamplingConfig(n=args.n, temperature=args.temperature, top_p=args.top_p,
                              max_new_tokens=args.max_new_tokens, seed=args.seed)
    backend = get_backend(cfg.device)
    backend.seed_everything(cfg.seed)
    actor_path, tokenizer, _, dataset = prepare_data(cfg, shuffle=False)
    prompts = _first_prompts(dataset, args.limit)
    result, kept, where = _sample_and_score(args, cfg, backend, actor_path, prompts, tokenizer, sampling)
    sokoban = _add_sokoban_figures(result, kept, tokenizer)
    with open(out / "samples.jsonl", "w") as f:
        for rec in result.records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    summary = {"format": "lmm-r1-eval/1", "figures": result.summary,
               "stamp": _stamp(args, cfg, backend, actor_path, dataset, sampling, result, where)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_table(result.summary))
    if sokoban:
        mode = f"step by step, env {cfg.env.name}" if cfg.env.name else "single-shot"
        print(f"Sokoban ({mode}):\n{format_sokoban_table(sokoban)}")
    print(f"{len(prompts)} prompts x {args.n} samples in {result.seconds:.1f} s; wrote {out}/samples.jsonl and "
          f"{out}/summary.json")
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from lmm_r1_ascend.backends import BackendUnavailable
    from lmm_r1_ascend.config import ConfigError
    from lmm_r1_ascend.config.errors import SetupError
    from lmm_r1_ascend.data import DataError

    try:
        if argv and argv[0] == "compare":
            from lmm_r1_ascend.evaluation.compare import main as compare_main

            return compare_main(argv[1:])
        if argv and argv[0] == "convert":
            from lmm_r1_ascend.evaluation.convert_cli import main as convert_main

            return convert_main(argv[1:])
        args = parse_cli(_run_parser(), argv, overrides_dest="overrides")
        quiet_library_progress()  # the eval bar owns the screen; HF_HUB_DISABLE_PROGRESS_BARS=0 brings theirs back
        run_eval(args)
    except (ConfigError, SetupError, BackendUnavailable, DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
