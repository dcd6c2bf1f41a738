"""One actor forward + backward with shared prompts vs every sample whole, side by side.

    python benchmarks/bench_shared_prompts.py [--prompts 16] [--samples 8] [--repeats 5] [--threads 2]

GRPO-shaped micro-batches (n samples per prompt, responses of 10-39 tokens) through the shipped
warm-up models, each loaded twice (model.share_prompts on and off, kernels/shared_prompts.py):
  text  demo-fre, prompts of 60 tokens;
  vl    demo-vl (Qwen2.5-VL), prompts of 30 text tokens and one 8 x 8-patch image (16 merged pads).
The two alternate within each repeat; the first repeat is a warm-up. Prints each one's median
time, the ratio shared / whole and the tokens (and image patches) each actually runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lmm_r1_ascend.backends import get_backend
from lmm_r1_ascend.models.forward import Sample, pack_samples, packed_log_probs
from lmm_r1_ascend.models.loading import ModelSpec, load_policy
from lmm_r1_ascend.workers.builders import resolve_model_name


def make_samples(config, prompts: int, per_prompt: int, vl: bool, g: torch.Generator) -> list[Sample]:
    samples = []
    for _ in range(prompts):
        if vl:
            vc = config.vision_config
            pad = [config.vision_start_token_id] + [config.image_token_id] * 16 + [config.vision_end_token_id]
            prompt = torch.cat([torch.randint(10, 200, (20,), generator=g), torch.tensor(pad),
                                torch.randint(10, 200, (10,), generator=g)])
            width = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
            image = (torch.randn(64, width, generator=g), torch.tensor([[1, 8, 8]]))
        else:
            prompt, image = torch.randint(10, 200, (60,), generator=g), (None, None)
        for _ in range(per_prompt):
            response = torch.randint(10, 200, (int(torch.randint(10, 40, (1,), generator=g)),), generator=g)
            samples.append(Sample(torch.cat([prompt, response]), response.numel(), *image))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.prompts} prompts x {args.samples} samples, "
          f"{args.repeats} alternated repeats (the first a warm-up)")
    for name, model_name, vl in (("text", "demo-fre", False), ("vl", "demo-vl", True)):
        path = resolve_model_name(model_name)
        models = {share: load_policy(ModelSpec(path, dtype="float32", share_prompts=share), get_backend("cpu"))
                  for share in (True, False)}
        samples = make_samples(models[True].config, args.prompts, args.samples, vl, torch.Generator().manual_seed(0))
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.repeats):
            for share, model in models.items():
                model.zero_grad(set_to_none=True)
                start = time.perf_counter()
                torch.cat(packed_log_probs(model, samples).log_probs).sum().backward()
                times[share].append(time.perf_counter() - start)
        med = {share: statistics.median(t[1:]) for share, t in times.items()}
        rows = {share: pack_samples(samples, models[share].config, share_prompts=share) for share in (True, False)}
        sizes = {share: f"{r.input_ids.shape[1]} tokens" + (f", {r.pixel_values.shape[0]} patches" if vl else "")
                 for share, r in rows.items()}
        print(f"{name:<5} {model_name}: shared {med[True]:.3f} s ({sizes[True]}), whole {med[False]:.3f} s "
              f"({sizes[False]}); shared / whole {med[True] / med[False]:.2f}")


if __name__ == "__main__":
    main()
