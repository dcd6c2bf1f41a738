"""The first run on real hardware, in one command (under 5 minutes on one GPU / NPU).

    python benchmarks/gpu_kit.py                        # auto device; the full 36-layer 3B text shape
    python benchmarks/gpu_kit.py --device cpu --small   # the same code paths at a small shape (CI)

Steps (each timed; a failing or skipped step is recorded with its reason, the kit goes on):
  tests       pytest -m cuda (or -m npu): the hardware-marked tests
  parity      python -m lmm_r1_ascend.parity run on this device (the CUDA / NPU golden, bf16),
              compared with tests/golden/parity-cpu.json
  actor       actor fwd+bwd tokens/s and MFU at Qwen2.5-VL-3B's text widths (36 layers; --small: 1),
              packed (one row, cu_seqlens) vs padded (B x Lmax) with the same sequences
  logprobs    peak memory of chunked (kernels/logprobs.py) vs naive (full T x V fp32 logits)
              log-probs with backward, each in a fresh process
  rollout     generated tokens/s through vLLM when it imports (else the hf engine), shape model
  weight_sync GB/s of the full weights into the rollout engine (update_weights, in place)
Writes benchmarks/results/gpu_kit_<device>_<date>.json (device name, versions, date, every step).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Dense bf16 peak TFLOP/s by device-name fragment (vendor datasheets); CPU: none (MFU not reported).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
               "910B": 313.0, "910C": 313.0}


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_TFLOPS.items():
        if key.lower() in device_name.lower():
            return value
    return None


def flops_per_token(shape, avg_len: float) -> float:
    """Training FLOPs per token (fwd + bwd = 3 x fwd): 6 x the matmul parameters (layers and the
    output head; the embedding lookup is free) + causal attention 6 x layers x hidden x avg_len."""
    layer = shape.params - shape.embed - shape.vision - shape.hidden  # decoder layers (final norm aside)
    return 6 * (layer + shape.vocab * shape.hidden) + 6 * shape.layers * shape.hidden * avg_len


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build_actor(backend, layers: int, dtype):
    """The text shape model on the device with random weights (no checkpoint written)."""
    import torch

    from lmm_r1_ascend.models.loading import enable_activation_checkpointing, prepare_for_backend
    from lmm_r1_ascend.models.shape_models import shape_config
    from lmm_r1_ascend.plan import model_shape
    from transformers import Qwen2ForCausalLM

    config = shape_config("qwen2.5-vl-3b-text-shape", layers, 0)
    torch.manual_seed(0)
    with torch.device(backend.device(0)):
        model = Qwen2ForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    prepare_for_backend(model, backend)
    enable_activation_checkpointing(model)  # as the recipes train (36 layers x 16k tokens need it)
    return model, model_shape(config)


def lengths_for(tokens: int, rows: int) -> list[int]:
    """`rows` lengths from 1/4 to all of tokens/rows x 1.6, summing to about `tokens` (padding shows)."""
    top = int(tokens / rows * 1.6)
    return [max(8, int(top * (0.25 + 0.75 * i / max(rows - 1, 1)))) for i in range(rows)]


def step_actor(backend, args) -> dict:
    import torch

    from lmm_r1_ascend.models.forward import Sample, packed_log_probs

    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    model, shape = build_actor(backend, args.layers, dtype)
    model.train()
    dev = backend.device(0)
    lengths = lengths_for(args.tokens, args.rows)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 151000, (n,), generator=g) for n in lengths]
    samples = [Sample(s.to(dev), response_length=len(s) // 2) for s in seqs]

    def packed():
        out = packed_log_probs(model, samples)
        torch.stack([x.sum() for x in out.log_probs]).sum().backward()

    def padded():
        lmax = max(lengths)
        ids = torch.zeros(len(seqs), lmax, dtype=torch.long)
        mask = torch.zeros(len(seqs), lmax, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)], mask[i, :len(s)] = s, 1
        hidden = model.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state
        from lmm_r1_ascend.models.forward import logprobs_kernel

        rows = torch.cat([hidden[i, len(s) - len(s) // 2 - 1:len(s) - 1] for i, s in enumerate(seqs)])
        labels = torch.cat([s[len(s) - len(s) // 2:] for s in seqs]).to(dev)
        logprobs_kernel(model)(rows, model.lm_head.weight, labels).sum().backward()

    result = {"layers": args.layers, "lengths": lengths, "real_tokens": sum(lengths),
              "padded_tokens": max(lengths) * len(lengths), "params": shape.params}
    peak = peak_tflops(backend_name(backend))
    for name, fn in (("packed", packed), ("padded", padded)):
        fn()  # warm-up (kernels, allocator)
        model.zero_grad(set_to_none=True)
        backend.synchronize()
        start = time.perf_counter()
        for _ in range(args.repeats):
            fn()
            model.zero_grad(set_to_none=True)
        backend.synchronize()
        seconds = (time.perf_counter() - start) / args.repeats
        tps = sum(lengths) / seconds
        flops = flops_per_token(shape, sum(n * n for n in lengths) / sum(lengths)) * tps
        result[name] = {"seconds": round(seconds, 4), "tokens_per_s": round(tps, 1),
                        "tflops": round(flops / 1e12, 2), "mfu": round(flops / 1e12 / peak, 4) if peak else None}
    result["packed_speedup"] = round(result["padded"]["seconds"] / result["packed"]["seconds"], 3)
    return result


def logprob_child(kind: str, tokens: int, device: str, dtype_name: str) -> dict:
    """Run in a fresh process: peak extra memory of one log-prob forward + backward."""
    import torch
    import torch.nn.functional as F

    from lmm_r1_ascend.backends import get_backend
    from lmm_r1_ascend.kernels.logprobs import token_logprobs

    backend = get_backend(device)
    dev = backend.device(0)
    dtype = torch.bfloat16 if dtype_name == "bfloat16" else torch.float32
    hidden = torch.randn(tokens, 2048, device=dev, dtype=dtype, requires_grad=True)
    weight = torch.empty(151936, 2048, device=dev, dtype=dtype).normal_(0, 0.02).requires_grad_()  # no temporary
    labels = torch.randint(0, 151936, (tokens,), device=dev)
    backend.synchronize()
    backend.reset_peak_memory_stats(dev)
    before = backend.memory_stats(dev)["allocated"] if dev.type != "cpu" else _rss()
    if kind == "chunked":
        out = token_logprobs(hidden, weight, labels)
    else:
        logits = F.linear(hidden, weight).float()
        out = torch.log_softmax(logits, -1).gather(-1, labels[:, None]).squeeze(-1)
    out.sum().backward()
    backend.synchronize()
    if dev.type == "cpu":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    else:
        peak = backend.memory_stats(dev)["peak_allocated"]
    return {"kind": kind, "tokens": tokens, "extra_peak_gb": round((peak - before) / 1e9, 3)}


def step_logprobs(backend, args) -> dict:
    rows = {}
    for kind in ("chunked", "naive"):
        proc = subprocess.run([sys.executable, __file__, "--_logprob-child", kind, "--device", args.device,
                               "--logprob-tokens", str(args.logprob_tokens), "--dtype", args.dtype],
                              capture_output=True, text=True, timeout=args.step_timeout, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"{kind}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
        rows[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    rows["naive_over_chunked"] = round(rows["naive"]["extra_peak_gb"] / max(rows["chunked"]["extra_peak_gb"], 1e-3), 2)
    return rows


def step_rollout_and_sync(backend, args) -> tuple[dict, dict]:
    import torch

    from lmm_r1_ascend.config import load_config
    from lmm_r1_ascend.data.types import PromptItem
    from lmm_r1_ascend.rollout.base import SamplingConfig
    from lmm_r1_ascend.workers.builders import build_rollout_engine, resolve_model_name

    try:
        import vllm  # noqa: F401

        engine_name = "vllm" if backend.name in ("cuda", "npu") else "hf"
    except ImportError:
        engine_name = "hf"
    name = f"qwen2.5-vl-3b-text-shape:layers={args.rollout_layers}"
    path = resolve_model_name(name)
    cfg = load_config("demo_fre", overrides=[f"model.pretrain={name}", f"rollout.engine={engine_name}",
                                             f"rollout.micro_rollout_batch_size={args.rollout_prompts}",
                                             f"rollout.rollout_batch_size={args.rollout_prompts}",
                                             f"trainer.train_batch_size={args.rollout_prompts}",
                                             "algorithm.n_samples_per_prompt=1", "algorithm.advantage_estimator=reinforce"])
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    engine = build_rollout_engine(cfg, path, backend.device(0), dtype)
    prompts = [PromptItem(prompt_ids=list(range(1000 + i, 1000 + i + 64)), prompt_text="") for i in range(args.rollout_prompts)]
    sampling = SamplingConfig(n=1, temperature=1.0, max_new_tokens=args.rollout_new_tokens, seed=0)
    engine.generate(prompts[:1], SamplingConfig(n=1, temperature=1.0, max_new_tokens=4, seed=0))  # warm-up
    start = time.perf_counter()
    samples = engine.generate(prompts, sampling)
    seconds = time.perf_counter() - start
    generated = sum(len(s.response_ids) for s in samples)
    rollout = {"engine": engine_name, "model": name, "prompts": len(prompts), "generated_tokens": generated,
               "seconds": round(seconds, 3), "tokens_per_s": round(generated / seconds, 1)}
    from safetensors.torch import load_file

    weights = load_file(str(Path(path) / "model.safetensors"), device=str(backend.device(0)))
    nbytes = sum(t.numel() * t.element_size() for t in weights.values())
    backend.synchronize()
    start = time.perf_counter()
    loaded = engine.update_weights(iter(weights.items()))
    backend.synchronize()
    seconds = time.perf_counter() - start
    sync = {"tensors": loaded, "gb": round(nbytes / 1e9, 3), "seconds": round(seconds, 3),
            "gb_per_s": round(nbytes / 1e9 / seconds, 2), "transport": "in place (update_weights)"}
    engine.close()
    return rollout, sync


def step_tests(backend, args) -> dict:
    marker = "npu" if backend.name == "npu" else "cuda"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", marker, "-p", "no:cacheprovider", "tests/unit",
                           "tests/parity"], capture_output=True, text=True, timeout=args.step_timeout, cwd=ROOT)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode not in (0, 5):  # 5: nothing collected / all deselected
        raise RuntimeError(f"pytest -m {marker}: {tail}")
    return {"marker": marker, "summary": tail, "rc": proc.returncode}


def step_parity(backend, args, out_dir: Path) -> dict:
    dtype = "bfloat16" if backend.name != "cpu" else "float32"
    out = out_dir / f"parity-{backend.name}.json"
    cmd = [sys.executable, "-m", "lmm_r1_ascend.parity", "run", "--device", args.device, "--dtype", dtype, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.step_timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}")
    cmp = subprocess.run([sys.executable, "-m", "lmm_r1_ascend.parity", "compare", "tests/golden/parity-cpu.json", str(out)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    return {"golden": str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out), "dtype": dtype,
            "compare_rc": cmp.returncode, "compare": cmp.stdout.strip().splitlines()[-6:] if cmp.stdout else []}


def backend_name(backend) -> str:
    import torch

    if backend.name == "cuda":
        return torch.cuda.get_device_name(0)
    if backend.name == "npu":
        return getattr(getattr(torch, "npu"), "get_device_name")(0)
    return platform.processor() or platform.machine()


def versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "deepspeed", "vllm", "torch_npu", "flash_attn"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 (absent or unimportable: recorded as such)
            out[mod] = None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--small", action="store_true", help="a CPU-sized shape (1 layer, few tokens)")
    p.add_argument("--steps", default="tests,parity,actor,logprobs,rollout")
    p.add_argument("--dtype", default=None, help="default bfloat16 on accelerators, float32 on CPU")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--budget-s", type=float, default=290.0, help="skip the remaining steps past this")
    p.add_argument("--step-timeout", type=float, default=240.0)
    p.add_argument("--_logprob-child", dest="logprob_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--logprob-tokens", type=int, default=None)
    p.add_argument("--rollout-layers", type=int, default=None, help="depth of the rollout model (default 36; small: 1)")
    args = p.parse_args(argv)

    from lmm_r1_ascend.backends import get_backend

    backend = get_backend(args.device)
    args.device = backend.name
    args.dtype = args.dtype or ("float32" if backend.name == "cpu" else "bfloat16")
    small = args.small or backend.name == "cpu"
    args.layers, args.tokens, args.rows, args.repeats = (1, 256, 4, 1) if small else (36, 16384, 16, 3)
    args.logprob_tokens = args.logprob_tokens or (2048 if small else 8192)  # > the 1024-token chunk
    args.rollout_layers = args.rollout_layers or (1 if small else 36)
    args.rollout_prompts, args.rollout_new_tokens = (2, 8) if small else (64, 256)
    if args.logprob_child:
        print(json.dumps(logprob_child(args.logprob_child, args.logprob_tokens, args.device, args.dtype)))
        return 0
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": backend.name,
              "device_name": backend_name(backend), "host": platform.node(), "small": small, "dtype": args.dtype,
              "versions": versions(), "command": " ".join(["python", "benchmarks/gpu_kit.py", *(argv or sys.argv[1:])]),
              "steps": {}}
    t0 = time.perf_counter()
    for step in args.steps.split(","):
        if time.perf_counter() - t0 > args.budget_s:
            report["steps"][step] = {"status": "skipped", "reason": f"past the {args.budget_s:g} s budget"}
            continue
        start = time.perf_counter()
        try:
            if step == "tests":
                res = step_tests(backend, args)
            elif step == "parity":
                res = step_parity(backend, args, out_dir)
            elif step == "actor":
                res = step_actor(backend, args)
            elif step == "logprobs":
                res = step_logprobs(backend, args)
            elif step == "rollout":
                res, sync = step_rollout_and_sync(backend, args)
                report["steps"]["weight_sync"] = {"status": "ok", **sync}
            else:
                raise ValueError(f"unknown step '{step}'")
            report["steps"][step] = {"status": "ok", **res}
        except Exception as err:  # noqa: BLE001 (a first run on new hardware records, then goes on)
            report["steps"][step] = {"status": "failed", "error": f"{type(err).__name__}: {err}"[:2000]}
        report["steps"][step]["wall_s"] = round(time.perf_counter() - start, 1)
        print(f"{step}: {report['steps'][step]['status']} ({report['steps'][step]['wall_s']} s)", flush=True)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    path = out_dir / f"gpu_kit_{backend.name}{'_small' if small else ''}_{time.strftime('%Y-%m-%d', time.gmtime())}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return 0 if all(s["status"] == "ok" for s in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
