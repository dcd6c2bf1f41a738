"""Per-rank activation memory and tokens/s of a packed forward + backward at sp = 1, 2, 4.

    python benchmarks/bench_sequence_parallel.py [--tokens 16384] [--seqs 4] [--hidden 128]
        [--layers 2] [--heads 8] [--kv-heads 4] [--sizes 1,2,4] [--modes ring,ulysses]
        [--backend cpu] [--repeats 2] [--json]

One packed row of ``--seqs`` sequences totalling ``--tokens`` tokens (the last half of each
scored) goes through a Qwen2 causal LM of the given size (tiny-qwen2 vocabulary, seeded
random weights, nothing downloaded): packed_log_probs, then backward of their sum. Each SP
size runs in its own gloo process group of that many ranks (torch.multiprocessing spawn), one
after the other, so the results sit side by side in one run.

activation MB: the largest, over the ranks, of the bytes the autograd graph saves for backward
(every tensor passed to saved_tensors_hooks, counted once per storage), i.e. the activation
memory that sequence parallelism divides; weights, gradients and the attention kernel's
transient workspace are not in it. peak RSS MB: each rank's process peak resident set (all of
it: Python, torch, weights), for reference. tokens/s: the row's tokens / wall time of the
slowest rank's fastest repeat. On a CPU machine with fewer cores than ranks the ranks share
cores, so tokens/s there says nothing about scaling; the memory column is the point.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _model(args):
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmm_r1_ascend.backends import get_backend
    from lmm_r1_ascend.models.loading import prepare_for_backend
    from lmm_r1_ascend.models.tiny import ensure_tiny_model

    config = AutoConfig.from_pretrained(ensure_tiny_model("tiny-qwen2"), local_files_only=True)
    config.update(dict(hidden_size=args.hidden, intermediate_size=3 * args.hidden, num_hidden_layers=args.layers,
                       num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                       head_dim=args.hidden // args.heads, max_position_embeddings=max(4096, args.tokens)))
    config.layer_types = ["full_attention"] * args.layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    prepare_for_backend(model, get_backend(args.backend))
    return model.train()


def _samples(args, vocab):
    from lmm_r1_ascend.models.forward import Sample

    g = torch.Generator().manual_seed(1)
    base = args.tokens // args.seqs
    lengths = [base] * (args.seqs - 1) + [args.tokens - base * (args.seqs - 1)]
    return [Sample(torch.randint(10, vocab, (n,), generator=g), n // 2) for n in lengths]


class _SavedBytes:
    """Bytes of distinct storages the autograd graph saves for backward."""

    def __init__(self):
        self.seen, self.total = set(), 0

    def pack(self, t):
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in self.seen:
            self.seen.add(key)
            self.total += t.untyped_storage().nbytes()
        return t

    @staticmethod
    def unpack(t):
        return t


def _worker(rank, sp, mode, args, tmp):
    torch.set_num_threads(max(1, args.threads // sp))
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rdzv-{sp}-{mode}", rank=rank, world_size=sp)
    try:
        from lmm_r1_ascend.backends import get_backend
        from lmm_r1_ascend.kernels.collectives import sequence_parallel_group
        from lmm_r1_ascend.models.forward import packed_log_probs
        from lmm_r1_ascend.models.sequence_parallel import SequenceParallel, enable_sequence_parallel

        model = _model(args)
        samples = _samples(args, model.config.vocab_size)
        if sp > 1:
            group, sp_rank = sequence_parallel_group(sp)
            fn = get_backend(args.backend).sequence_parallel_kernels()[mode].fn
            enable_sequence_parallel(model, SequenceParallel(sp, sp_rank, group, mode, fn))
        times, saved, checksum = [], 0, 0.0
        for _ in range(args.repeats):
            model.zero_grad(set_to_none=True)
            counter = _SavedBytes()
            dist.barrier()
            start = time.perf_counter()
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
                out = packed_log_probs(model, samples)
                loss = sum(t.sum() for t in out.log_probs)
            loss.backward()
            times.append(time.perf_counter() - start)
            saved, checksum = counter.total, loss.detach().item()
        slowest = torch.tensor([min(times)])
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        peak_saved = torch.tensor([float(saved)])
        dist.all_reduce(peak_saved, op=dist.ReduceOp.MAX)
        rss = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0])  # KiB -> MiB (Linux)
        dist.all_reduce(rss, op=dist.ReduceOp.MAX)
        if rank == 0:
            with open(f"{tmp}/res-{sp}-{mode}.json", "w") as f:
                json.dump({"sp": sp, "mode": mode, "seconds": slowest.item(), "activation_mb": peak_saved.item() / 2**20,
                           "peak_rss_mb": rss.item(), "loss": checksum}, f)
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--seqs", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--sizes", default="1,2,4")
    p.add_argument("--modes", default="ring,ulysses")
    p.add_argument("--backend", default="cpu")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    runs = []
    for sp in [int(s) for s in args.sizes.split(",")]:
        for mode in (["-"] if sp == 1 else args.modes.split(",")):
            runs.append((sp, mode))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sp, mode in runs:
            mp.start_processes(_worker, args=(sp, mode, args, tmp), nprocs=sp, start_method="spawn")
            with open(f"{tmp}/res-{sp}-{mode}.json") as f:
                rows.append(json.load(f))
    base = rows[0]
    for r in rows:
        r["tokens_per_s"] = args.tokens / r["seconds"]
        r["activation_ratio"] = r["activation_mb"] / base["activation_mb"]
        r["loss_vs_sp1"] = abs(r["loss"] - base["loss"]) / max(1.0, abs(base["loss"]))
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"torch {torch.__version__}, backend {args.backend}, {args.tokens} tokens in {args.seqs} sequences, "
          f"Qwen2 hidden {args.hidden} x {args.layers} layers, {args.heads} heads / {args.kv_heads} kv heads, "
          f"fwd+bwd of packed log-probs, best of {args.repeats}")
    print(f"{'sp':>3} {'mode':<8} {'activation MB/rank':>19} {'ratio':>6} {'peak RSS MB/rank':>17} "
          f"{'tokens/s':>9} {'|loss - sp1|':>12}")
    for r in rows:
        print(f"{r['sp']:>3} {r['mode']:<8} {r['activation_mb']:>19.1f} {r['activation_ratio']:>6.2f} "
              f"{r['peak_rss_mb']:>17.0f} {r['tokens_per_s']:>9.0f} {r['loss_vs_sp1']:>12.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
