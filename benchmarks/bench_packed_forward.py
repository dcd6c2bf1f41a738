"""Tokens/s of a packed vs a padded actor forward + backward on long-tailed RL lengths.

    python benchmarks/bench_packed_forward.py [--samples 32] [--median-response 128]
        [--sigma 1.0] [--max-response 1024] [--token-budget 4096] [--hidden 256]
        [--layers 4] [--backend cpu] [--repeats 5] [--threads N] [--json]

The model is a Qwen2 causal LM of the given size with the tiny-qwen2 tokenizer's vocabulary
and seeded random weights (nothing is downloaded). Response lengths are log-normal, like
real RL responses: round(exp(N(ln median, sigma))) clipped to [1, max]; prompts uniform in
[prompt-min, prompt-max]. The shuffled samples are split into micro-batches by a token
budget (kernels.packing.split_by_token_budget); both paths run the SAME micro-batches:
- packed: one row per micro-batch, the backend's varlen attention (models.forward);
- padded: the micro-batch right-padded to its longest sample, attention_mask, the same
  model's SDPA path.
Both then score only the response tokens with the same chunked log-prob kernel and
back-propagate their sum, so the only difference measured is packing. tokens/s counts real
(non-pad) prompt + response tokens, the same for both. The two paths alternate within each
repeat (side by side under the same machine load). On a shared machine other processes only
ever add time, so the headline figures use each path's fastest repeat (as timeit does); the
median is printed beside it. Before timing, both paths' log-prob sums on the first
micro-batch are checked to agree.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch


def make_lengths(n: int, *, median: float, sigma: float, max_response: int, prompt_min: int, prompt_max: int,
                 generator: torch.Generator) -> list[tuple[int, int]]:
    """(prompt, response) lengths: log-normal responses, uniform prompts."""
    resp = torch.exp(torch.randn(n, generator=generator) * sigma + math.log(median)).round().clamp(1, max_response)
    prompts = torch.randint(prompt_min, prompt_max + 1, (n,), generator=generator)
    return [(int(p), int(r)) for p, r in zip(prompts, resp)]


def build_model(*, hidden: int, layers: int, heads: int, kv_heads: int, seed: int, backend: str,
                cache_dir: str | None = None):
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmm_r1_ascend.backends import get_backend
    from lmm_r1_ascend.models.loading import prepare_for_backend
    from lmm_r1_ascend.models.tiny import ensure_tiny_model

    config = AutoConfig.from_pretrained(ensure_tiny_model("tiny-qwen2", cache_dir=cache_dir), local_files_only=True)
    config.update(dict(hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads))
    config.layer_types = ["full_attention"] * layers
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    finally:
        torch.random.set_rng_state(state)
    prepare_for_backend(model, get_backend(backend))
    return model.train()


def packed_step(model, samples) -> torch.Tensor:
    from lmm_r1_ascend.models.forward import packed_log_probs

    loss = torch.cat(packed_log_probs(model, samples).log_probs).sum()
    loss.backward()
    return loss.detach()


def padded_step(model, samples) -> torch.Tensor:
    from lmm_r1_ascend.kernels.logprobs import token_logprobs

    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), model.config.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(samples), width, dtype=torch.long)
    rows, cols = [], []
    for i, s in enumerate(samples):
        n, r = len(s.input_ids), s.response_length
        ids[i, :n], mask[i, :n] = s.input_ids, 1
        rows.append(torch.full((r,), i))
        cols.append(torch.arange(n - r - 1, n - 1))
    rows, cols = torch.cat(rows), torch.cat(cols)
    hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    logp = token_logprobs(hidden[rows, cols], model.get_output_embeddings().weight, ids[rows, cols + 1])
    loss = logp.sum()
    loss.backward()
    return loss.detach()


def run(*, samples: int = 32, median_response: float = 128, sigma: float = 1.0, max_response: int = 1024,
        prompt_min: int = 32, prompt_max: int = 128, token_budget: int = 4096, hidden: int = 256, layers: int = 4,
        heads: int = 4, kv_heads: int = 2, backend: str = "cpu", repeats: int = 5, seed: int = 0,
        threads: int | None = None, cache_dir: str | None = None) -> dict:
    """Measure both paths; returns a JSON-able dict of the case and the figures."""
    from lmm_r1_ascend.kernels.packing import split_by_token_budget
    from lmm_r1_ascend.models.forward import Sample

    if threads is not None:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    lengths = make_lengths(samples, median=median_response, sigma=sigma, max_response=max_response,
                           prompt_min=prompt_min, prompt_max=prompt_max, generator=gen)
    model = build_model(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, seed=seed, backend=backend,
                        cache_dir=cache_dir)
    vocab = model.config.vocab_size
    batch = [Sample(torch.randint(10, vocab, (p + r,), generator=gen), r) for p, r in lengths]
    groups = split_by_token_budget([p + r for p, r in lengths], token_budget)
    micro = [[batch[i] for i in g] for g in groups]
    real = sum(p + r for p, r in lengths)
    padded_tokens = sum(len(g) * max(len(s.input_ids) for s in g) for g in micro)

    # Same model, same samples: the two losses must agree before their speed means anything.
    a, b = packed_step(model, micro[0]), padded_step(model, micro[0])
    if not torch.allclose(a, b, rtol=1e-5, atol=1e-3):  # fp32 sums of ~1e4 log-probs
        raise RuntimeError(f"packed and padded log-prob sums differ: {a.item()} vs {b.item()}")
    model.zero_grad(set_to_none=True)

    times = {"packed": [], "padded": []}
    for _ in range(repeats):
        for name, step in (("packed", packed_step), ("padded", padded_step)):
            start = time.perf_counter()
            for mb in micro:
                step(model, mb)
                model.zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    resp = sorted(r for _, r in lengths)
    return {
        "case": dict(samples=samples, median_response=median_response, sigma=sigma, max_response=max_response,
                     prompt=[prompt_min, prompt_max], token_budget=token_budget, hidden=hidden, layers=layers,
                     heads=heads, kv_heads=kv_heads, vocab=vocab, backend=backend, repeats=repeats, seed=seed,
                     threads=torch.get_num_threads()),
        "response_lengths": {"min": resp[0], "median": resp[len(resp) // 2], "p90": resp[int(0.9 * (len(resp) - 1))],
                             "max": resp[-1]},
        "micro_batches": len(micro), "real_tokens": real, "padded_tokens": padded_tokens,
        "pad_fraction": 1 - real / padded_tokens,
        "seconds": times, "tokens_per_s": {k: real / v for k, v in best.items()},
        "speedup_packed_over_padded": best["padded"] / best["packed"],
        "speedup_of_medians": statistics.median(times["padded"]) / statistics.median(times["packed"]),
        "loss_check": [a.item(), b.item()],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--median-response", type=float, default=128)
    ap.add_argument("--sigma", type=float, default=1.0, help="log-normal sigma of response lengths")
    ap.add_argument("--max-response", type=int, default=1024)
    ap.add_argument("--prompt-min", type=int, default=32)
    ap.add_argument("--prompt-max", type=int, default=128)
    ap.add_argument("--token-budget", type=int, default=4096, help="tokens per micro-batch")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--backend", default="cpu", help="cpu or npu-emulated (attention kernel of the packed path)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the raw result as JSON")
    args = ap.parse_args(argv)
    res = run(**{k: v for k, v in vars(args).items() if k != "json"})
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print("case:", json.dumps(res["case"]))
    print("response lengths:", json.dumps(res["response_lengths"]),
          f"| {res['micro_batches']} micro-batches, {res['real_tokens']:,} real tokens, "
          f"{res['padded_tokens']:,} padded ({res['pad_fraction']:.0%} padding)")
    print(f"{'path':8} {'best s':>8} {'tokens/s':>10} {'median s':>9}   all repeats (s)")
    for name in ("packed", "padded"):
        secs = res["seconds"][name]
        print(f"{name:8} {min(secs):8.2f} {res['tokens_per_s'][name]:10,.0f} {statistics.median(secs):9.2f}   "
              + " ".join(f"{s:.2f}" for s in secs))
    print(f"packed / padded tokens/s: {res['speedup_packed_over_padded']:.2f}x "
          f"(best repeats; {res['speedup_of_medians']:.2f}x from medians)")


if __name__ == "__main__":
    main()
