"""Peak memory and time of chunked vs naive token log-probs, forward + backward.

    python benchmarks/bench_logprobs.py [--tokens 4096] [--vocab 151936] [--hidden 512]
        [--chunk-size 1024] [--dtype float32] [--entropy] [--device cpu]

Prints one table: peak memory above the inputs and wall time of one forward + backward
for `token_logprobs_naive` and `token_logprobs`, and naive/chunked ratios.

How peak memory is measured (the figure is "bytes above the inputs", the same for both):
- CPU: torch has no allocator statistics for CPU, so each implementation runs in a fresh
  Python subprocess and the peak is the kernel's resident-set high-water mark
  (getrusage ru_maxrss) minus the resident set just before the forward, when the inputs
  (hidden, weight, labels, upstream gradient) already exist. RSS also sees memory that
  bypasses torch's allocator (BLAS scratch buffers). The worker runs with glibc's mmap
  threshold fixed at 128 KiB, so every sizeable block is mmap-ed and returned to the
  system when freed: RSS then follows live memory and its high-water mark is the peak
  (checked against a per-tensor count of live storages: within a few percent).
  A fresh process per implementation keeps one run's peak from hiding the other's. An
  8-token warm-up with a frozen weight first faults in library code and BLAS state (tens
  of MiB of RSS otherwise charged to the run) without allocating much itself. The time
  is that of the single measured run.
- Accelerators (cuda, npu, ... via torch.accelerator): one warm-up run, then
  reset_peak_memory_stats and max_memory_allocated minus memory_allocated before the
  timed run: exact allocator bytes. The time is that of the second run, synchronized.
Gradient buffers produced by the backward (d hidden, d weight) count in both figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

IMPLS = ("naive", "chunked")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_case(
    impl: str,
    *,
    tokens: int,
    vocab: int,
    hidden: int,
    dtype: str = "float32",
    chunk_size: int = 1024,
    entropy: bool = False,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """One forward + backward of `impl` in this process; returns peak bytes above inputs and seconds.

    On CPU the peak is only meaningful in a fresh process (ru_maxrss is a process-wide
    high-water mark); use `measure`, which arranges that.
    """
    from lmm_r1_ascend.kernels.logprobs import token_logprobs, token_logprobs_naive

    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    dev = torch.device(device)
    torch.manual_seed(seed)
    dt = getattr(torch, dtype)
    h = torch.randn(tokens, hidden, device=dev, dtype=dt).requires_grad_()
    w = (torch.randn(vocab, hidden, device=dev, dtype=dt) * hidden**-0.5).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), device=dev)
    g_lp = torch.randn(tokens, device=dev)
    g_ent = torch.randn(tokens, device=dev) if entropy else None

    def step(n: int = tokens, weight: torch.Tensor = w) -> None:
        h.grad = w.grad = None
        if impl == "naive":
            out = token_logprobs_naive(h[:n], weight, labels[:n], return_entropy=entropy)
        else:
            out = token_logprobs(h[:n], weight, labels[:n], chunk_size=chunk_size, return_entropy=entropy)
        loss = (out[0] * g_lp[:n]).sum() + (out[1] * g_ent[:n]).sum() if entropy else (out * g_lp[:n]).sum()
        loss.backward()
        del out, loss

    if dev.type == "cpu":
        # Warm-up on a few tokens with a frozen weight: faults in library code pages and
        # BLAS/thread-pool state (tens of MiB of RSS) without a large allocation of its own.
        step(min(tokens, 8), w.detach())
        h.grad = None
        base = _rss_bytes()
        t0 = time.perf_counter()
        step()
        seconds = time.perf_counter() - t0
        peak = _max_rss_bytes() - base
        method = "cpu: ru_maxrss - rss before forward, fresh process, after an 8-token warm-up"
    else:
        acc = torch.accelerator
        step()  # warm-up: kernels, allocator pools, library handles
        h.grad = w.grad = None
        acc.synchronize()
        acc.reset_peak_memory_stats()
        base = acc.memory_allocated()
        t0 = time.perf_counter()
        step()
        acc.synchronize()
        seconds = time.perf_counter() - t0
        peak = acc.max_memory_allocated() - base
        method = f"{dev.type}: torch.accelerator max_memory_allocated - allocated before, warm run"
    return {"impl": impl, "peak_bytes": int(peak), "seconds": seconds, "method": method}


def measure(impl: str, **case) -> dict:
    """`run_case` in a fresh subprocess on CPU (sound ru_maxrss), in-process on accelerators."""
    if torch.device(case.get("device", "cpu")).type != "cpu":
        return run_case(impl, **case)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps({"impl": impl, **case})]
    # A fixed glibc mmap threshold: every allocation >= 128 KiB is mmap-ed and unmapped on
    # free, so RSS follows live memory (the default dynamic threshold serves blocks up to
    # 32 MiB from the heap, whose freed holes inflate RSS with fragmentation).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 << 10)}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker for {impl!r} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(**case) -> dict[str, dict]:
    """Measure every implementation on the same case; returns {impl: result}."""
    return {impl: measure(impl, **case) for impl in IMPLS}


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=512, help="memory of the logits does not depend on it")
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--entropy", action="store_true", help="also put the entropy in the loss")
    ap.add_argument("--device", default="cpu", help="cpu, or an accelerator device such as cuda / npu")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(run_case(spec.pop("impl"), **spec)))
        return
    case = dict(tokens=args.tokens, vocab=args.vocab, hidden=args.hidden, dtype=args.dtype,
                chunk_size=args.chunk_size, entropy=args.entropy, device=args.device)
    print("case:", json.dumps(case))
    one = args.tokens * args.vocab * 4
    print(f"one fp32 (tokens x vocab) buffer: {_mib(one)}; "
          f"d weight ({args.vocab} x {args.hidden} {args.dtype}), counted in both: "
          f"{_mib(args.vocab * args.hidden * torch.tensor([], dtype=getattr(torch, args.dtype)).element_size())}")
    res = compare(**case)
    print("method:", res["naive"]["method"])
    print(f"{'impl':<8} {'peak above inputs':>20} {'time fwd+bwd':>14}")
    for impl in IMPLS:
        print(f"{impl:<8} {_mib(res[impl]['peak_bytes']):>20} {res[impl]['seconds']:>12.2f} s")
    n, c = res["naive"], res["chunked"]
    print(f"memory ratio naive/chunked: {n['peak_bytes'] / max(c['peak_bytes'], 1):.2f}x   "
          f"time ratio chunked/naive: {c['seconds'] / n['seconds']:.2f}x")


if __name__ == "__main__":
    main()
