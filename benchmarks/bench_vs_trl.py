"""This trainer against TRL's GRPOTrainer on the same workload, side by side in one run.

    python benchmarks/bench_vs_trl.py [--runs 3] [--steps 4] [--workload demo longtail]

It installs nothing: run it with a python where both lmm_r1_ascend and trl import, e.g. a
venv of its own that pins the CPU torch (the registry's unpinned torch is a CUDA build):

    python3 -m venv .venv-trl && .venv-trl/bin/pip install torch==2.13.0 && \\
      .venv-trl/bin/pip install -c constraints-cpu.txt -e . "trl==1.16.0"
    .venv-trl/bin/python benchmarks/bench_vs_trl.py

The workload is the CPU demo's (recipe demo_fre): the shipped warm-up model, the demo's
arithmetic prompts, the project's math reward (format + accuracy) in both trainers, 16 prompts
x 8 samples, 40 new tokens, temperature 1, no KL, one optimizer step of 128 completions per
rollout, group-mean baseline without std scaling, token-mean loss, Adam at lr 3e-4 constant,
fp32. TRL (loss_type=dapo, scale_rewards=none, beta=0) and our reinforce_baseline with
token-mean optimise the same objective; TRL gets the same templated prompt text our loader
builds, so both tokenize the same ids, and neither shuffles: step k of both trains on the
same 16 prompts (with long-tailed lengths a batch's cost follows its longest prompt, so
batches drawn apart would compare luck).

Workloads:
  demo      the demo as is: short prompts (~60 tokens), responses of ~25 tokens.
  longtail  the same problems behind a filler preamble of log-normal length (median ~40,
            capped so prompts stay under 448 tokens): the prompt lengths, not the response
            lengths, are long-tailed (the demo model's answers stay short whatever we do). TRL
            pads every row of a batch to its longest prompt in the update; we pack.

Each (trainer, workload) pair runs in a fresh subprocess (`--worker`), alternated ours, TRL,
ours, ... --runs times, so that load drifts on this noisy machine hit both alike. Every run
does --steps + 1 steps and drops the first (warm-up). Reported per trainer: median step time,
median generation time (our timing/rollout; TRL's _generate), median update time (our
old-log-prob, reference and actor passes; TRL's step minus its generate-and-score), generated
tokens/s (response tokens / step time), peak RSS of the worker process, and the paired ratio
ours / TRL of each run pair's median step time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS = 2
FILLER_WORDS = ["note", "this", "is", "a", "sum", "of", "two", "numbers", "read", "it", "with", "care"]


def _overrides(tmp: str, steps: int, data_file: str | None) -> list[str]:
    o = [f"output_dir={tmp}", f"trainer.max_steps={steps}", "trainer.eval_before_train=false",
         "trainer.eval_steps=0", "trainer.save_steps=0", "trainer.save_hf=false", "trainer.tensorboard=false",
         "trainer.resume=false", "data.shuffle=false"]  # both trainers take the same batches, in file order
    return o + ([f"data.prompt_data=[{data_file}]"] if data_file else [])


def _config(tmp: str, steps: int, data_file: str | None):
    from lmm_r1_ascend.config import load_config
    from lmm_r1_ascend.demo.data import prepare_demo_data

    return prepare_demo_data(load_config(recipe="demo_fre", overrides=_overrides(tmp, steps, data_file)))


def write_longtail_data(demo_train: Path, out: Path, seed: int = 0) -> Path:
    """The demo's training rows with a log-normal filler preamble in the user turn."""
    rng = random.Random(seed)
    rows = []
    for line in demo_train.read_text().splitlines():
        row = json.loads(line)
        msgs = json.loads(row["message"])
        n_words = min(80, int(rng.lognormvariate(math.log(8), 1.0)))  # ~5 tokens per word: <= ~400 extra
        filler = " ".join(rng.choice(FILLER_WORDS) for _ in range(n_words))
        msgs[-1]["content"] = (filler + ". " if n_words else "") + msgs[-1]["content"]
        rows.append(json.dumps({**row, "message": json.dumps(msgs)}))
    out.write_text("\n".join(rows) + "\n")
    return out


def _data_file(workload: str, tmp: str) -> str | None:
    if workload == "demo":
        return None
    demo = _config(f"{tmp}/demo-data", 1, None)  # materialises the demo's jsonl
    return str(write_longtail_data(Path(demo.data.prompt_data[0]), Path(tmp) / "longtail.jsonl"))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ------------------------------------------------------------------------------------ ours
def run_ours(workload: str, steps: int, tmp: str) -> dict:
    from lmm_r1_ascend.trainer.ppo import PPOTrainer

    cfg = _config(f"{tmp}/ours", steps + 1, _data_file(workload, tmp))
    trainer = PPOTrainer(cfg, log=lambda s: None)
    out = []
    try:
        for _ in range(steps + 1):
            m = trainer.train_step()
            update = sum(m.get(k, 0.0) for k in ("timing/old_log_probs", "timing/reference", "timing/critic_forward",
                                                 "timing/train_actor", "timing/train_critic"))
            out.append({"step": m["timing/step"], "generation": m["timing/rollout"], "update": update,
                        "response_tokens": m["response_length/mean"] * cfg.rollout.rollout_batch_size
                        * cfg.algorithm.n_samples_per_prompt})
    finally:
        trainer.parts.close()
    return {"steps": out[1:], "peak_rss_mb": _peak_rss_mb(),
            "rows": cfg.rollout.rollout_batch_size * cfg.algorithm.n_samples_per_prompt}


# ------------------------------------------------------------------------------------- TRL
def _trl_dataset(cfg):
    from datasets import Dataset

    from lmm_r1_ascend.trainer.setup import prepare_data

    _, _, _, dataset = prepare_data(cfg)
    rows = []
    for item in dataset:
        rows.append({"prompt": item.prompt_text, "label": item.label})
        if len(rows) == len(dataset):
            break
    return Dataset.from_list(rows)


def run_trl(workload: str, steps: int, tmp: str) -> dict:
    import torch
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from lmm_r1_ascend.rewards.math_reward import MathReward
    from lmm_r1_ascend.rewards.types import RewardInput
    from lmm_r1_ascend.workers.builders import resolve_actor_path

    cfg = _config(f"{tmp}/trl-data", steps + 1, _data_file(workload, tmp))
    model_path = resolve_actor_path(cfg)
    reward = MathReward(format_weight=cfg.reward.format_weight, workers=cfg.reward.workers)

    def math_reward(prompts, completions, label, **_):
        return [o.total for o in reward([RewardInput(response=c, label=g) for c, g in zip(completions, label)])]

    rows = cfg.rollout.rollout_batch_size * cfg.algorithm.n_samples_per_prompt
    args = GRPOConfig(
        output_dir=f"{tmp}/trl", per_device_train_batch_size=rows, gradient_accumulation_steps=1,
        num_generations=cfg.algorithm.n_samples_per_prompt, max_completion_length=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature, top_p=1.0, top_k=0, beta=0.0, num_iterations=1,
        epsilon=cfg.algorithm.eps_clip, scale_rewards="none", loss_type="dapo",
        learning_rate=cfg.optim.actor_lr, lr_scheduler_type="constant", warmup_steps=0,
        adam_beta1=cfg.optim.adam_betas[0], adam_beta2=cfg.optim.adam_betas[1], weight_decay=cfg.optim.weight_decay,
        max_grad_norm=cfg.optim.max_norm, max_steps=steps + 1, use_cpu=True, report_to=[], save_strategy="no",
        logging_steps=1, seed=cfg.seed, dataloader_num_workers=0, log_completions=False, shuffle_dataset=False,
        model_init_kwargs={"dtype": torch.float32}, disable_tqdm=True,
        # GRPOConfig defaults to gradient checkpointing and bf16 autocast; ours runs neither on
        # the demo, so both are set to ours explicitly (equal settings, not the peer's defaults)
        gradient_checkpointing=cfg.model.gradient_checkpointing, bf16=False, fp16=False)
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    trainer = GRPOTrainer(model=model_path, reward_funcs=math_reward, args=args,
                          train_dataset=_trl_dataset(cfg), processing_class=tokenizer)

    timing = {"generation": 0.0, "score": 0.0}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                timing[name] += time.perf_counter() - t0
        return wrapper

    trainer._generate = timed("generation", trainer._generate)
    trainer._generate_and_score_completions = timed("score", trainer._generate_and_score_completions)
    out: list[dict] = []
    lengths: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.t0 = time.perf_counter()
            timing.update(generation=0.0, score=0.0)

        def on_step_end(self, *_, **__):
            step = time.perf_counter() - self.t0
            out.append({"step": step, "generation": timing["generation"], "update": step - timing["score"]})

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    trainer.add_callback(StepTimes())
    try:
        trainer.train()
    finally:
        reward.close()
    for row, length in zip(out, lengths):
        row["response_tokens"] = length * rows
    return {"steps": out[1:], "peak_rss_mb": _peak_rss_mb(), "rows": rows}


# ---------------------------------------------------------------------------------- parent
def _worker_main(args) -> None:
    import torch

    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        result = (run_ours if args.worker == "ours" else run_trl)(args.workload[0], args.steps, tmp)
    print("RESULT " + json.dumps(result), flush=True)


def _spawn(who: str, workload: str, steps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.run([sys.executable, __file__, "--worker", who, "--workload", workload, "--steps", str(steps)],
                          capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{who} worker ({workload}) failed with exit code {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(s[key] for r in runs for s in r["steps"])


def _versions() -> str:
    import torch
    import transformers
    import trl

    return (f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
            f"python {platform.python_version()}, {platform.machine()} {os.cpu_count()} cores, {THREADS} threads")


def report(workload: str, runs: dict[str, list[dict]]) -> str:
    rows = runs["ours"][0]["rows"]
    lines = [f"workload {workload}: {len(runs['ours'])} runs each, {len(runs['ours'][0]['steps'])} measured steps "
             "per run (after 1 warm-up), medians over all measured steps",
             f"{'trainer':<8} {'step s':>8} {'generation s':>13} {'update s':>9} {'resp len':>9} {'gen tok/s':>10} "
             f"{'peak RSS MB':>12}"]
    for who, rs in runs.items():
        steps = [s for r in rs for s in r["steps"]]
        tok_s = statistics.median(s["response_tokens"] / s["step"] for s in steps)
        length = statistics.median(s["response_tokens"] / rows for s in steps)
        lines.append(f"{who:<8} {_median(rs, 'step'):>8.3f} {_median(rs, 'generation'):>13.3f} "
                     f"{_median(rs, 'update'):>9.3f} {length:>9.1f} {tok_s:>10.0f} "
                     f"{max(r['peak_rss_mb'] for r in rs):>12.0f}")
    per_run = {who: [statistics.median(s["step"] for s in r["steps"]) for r in rs] for who, rs in runs.items()}
    pairs = [o / t for o, t in zip(per_run["ours"], per_run["trl"])]
    ratio = _median(runs["ours"], "step") / _median(runs["trl"], "step")
    lines.append("per-run median step s: " + "; ".join(
        f"{who} {', '.join(f'{x:.3f}' for x in xs)}" for who, xs in per_run.items()))
    lines.append(f"ours / TRL step time: {ratio:.3f} (per run pair: {', '.join(f'{p:.2f}' for p in pairs)}); "
                 f"generation {_median(runs['ours'], 'generation') / _median(runs['trl'], 'generation'):.3f}, "
                 f"update {_median(runs['ours'], 'update') / _median(runs['trl'], 'update'):.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="subprocess runs per trainer and workload")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per run (after one warm-up)")
    parser.add_argument("--workload", nargs="+", choices=["demo", "longtail"], default=["demo", "longtail"])
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker_main(args)
    try:
        import trl  # noqa: F401
    except ImportError:
        sys.exit("bench_vs_trl needs trl importable next to lmm_r1_ascend; see this script's docstring for a venv "
                 "recipe that pins the CPU torch")
    print(f"lmm_r1_ascend vs TRL GRPOTrainer, {time.strftime('%Y-%m-%d')}: {_versions()}")
    for workload in args.workload:
        runs: dict[str, list[dict]] = {"ours": [], "trl": []}
        for _ in range(args.runs):
            for who in runs:
                runs[who].append(_spawn(who, workload, args.steps))
        print(report(workload, runs), flush=True)


if __name__ == "__main__":
    main()
