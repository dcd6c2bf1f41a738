"""This trainer against TRL's GRPOTrainer on the same workload, side by side in one run.

    python benchmarks/bench_vs_trl.py [--runs 3] [--steps 4] [--workload demo longtail] [--threads 2]
    python benchmarks/bench_vs_trl.py --guard     # the regression guard: exit 1 if ours / TRL > 0.8
    python benchmarks/bench_vs_trl.py --profile DIR   # also each worker's cProfile top 40

It installs nothing: run it with a python where both lmm_r1_ascend and trl import, e.g. a
venv of its own that pins the CPU torch (the registry's unpinned torch is a CUDA build):

    python3 -m venv .venv-trl && .venv-trl/bin/pip install torch==2.13.0 && \\
      .venv-trl/bin/pip install -c constraints-cpu.txt -e . "trl==1.16.0"
    .venv-trl/bin/python benchmarks/bench_vs_trl.py

The workload is the CPU demo's, written out in WORKLOAD below (not read from a recipe file, so a
recipe change cannot move the benchmark): the shipped Qwen2 warm-up model `demo-fre`, the demo's
arithmetic prompts, the project's math reward (format + accuracy) in both trainers, 16 prompts
x 8 samples, 40 new tokens, temperature 1, no KL, group-mean baseline without std scaling,
token-mean loss, Adam at lr 3e-4 constant, fp32 without activation checkpointing, one
optimizer step of 128 completions per rollout in ONE forward/backward on both sides. TRL
(loss_type=dapo, scale_rewards=none, beta=0) and our reinforce_baseline with token-mean optimise
the same objective; TRL gets the same templated prompt text our loader builds, so both tokenize
the same ids, and neither shuffles: step k of both trains on the same 16 prompts. Every
GRPOConfig field whose default differs from ours or that decides the cost (batch and
accumulation, sampling, cache, vLLM / compile, precision, checkpointing, optimizer, schedule,
seed, logging) is set in trl_args(); the run prints both sides' resolved values first (SETTINGS).

Workloads:
  demo      the demo as is: short prompts (~60 tokens), responses of ~25 tokens.
  longtail  the same problems behind a filler preamble of log-normal length (median ~40,
            capped so prompts stay under 448 tokens): the prompt lengths, not the response
            lengths, are long-tailed. TRL pads every row of a batch to its longest prompt in
            the update; we pack.

Each (trainer, workload) pair runs in a fresh subprocess (`--worker`), alternated ours, TRL,
ours, ... --runs times, so that load drifts on this noisy machine hit both alike. Every run
does --steps + 1 steps and drops the first (warm-up). Reported per trainer: median step time,
median generation time (our timing/rollout; TRL's _generate), median update time (our
old-log-prob, reference and actor passes; TRL's step minus its generate-and-score), generated
tokens/s (response tokens / generation time, and / step time), peak RSS of the worker, and
the ratios ours / TRL of step, generation and update with each run pair's ratio. Also the
machine's fp32 GEMM rate (torch.matmul 1024^3, best of 10, measured between run pairs at
--threads) and the update's share of it: useful FLOPs = 6 x matmul params x tokens + 12 x
layers x hidden x sum(L_i^2) (update_flops), over the median update time. Our update packs each
prompt's samples with one copy of the prompt (model.share_prompts, printed in the settings table;
TRL has no such option), so the report also gives the FLOPs our matmuls actually run and their share.
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
GUARD_LIMIT = 0.8  # --guard fails when ours / TRL step time is above this on either workload

# The workload, named here rather than read from a recipe file (recipes change; this must not
# change with them): the CPU demo's numbers (recipe demo_fre as of 2026-12-07) on the shipped
# Qwen2 warm-up model `demo-fre`, with every setting the two trainers could differ on written out.
WORKLOAD = {
    "stage": "fre", "device": "cpu", "seed": 42,
    # share_prompts: each prompt's 8 samples share one copy of it in the update's packed forward
    # (kernels/shared_prompts.py; the same loss and gradients). TRL has no such option: printed, not hidden.
    "model": {"pretrain": "demo-fre", "dtype": "float32", "gradient_checkpointing": False, "share_prompts": True},
    "data": {"prompt_data": ["demo:arithmetic"], "eval_data": [], "max_prompt_len": 512,
             "shuffle": False},  # both trainers take the same batches, in file order
    "rollout": {"engine": "hf", "rollout_batch_size": 16, "micro_rollout_batch_size": 16, "temperature": 1.0,
                "top_p": 1.0, "top_k": -1, "max_new_tokens": 40, "async_mode": "sync"},
    "reward": {"default": "math", "workers": 1, "format_weight": 0.5, "overlong_shaping": False},
    "algorithm": {"advantage_estimator": "reinforce_baseline", "n_samples_per_prompt": 8, "init_kl_coef": 0.0,
                  "use_kl_loss": False, "advantage_normalization": "none", "policy_loss": "ppo", "eps_clip": 0.2,
                  "entropy_loss_coef": 0.0, "loss_agg_mode": "token-mean", "old_logprobs": "recompute",
                  "rollout_correction": ["none"], "dynamic_sampling": False},
    "optim": {"actor_lr": 3.0e-4, "adam_betas": [0.9, 0.95], "weight_decay": 0.0, "max_norm": 1.0,
              "lr_scheduler": "constant", "lr_warmup_ratio": 0.0},
    # one optimizer step per rollout over all 128 samples, in ONE forward/backward on both sides
    # (TRL: per_device_train_batch_size 128, no accumulation; ours: a token budget no batch reaches)
    "trainer": {"train_batch_size": 128, "max_epochs": 1, "max_tokens_per_micro_batch": 128 * (512 + 40),
                "eval_before_train": False, "eval_steps": 0, "save_steps": 0, "save_hf": False,
                "loggers": [], "tensorboard": False, "resume": False},
}
ADAM_EPS = 1e-8  # ours: torch AdamW's default (engines/torch_engine.py); TRL: adam_epsilon


def _config(tmp: str, steps: int, data_file: str | None):
    from lmm_r1_ascend.config import load_config
    from lmm_r1_ascend.demo.data import prepare_demo_data

    o = [f"output_dir={tmp}", f"trainer.max_steps={steps}"] + ([f"data.prompt_data=[{data_file}]"] if data_file else [])
    return prepare_demo_data(load_config(base=WORKLOAD, overrides=o))


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
    import torch

    from lmm_r1_ascend.kernels.shared_prompts import shared_prompt_layout
    from lmm_r1_ascend.trainer.ppo import PPOTrainer

    cfg = _config(f"{tmp}/ours", steps + 1, _data_file(workload, tmp))
    trainer = PPOTrainer(cfg, log=lambda s: None)
    engine = trainer.parts.rollout
    drawn: list = []
    computed: list = []
    generate = engine.generate

    def recording(prompts, sampling):  # the step's sequence lengths, for the update's FLOP estimate
        out = generate(prompts, sampling)
        drawn[:] = [s.prompt_ids.numel() + s.response_ids.numel() for s in out]
        # the rows our update's matmuls run on, as the packer lays them out (one micro-batch here)
        layout = shared_prompt_layout([torch.cat((s.prompt_ids, s.response_ids)) for s in out],
                                      [s.prompt_ids.numel() for s in out]) if cfg.model.share_prompts else None
        computed[:] = [sum(drawn) if layout is None else layout.rows]
        return out

    engine.generate = recording
    out = []
    try:
        for _ in range(steps + 1):
            m = trainer.train_step()
            update = sum(m.get(k, 0.0) for k in ("timing/old_log_probs", "timing/reference", "timing/critic_forward",
                                                 "timing/train_actor", "timing/train_critic"))
            out.append({"step": m["timing/step"], "generation": m["timing/rollout"], "update": update,
                        "response_tokens": m["response_length/mean"] * cfg.rollout.rollout_batch_size
                        * cfg.algorithm.n_samples_per_prompt,
                        "tokens": sum(drawn), "sum_sq_len": sum(n * n for n in drawn),
                        "computed_tokens": computed[0]})
        dropped = trainer.parts.dataset.counts["data/filtered_too_long"]
        if dropped:  # TRL truncates no prompt: a prompt we filter would make the two workloads differ
            raise SystemExit(f"error: {dropped} prompts were over data.max_prompt_len and left out on our side only")
    finally:
        trainer.parts.close()
    return {"steps": out[1:], "peak_rss_mb": _peak_rss_mb(), "rows": _rows(cfg), "model": _model_shape(cfg)}


def _rows(cfg) -> int:
    return cfg.rollout.rollout_batch_size * cfg.algorithm.n_samples_per_prompt


def _model_shape(cfg) -> dict:
    """The policy's matmul parameters (every Linear, plus the output head once) and its widths."""
    from transformers import AutoConfig

    from lmm_r1_ascend.workers.builders import resolve_actor_path

    c = AutoConfig.from_pretrained(resolve_actor_path(cfg))
    d, f, layers, heads, kv = (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
                               c.num_key_value_heads)
    head_dim = d // heads
    per_layer = d * d + 2 * d * kv * head_dim + d * d + 3 * d * f  # q, k, v, o, gate/up/down
    return {"matmul_params": layers * per_layer + d * c.vocab_size, "hidden": d, "layers": layers}


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


def trl_args(cfg, output_dir: str, max_steps: int):
    """TRL's GRPOConfig for the workload `cfg`: every field whose default differs from ours, or
    that decides the step's cost, set from our resolved config (see SETTINGS for the pairs)."""
    import torch
    from trl import GRPOConfig

    rows = _rows(cfg)
    return GRPOConfig(
        output_dir=output_dir, use_cpu=True, seed=cfg.seed, max_steps=max_steps,
        # batch: one generation of 128 rows, one optimizer step of one forward/backward over them
        per_device_train_batch_size=rows, gradient_accumulation_steps=1, generation_batch_size=rows,
        num_generations=cfg.algorithm.n_samples_per_prompt, shuffle_dataset=cfg.data.shuffle,
        # sampling: transformers generate with its dynamic KV cache on both sides, no vLLM, no compile
        max_completion_length=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p, top_k=0 if cfg.rollout.top_k == -1 else cfg.rollout.top_k, min_p=None,
        repetition_penalty=1.0, cache_implementation=None, use_vllm=False, torch_compile=False,
        use_transformers_paged=False, pad_to_multiple_of=None,
        # objective: group-mean baseline without std scaling, token-mean loss, no KL, on-policy
        beta=0.0, num_iterations=1, epsilon=cfg.algorithm.eps_clip, epsilon_high=cfg.algorithm.eps_clip,
        scale_rewards="none", loss_type="dapo", mask_truncated_completions=False, top_entropy_quantile=1.0,
        importance_sampling_level="token", entropy_coef=cfg.algorithm.entropy_loss_coef,
        delta=None,  # no upper clamp of the ratio (two-sided clipping): ours has none
        disable_dropout=False,  # ours keeps the checkpoint's dropout (demo-fre: attention_dropout 0.0)
        # optimizer: torch AdamW (for-loop on CPU tensors, as ours: foreach=False), constant lr
        optim="adamw_torch", learning_rate=cfg.optim.actor_lr, adam_beta1=cfg.optim.adam_betas[0],
        adam_beta2=cfg.optim.adam_betas[1], adam_epsilon=ADAM_EPS, weight_decay=cfg.optim.weight_decay,
        max_grad_norm=cfg.optim.max_norm, lr_scheduler_type="constant", warmup_steps=0,
        # precision and memory: fp32 weights and compute, no activation checkpointing (GRPOConfig's
        # defaults are bf16=True and gradient_checkpointing=True; ours runs neither on the demo)
        # attention: transformers' SDPA for TRL (its default, set explicitly); ours runs its backend's kernels
        # (packed varlen in the update, the decode kernel in generation): the settings table prints both
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"}, bf16=False, fp16=False,
        activation_checkpointing=cfg.model.gradient_checkpointing, cast_lm_head_to_fp32=False, use_liger_kernel=False,
        # overheads: no completion logging, no saving, no reporting, no dataloader workers
        log_completions=False, logging_steps=1, report_to=[], save_strategy="no", eval_strategy="no",
        dataloader_num_workers=0, disable_tqdm=True)


# (setting, our config key, TRL GRPOConfig field): printed side by side with their resolved values
SETTINGS = [
    ("rows per rollout", "rollout.rollout_batch_size*algorithm.n_samples_per_prompt", "generation_batch_size"),
    ("samples per prompt", "algorithm.n_samples_per_prompt", "num_generations"),
    ("rows per generate call", "rollout.micro_rollout_batch_size*algorithm.n_samples_per_prompt",
     "generation_batch_size"),
    ("optimizer steps per rollout", "rollouts/train_batch_size", "steps_per_generation"),
    ("micro-batch", "trainer.max_tokens_per_micro_batch", "per_device_train_batch_size"),
    ("gradient accumulation", "(micro-batches per step: 1)", "gradient_accumulation_steps"),
    ("max new tokens", "rollout.max_new_tokens", "max_completion_length"),
    ("max prompt tokens", "data.max_prompt_len", "(no truncation)"),
    ("temperature", "rollout.temperature", "temperature"),
    ("top_p", "rollout.top_p", "top_p"),
    ("top_k (off)", "rollout.top_k", "top_k"),
    ("min_p / repetition penalty", "(none / 1.0)", "min_p,repetition_penalty"),
    ("KV cache", "(DynamicCache)", "cache_implementation"),
    ("attention: update / decode", "backend kernels", "model_init_kwargs"),
    ("prompt copies in the update", "model.share_prompts", "(one per sample)"),
    ("vLLM / compile", "rollout.engine", "use_vllm,torch_compile"),
    ("shuffle", "data.shuffle", "shuffle_dataset"),
    ("KL / reference model", "algorithm.init_kl_coef,algorithm.use_kl_loss", "beta"),
    ("updates per rollout", "trainer.max_epochs", "num_iterations"),
    ("clip", "algorithm.eps_clip", "epsilon,epsilon_high"),
    ("advantage", "algorithm.advantage_estimator,algorithm.advantage_normalization", "scale_rewards"),
    ("loss aggregation", "algorithm.loss_agg_mode", "loss_type"),
    ("entropy coef", "algorithm.entropy_loss_coef", "entropy_coef"),
    ("optimizer", "(torch AdamW, foreach=False)", "optim"),
    ("learning rate / schedule", "optim.actor_lr,optim.lr_scheduler,optim.lr_warmup_ratio",
     "learning_rate,lr_scheduler_type,warmup_steps"),
    ("Adam betas / eps", "optim.adam_betas,(eps 1e-8)", "adam_beta1,adam_beta2,adam_epsilon"),
    ("weight decay / grad clip", "optim.weight_decay,optim.max_norm", "weight_decay,max_grad_norm"),
    ("precision", "model.dtype", "bf16,fp16,model_init_kwargs"),
    ("activation checkpointing", "model.gradient_checkpointing", "activation_checkpointing"),
    ("seed", "seed", "seed"),
    ("dataloader workers", "(none)", "dataloader_num_workers"),
    ("completion logging", "(none)", "log_completions"),
]


def settings_table(cfg, args) -> str:
    """Both trainers' effective settings side by side: our resolved config, TRL's GRPOConfig after __post_init__."""
    def ours(key: str) -> str:
        if key.startswith("("):
            return key[1:-1]
        if key == "rollouts/train_batch_size":
            return str(_rows(cfg) // cfg.trainer.train_batch_size)
        if key == "model.share_prompts":
            return "one per prompt" if cfg.model.share_prompts else "one per sample"
        if key == "backend kernels":
            from lmm_r1_ascend.backends import get_backend

            kernels = get_backend(cfg.device).select_kernels()
            return f"{kernels.attention.name} varlen / {kernels.decode_attention.name}"
        out = []
        for k in key.split(","):
            if k.startswith("("):
                out.append(k[1:-1])
                continue
            vals = []
            for factor in k.split("*"):
                v = cfg
                for part in factor.split("."):
                    v = getattr(v, part)
                vals.append(v)
            out.append(str(vals[0] * vals[1] if len(vals) == 2 else vals[0]))
        return " / ".join(out)

    def theirs(key: str) -> str:
        if key.startswith("("):
            return key[1:-1]
        if key == "model_init_kwargs":  # the one setting of it this row names; both phases use it
            impl = args.model_init_kwargs.get("attn_implementation", "transformers' default")
            return f"{impl} / {impl}"
        vals = [getattr(args, k) for k in key.split(",")]
        return " / ".join(str(getattr(v, "value", v)) for v in vals)

    lines = [f"{'setting':<28} {'ours':<28} {'TRL':<28} ours' key | TRL's GRPOConfig field"]
    for name, our_key, trl_key in SETTINGS:
        lines.append(f"{name:<28} {ours(our_key):<28} {theirs(trl_key):<28} {our_key} | {trl_key}")
    return "\n".join(lines)


def run_trl(workload: str, steps: int, tmp: str) -> dict:
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    from lmm_r1_ascend.rewards.math_reward import MathReward
    from lmm_r1_ascend.rewards.types import RewardInput
    from lmm_r1_ascend.workers.builders import resolve_actor_path

    cfg = _config(f"{tmp}/trl-data", steps + 1, _data_file(workload, tmp))
    model_path = resolve_actor_path(cfg)
    reward = MathReward(format_weight=cfg.reward.format_weight, workers=cfg.reward.workers)

    def math_reward(prompts, completions, label, **_):
        return [o.total for o in reward([RewardInput(response=c, label=g) for c, g in zip(completions, label)])]

    rows = _rows(cfg)
    args = trl_args(cfg, f"{tmp}/trl", steps + 1)
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
    return {"steps": out[1:], "peak_rss_mb": _peak_rss_mb(), "rows": rows, "model": _model_shape(cfg)}


# ---------------------------------------------------------------------------------- parent
def _worker_main(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        fn = run_ours if args.worker == "ours" else run_trl
        if args.profile:  # cProfile over the whole run (warm-up step included), top entries to a file
            import cProfile
            import io
            import pstats

            prof = cProfile.Profile()
            result = prof.runcall(fn, args.workload[0], args.steps, tmp)
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(40)
            Path(args.profile).write_text(text.getvalue())
        else:
            result = fn(args.workload[0], args.steps, tmp)
    print("RESULT " + json.dumps(result), flush=True)


def _spawn(who: str, workload: str, steps: int, threads: int, profile: str | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    cmd = [sys.executable, __file__, "--worker", who, "--workload", workload, "--steps", str(steps),
           "--threads", str(threads)] + (["--profile", profile] if profile else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{who} worker ({workload}) failed with exit code {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def matmul_flops(threads: int, n: int = 1024, reps: int = 10) -> float:
    """This CPU's fp32 GEMM rate (FLOP/s) at `threads` threads: the best of `reps` (n x n) @ (n x n)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)
        best = math.inf
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - t0)
        return 2 * n**3 / best
    finally:
        torch.set_num_threads(before)


def update_flops(step: dict, model: dict) -> float:
    """The actor update's useful FLOPs for one step: 6 x matmul params x tokens (forward 2, backward 4)
    + attention 12 x layers x hidden x sum(L_i^2) (QK^T and AV, 2 FLOPs a multiply-add, fwd + bwd 3x;
    causal masking not discounted), L_i = prompt + response tokens of sequence i. Padding not counted."""
    return 6 * model["matmul_params"] * step["tokens"] + 12 * model["layers"] * model["hidden"] * step["sum_sq_len"]


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(s[key] for r in runs for s in r["steps"])


def _versions(threads: int) -> str:
    import torch
    import transformers
    import trl

    return (f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
            f"python {platform.python_version()}, {platform.machine()} {os.cpu_count()} cores, {threads} threads")


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def report(workload: str, runs: dict[str, list[dict]], gemm: float) -> tuple[str, float]:
    """The workload's table and its ours / TRL step-time ratio."""
    rows = runs["ours"][0]["rows"]
    lines = [f"workload {workload}: {len(runs['ours'])} runs each, {len(runs['ours'][0]['steps'])} measured steps "
             "per run (after 1 warm-up), medians over all measured steps",
             f"{'trainer':<8} {'step s':>8} {'generation s':>13} {'update s':>9} {'resp len':>9} {'gen tok/s':>10} "
             f"{'step tok/s':>11} {'peak RSS MB':>12}"]
    for who, rs in runs.items():
        steps = [s for r in rs for s in r["steps"]]
        step_tok_s = statistics.median(s["response_tokens"] / s["step"] for s in steps)
        gen_tok_s = statistics.median(s["response_tokens"] / s["generation"] for s in steps)
        length = statistics.median(s["response_tokens"] / rows for s in steps)
        lines.append(f"{who:<8} {_median(rs, 'step'):>8.3f} {_median(rs, 'generation'):>13.3f} "
                     f"{_median(rs, 'update'):>9.3f} {length:>9.1f} {gen_tok_s:>10.0f} {step_tok_s:>11.0f} "
                     f"{max(r['peak_rss_mb'] for r in rs):>12.0f}")
    per_run = {who: {k: [statistics.median(s[k] for s in r["steps"]) for r in rs]
                     for k in ("step", "generation", "update")} for who, rs in runs.items()}
    parts = ("step", "generation", "update")
    pairs = {k: [o / t for o, t in zip(per_run["ours"][k], per_run["trl"][k])] for k in parts}
    ratio = {k: _median(runs["ours"], k) / _median(runs["trl"], k) for k in parts}
    lines.append("per-run median step s: " + "; ".join(
        f"{who} {', '.join(f'{x:.3f}' for x in d['step'])}" for who, d in per_run.items()))
    for k in parts:
        lines.append(f"ours / TRL {k}: {ratio[k]:.3f} (per run pair {', '.join(f'{p:.2f}' for p in pairs[k])}; "
                     f"spread {min(pairs[k]):.2f}-{max(pairs[k]):.2f})")
    ours_steps = [s for r in runs["ours"] for s in r["steps"]]
    model = runs["ours"][0]["model"]
    flops = statistics.median(update_flops(s, model) for s in ours_steps)
    lines.append(f"update FLOPs/step {flops / 1e9:.1f} G (6 x {model['matmul_params']:,} matmul params x tokens "
                 f"+ 12 x layers x hidden x sum L^2); fraction of the measured GEMM rate {gemm / 1e9:.1f} GFLOP/s: "
                 f"ours {flops / _median(runs['ours'], 'update') / gemm:.1%}, "
                 f"TRL {flops / _median(runs['trl'], 'update') / gemm:.1%} (the same useful FLOPs; TRL also "
                 "computes its padding)")
    done = statistics.median(update_flops(dict(s, tokens=s["computed_tokens"]), model) for s in ours_steps)
    if done != flops:
        lines.append(f"ours computes {done / 1e9:.1f} G of them (shared prompts: the matmuls run on "
                     f"{statistics.median(s['computed_tokens'] for s in ours_steps):.0f} of "
                     f"{statistics.median(s['tokens'] for s in ours_steps):.0f} tokens; attention unchanged): "
                     f"{done / _median(runs['ours'], 'update') / gemm:.1%} of the GEMM rate")
    return "\n".join(lines), ratio["step"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="subprocess runs per trainer and workload")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per run (after one warm-up)")
    parser.add_argument("--workload", nargs="+", choices=["demo", "longtail"], default=["demo", "longtail"])
    parser.add_argument("--threads", type=int, default=THREADS, help="torch / OpenMP threads of every worker")
    parser.add_argument("--guard", action="store_true",
                        help=f"regression guard: exit 1 when ours / TRL step time is above {GUARD_LIMIT} on a "
                        "workload")
    parser.add_argument("--profile", metavar="DIR",
                        help="write each worker's cProfile top 40 to DIR/<who>-<workload>-<run>.txt")
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker_main(args)
    try:
        import trl  # noqa: F401
    except ImportError:
        sys.exit("bench_vs_trl needs trl importable next to lmm_r1_ascend; see this script's docstring for a venv "
                 "recipe that pins the CPU torch")
    print(f"lmm_r1_ascend vs TRL GRPOTrainer, {time.strftime('%Y-%m-%d %H:%M')}: {_versions(args.threads)}; "
          f"at start {_load()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(tmp, args.steps + 1, None)
        print("effective settings (ours: resolved TrainConfig; TRL: GRPOConfig after __post_init__):\n"
              + settings_table(cfg, trl_args(cfg, tmp, args.steps + 1)), flush=True)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    ratios: dict[str, float] = {}
    for workload in args.workload:
        runs: dict[str, list[dict]] = {"ours": [], "trl": []}
        gemm = [matmul_flops(args.threads)]
        for i in range(args.runs):
            for who in runs:
                prof = f"{args.profile}/{who}-{workload}-{i}.txt" if args.profile else None
                runs[who].append(_spawn(who, workload, args.steps, args.threads, prof))
            gemm.append(matmul_flops(args.threads))
        text, ratios[workload] = report(workload, runs, statistics.median(gemm))
        print(text + f"\nGEMM fp32 {args.threads} threads, GFLOP/s per run pair: "
              f"{', '.join(f'{g / 1e9:.1f}' for g in gemm)}; after this workload {_load()}", flush=True)
    if args.guard:
        bad = {w: r for w, r in ratios.items() if r > GUARD_LIMIT}
        print("GUARD " + ", ".join(f"{w} ours/TRL {r:.3f}" for w, r in ratios.items()) + f" (limit {GUARD_LIMIT})")
        if bad:
            sys.exit("GUARD FAILED: ours / TRL step time above " + f"{GUARD_LIMIT} on "
                     + ", ".join(f"{w} ({r:.3f})" for w, r in bad.items())
                     + ": our trainer has regressed against TRL's GRPOTrainer (rerun once to rule out load)")
        print("GUARD OK")


if __name__ == "__main__":
    main()
