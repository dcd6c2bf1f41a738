"""Build the CPU demo's starting model: a tiny Qwen2 given a head start by supervised warm-up.

The demo (issue 6) runs FRE RL on generated arithmetic problems (lmm_r1_ascend.demo.arithmetic)
with the LMM-R1 format + accuracy reward, and must show the accuracy reward rise within minutes
on 2 CPU cores. A random model never earns a reward, and a fully trained one leaves nothing to
learn, so this script trains a policy that can do the sums but is sloppy about it:

- every target has the exact LMM-R1 format; a *worked* one writes the step out and is right:
  ``<think> 23 + 58 = 81 </think><answer> $\\boxed{81}$ </answer>``; a *hasty* one does not:
  ``<think> 23 + 58 </think><answer> $\\boxed{80}$ </answer>``;
- most steps (all but ``sloppy_steps``) train on right targets, mostly worked, so the model
  learns the sums;
- the last ``sloppy_steps`` make hasty targets the majority (worked only ``worked_frac``) and
  their boxed answers noisy: right ``hasty_correct`` of the time, otherwise off by 1, 2 or 10.
  Few steps at a low learning rate: the worked form keeps most of its accuracy.

Sampled at temperature 1 the model is well formed, mostly hasty and so mostly wrong (modest
pass@1), but right within 8 tries for most problems (high pass@8). RL with a group baseline
turns that gap into pass@1, chiefly by learning to work the steps out (its responses grow, as
in the paper's FRE stage).

    python scripts/build_demo_model.py            # writes lmm_r1_ascend/demo/assets/fre-warmup/
    python scripts/build_demo_model.py --out /tmp/warmup --steps 300

Deterministic for a given machine: seeded weights, seeded targets, one thread.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from lmm_r1_ascend.demo.arithmetic import (
    DEFAULT_LEVEL, Problem, generate_problems, problem_messages, split_size, worked_response,
)
from lmm_r1_ascend.models.tiny import build_tokenizer
from lmm_r1_ascend.rewards import MathReward, RewardInput, extract_response

ASSET_DIR = Path(__file__).resolve().parents[1] / "lmm_r1_ascend" / "demo" / "assets" / "fre-warmup"
MAX_BYTES = 5 * 1024 * 1024


@dataclass
class WarmupConfig:
    level: int = DEFAULT_LEVEL
    seed: int = 0
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 384
    steps: int = 1300
    sloppy_steps: int = 100  # the last steps, where hasty targets become the majority and noisy
    batch: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 30
    worked_frac_early: float = 0.8  # share of worked targets before the sloppy steps
    hasty_correct_early: float = 1.0  # share of right hasty targets before the sloppy steps
    worked_frac: float = 0.2  # share of worked targets in the sloppy steps
    hasty_correct: float = 0.2  # share of right hasty targets in the sloppy steps
    eval_prompts: int = 64
    samples: int = 8
    max_new_tokens: int = 48


def hasty_response(problem: Problem, answer: int) -> str:
    return f"<think> {problem.expression} </think><answer> $\\boxed{{{answer}}}$ </answer>"


def warmup_target(problem: Problem, rng: random.Random, cfg: WarmupConfig, sloppy: bool = True) -> str:
    """One supervised target for ``problem``: worked (always right) with probability
    ``worked_frac`` (``worked_frac_early`` unless ``sloppy``); otherwise hasty, right with
    probability ``hasty_correct`` (``hasty_correct_early`` unless ``sloppy``)."""
    if rng.random() < (cfg.worked_frac if sloppy else cfg.worked_frac_early):
        return worked_response(problem)
    answer = problem.answer
    if rng.random() >= (cfg.hasty_correct if sloppy else cfg.hasty_correct_early):
        delta = rng.choice((1, 2, 10)) * rng.choice((-1, 1))
        answer = answer + delta if answer + delta >= 0 else answer - delta
    return hasty_response(problem, answer)


def load_tokenizer():
    """The tiny tokenizer as the trainer will load it from a checkpoint folder.

    ``AutoTokenizer`` on a folder whose config.json says qwen2 yields ``Qwen2Tokenizer``, whose
    pre-tokenizer (Qwen's regex: one digit per piece) differs from the one ``build_tokenizer``
    trains with; so build, save next to a qwen2 config, and load back, to train on exactly the
    token ids that rollouts will see.
    """
    import tempfile

    from transformers import AutoTokenizer, Qwen2Config

    with tempfile.TemporaryDirectory() as tmp:
        build_tokenizer().save_pretrained(tmp)
        Qwen2Config().save_pretrained(tmp)
        return AutoTokenizer.from_pretrained(tmp)


def build_model(tokenizer, cfg: WarmupConfig, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=1024, rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def prompt_ids(tokenizer, problem: Problem) -> list[int]:
    """Token ids of the templated prompt (system + question + assistant header)."""
    text = tokenizer.apply_chat_template(problem_messages(problem), add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def sft_batch(tokenizer, prompts: list[list[int]], targets: list[str]):
    """Right-padded (input_ids, attention_mask, labels), each (B, T) int64; labels -100 off the response."""
    rows = []
    for p, t in zip(prompts, targets):
        r = tokenizer(t + "<|im_end|>", add_special_tokens=False)["input_ids"]
        rows.append((p + r, [-100] * len(p) + r))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in rows])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    return ids, mask, labels


def common_prefix_len(rows: list[list[int]]) -> int:
    """Length of the longest prefix all ``rows`` share, kept shorter than the shortest row."""
    n = min(len(r) for r in rows) - 1
    for i in range(n):
        if any(r[i] != rows[0][i] for r in rows):
            return i
    return n


def sft_loss(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, prefix: int) -> torch.Tensor:
    """Mean token cross-entropy of a right-padded (B, T) batch whose first ``prefix`` tokens are the
    same in every row and unlabelled (the system prompt): that prefix runs once (batch 1) and its
    KV cache is repeated over the batch, which halves the cost here; loss and gradients equal those
    of the plain forward (checked to 1e-7)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(input_ids=ids[:1, :prefix], past_key_values=cache, use_cache=True)
    cache.batch_repeat_interleave(ids.shape[0])
    pos = torch.arange(prefix, ids.shape[1]).expand(ids.shape[0], -1)
    return model(input_ids=ids[:, prefix:], attention_mask=mask, position_ids=pos, past_key_values=cache,
                 labels=labels[:, prefix:]).loss


def cosine_schedule(opt, warmup: int, steps: int):
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10% at ``steps`` (the VL builder's too)."""
    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    return torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def optimizer_step(model, opt, sched, loss: torch.Tensor) -> None:
    """Backward, clip the model's gradient norm to 1, step the optimizer and the schedule (the VL builder's too)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()


def train(model, tokenizer, problems: list[Problem], cfg: WarmupConfig, log=print,
          on_step=None) -> list[float]:
    """Supervised warm-up with AdamW, linear warm-up then cosine decay to 10%; returns the losses."""
    rng = random.Random(f"targets|{cfg.seed}")
    prompts = [prompt_ids(tokenizer, p) for p in problems]
    prefix = common_prefix_len(prompts)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    sched = cosine_schedule(opt, cfg.warmup_steps, cfg.steps)
    model.train()
    losses, order = [], []
    for step in range(cfg.steps):
        if len(order) < cfg.batch:
            perm = list(range(len(problems)))
            rng.shuffle(perm)
            order += perm
        idx, order = order[: cfg.batch], order[cfg.batch:]
        sloppy = step >= cfg.steps - cfg.sloppy_steps
        ids, mask, labels = sft_batch(tokenizer, [prompts[i] for i in idx],
                                      [warmup_target(problems[i], rng, cfg, sloppy) for i in idx])
        loss = sft_loss(model, ids, mask, labels, prefix)
        optimizer_step(model, opt, sched, loss)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step)
        if step % 50 == 0 or step == cfg.steps - 1:
            log(f"step {step:4d}  loss {loss.item():.4f}  lr {sched.get_last_lr()[0]:.2e}")
    model.eval()
    return losses


@torch.no_grad()
def sample(model, tokenizer, problems: list[Problem], n: int, max_new_tokens: int, greedy: bool = False):
    """Generate ``n`` responses per problem. Returns (sequences (B*n, P+R) int64, prompt width P,
    response texts as extracted for the reward, in problem-major order)."""
    old_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    texts = [tokenizer.decode(prompt_ids(tokenizer, p)) for p in problems]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = old_side
    out = model.generate(
        **enc, do_sample=not greedy, temperature=1.0 if not greedy else None, top_k=0 if not greedy else None,
        top_p=1.0 if not greedy else None, max_new_tokens=max_new_tokens, num_return_sequences=n,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )
    width = enc["input_ids"].shape[1]
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=False)
    responses = [extract_response(t) for t in texts]
    return out, width, responses


def score(reward: MathReward, problems: list[Problem], responses: list[str], n: int):
    """(format, accuracy) float lists, one per response (problem-major, ``n`` per problem)."""
    labels = [p.label for p in problems for _ in range(n)]
    outs = reward([RewardInput(response=r, label=lab) for r, lab in zip(responses, labels)])
    return [o.components["format"] / 0.5 for o in outs], [o.components["accuracy"] for o in outs]


def evaluate(model, tokenizer, problems: list[Problem], n: int, max_new_tokens: int) -> dict:
    """Format rate and pass@1 / pass@n at temperature 1 (pass@1 averaged over the n samples),
    greedy accuracy, share of worked responses, mean response length in characters."""
    with MathReward(workers=0) as reward:
        _, _, responses = sample(model, tokenizer, problems, n, max_new_tokens)
        fmt, acc = score(reward, problems, responses, n)
        _, _, greedy = sample(model, tokenizer, problems, 1, max_new_tokens, greedy=True)
        _, gacc = score(reward, problems, greedy, 1)
    per_problem = [acc[i * n:(i + 1) * n] for i in range(len(problems))]
    return {
        "format_rate": sum(fmt) / len(fmt),
        "pass@1": sum(acc) / len(acc),
        f"pass@{n}": sum(max(a) for a in per_problem) / len(problems),
        "greedy_accuracy": sum(gacc) / len(gacc),
        "worked_share": sum(" = " in r.split("</think>")[0] for r in responses) / len(responses),
        "mean_response_chars": sum(len(r) for r in responses) / len(responses),
        "prompts": len(problems), "samples_per_prompt": n,
    }


def save_checkpoint(model, tokenizer, out: Path) -> int:
    """Write config, fp32 safetensors and tokenizer files; returns the weights' size in bytes."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "model.safetensors").chmod(0o644)  # the writer leaves it owner-only; it ships in the package
    size = (out / "model.safetensors").stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"error: model.safetensors is {size} bytes, over the 5 MB budget; "
                         "shrink --hidden or --layers")
    return size


def write_provenance(out: Path, cfg: WarmupConfig, figures: dict, size: int, seconds: float) -> None:
    """warmup.json (settings and measured figures) and a README for the checkpoint folder."""
    meta = {"made_by": "scripts/build_demo_model.py", "config": asdict(cfg),
            "train_problems": split_size("train", cfg.level), "eval": figures,
            "build_seconds": round(seconds, 1), "weights_bytes": size, "torch": torch.__version__}
    (out / "warmup.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "README.md").write_text(
        "# fre-warmup: the CPU demo's starting policy\n\n"
        "A tiny Qwen2 (tokenizer of lmm_r1_ascend/models/tiny.py, as AutoTokenizer loads it) warmed up "
        f"on the train split of the generated arithmetic problems (lmm_r1_ascend.demo.arithmetic, level "
        f"{cfg.level}) with targets in the exact LMM-R1 format. For {cfg.steps - cfg.sloppy_steps} steps the "
        "targets are right, mostly *worked* "
        "(`<think> 23 + 58 = 81 </think><answer> $\\boxed{81}$ </answer>`); "
        f"for the last {cfg.sloppy_steps} they are mostly *hasty* (`<think> 23 + 58 </think><answer> "
        f"$\\boxed{{80}}$ </answer>`, right {cfg.hasty_correct:.0%} of the time, else off by 1, 2 or 10). "
        "The result can do the sums but is sloppy: well formed, modest pass@1, high pass@8, which leaves "
        "RL room to improve (by learning to work the steps out).\n\n"
        "Rebuild: `python scripts/build_demo_model.py` (deterministic on one machine; all settings in "
        "warmup.json). Figures on the eval split at temperature 1 with MathReward:\n\n"
        + "\n".join(f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in figures.items())
        + "\n")


def parse_args(argv: list[str] | None, config_cls: type = WarmupConfig, default_out: Path = ASSET_DIR,
               description: str | None = None):
    """(--out, config_cls(**flags)): one --flag per field of the dataclass `config_cls` (the VL builder's too)."""
    ap = argparse.ArgumentParser(description=description or __doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=default_out)
    for f in fields(config_cls):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    args = vars(ap.parse_args(argv))
    out = args.pop("out")
    return out, config_cls(**args)


def main(argv: list[str] | None = None) -> dict:
    out, cfg = parse_args(argv)
    torch.set_num_threads(1)
    start = time.monotonic()
    tokenizer = load_tokenizer()
    model = build_model(tokenizer, cfg, cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    train_set = generate_problems(split_size("train", cfg.level), split="train", level=cfg.level,
                                  seed=cfg.seed)
    print(f"model: {n_params} parameters; {len(train_set)} train problems at level {cfg.level}", flush=True)
    train(model, tokenizer, train_set, cfg, log=lambda s: print(s, flush=True))
    trained = time.monotonic() - start
    size = save_checkpoint(model, tokenizer, out)
    eval_set = generate_problems(min(cfg.eval_prompts, split_size("eval", cfg.level)), split="eval",
                                 level=cfg.level, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    figures = evaluate(model, tokenizer, eval_set, cfg.samples, cfg.max_new_tokens)
    figures["sft_seconds"] = round(trained, 1)
    write_provenance(out, cfg, figures, size, time.monotonic() - start)
    print(json.dumps({**figures, "weights_bytes": size, "out": str(out)}, indent=1), flush=True)
    return figures


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
