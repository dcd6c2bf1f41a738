"""One PPO step of each paper recipe's algorithm at Qwen2.5-VL-3B's real widths, on CPU.

    python benchmarks/bench_real_shape.py                       # 3 recipes x {torch, ZeRO-3 x 2 ranks}
    python benchmarks/bench_real_shape.py --recipes fre_multi --engines torch --layers 1 --vision-layers 1

Each run is the train CLI itself (`python -m lmm_r1_ascend.train --recipe R ...`) with the
built-in `qwen2.5-vl-3b-shape:layers=L,vision_layers=M` model (vocab 151,936, hidden 2048,
16/2 heads, vision 1280 with window attention), packed prompts of --prompt-tokens tokens
each with one 448x448 image (256 image tokens), --samples samples per prompt, and the
recipe's own algorithm: fre_multi = reinforce_baseline with a KL reference; mgt_geo = gae with
a critic and reference; mgt_sokoban = gae with a critic, no reference, frozen vision tower
and its own Sokoban reward (each prompt is a generated level rendered at 448x448, its
env_path in the row, the recipe's instructions padded to --prompt-tokens). bf16 where the
CPU has AVX512-BF16 / AMX, fp32 otherwise. --offload-optimizer adds
distributed.offload_optimizer=true to the ZeRO-3 runs (on CPU the "host" it offloads to is
the same RAM, see docs/memory_plan.md).

Recorded per run: wall seconds of the whole CLI (model build excluded: built before),
`timing/step` and `memory/peak_gb` from metrics.jsonl (the largest per-rank peak: process
RSS on CPU, backends/cpu.py), and the plan's estimate for the same config
(lmm_r1_ascend.plan) beside it. One JSON line per run goes to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENGINES = {
    "torch": ["distributed.train_engine=torch"],
    "zero3": ["distributed.mode=ray", "distributed.world_size=2", "distributed.train_engine=deepspeed",
              "distributed.zero_stage=3", "distributed.rollout_engines=0"],
}
RECIPES = ("fre_multi", "mgt_geo", "mgt_sokoban")


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _padded(tokenizer, text: str, budget: int, start: int) -> str:
    """`text` followed by training-corpus words until it is at least `budget` tokens."""
    from lmm_r1_ascend.models.tiny import _training_corpus

    words, k = " ".join(_training_corpus()).split(" "), start
    while len(tokenizer(text).input_ids) < budget:
        text += " " + " ".join(words[k % len(words):k % len(words) + 16])
        k += 16
    return text.strip()


def write_data(out: Path, tokenizer, prompts: int, prompt_tokens: int) -> Path:
    """`prompts` rows, each one 448x448 image (256 merged patches) and text up to prompt_tokens in all.

    Also writes sokoban.jsonl beside it (sokoban_data): as many generated Sokoban levels,
    each rendered at 448x448 (7 cells of 64 px), the recipe's system and user prompts padded
    to the same budget (they are longer than 320 tokens: ~670 with the image), and the level's
    env_path, so mgt_sokoban runs its own reward."""
    from PIL import Image

    from lmm_r1_ascend.envs.sokoban_generate import SYSTEM_PROMPT, write_dataset

    out.mkdir(parents=True, exist_ok=True)
    budget = max(8, prompt_tokens - 256 - 40)  # image tokens and the chat template's own
    rows = []
    for i in range(prompts):
        image = out / f"img{i}.png"
        Image.effect_noise((448, 448), 64).convert("RGB").save(image)
        message = [{"role": "user", "content": [{"type": "image", "image": f"file://{image}"},
                                                 {"type": "text", "text": _padded(tokenizer, "", budget, i * 17)}]}]
        rows.append({"message": json.dumps(message), "answer": "$\\boxed{2}$"})
    path = out / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    levels = write_dataset(out / "sokoban", prompts, cell=64)
    for i, row in enumerate(levels):
        message = json.loads(row["message"])
        user = message[1]["content"]
        system = len(tokenizer(SYSTEM_PROMPT).input_ids)
        user[1]["text"] = _padded(tokenizer, user[1]["text"], budget - system, i * 17)
        row["message"] = json.dumps(message)
        row["prompt_tokens"] = system + len(tokenizer(user[1]["text"]).input_ids) + 256 + 40  # as the budget counts
    sokoban_data(path).write_text("".join(json.dumps(r) + "\n" for r in levels))
    return path


def sokoban_data(data: Path) -> Path:
    """The Sokoban rows write_data puts beside `data` (prompts.jsonl)."""
    return data.with_name("sokoban.jsonl")


def run_overrides(recipe: str, engine: str, model: str, data: Path, out: Path, args) -> list[str]:
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if cpu_has_bf16() else "float32")
    ov = [f"model.pretrain={model}", f"data.prompt_data=[{data}]", f"output_dir={out}", f"model.dtype={dtype}",
          f"rollout.rollout_batch_size={args.prompts}", f"algorithm.n_samples_per_prompt={args.samples}",
          f"trainer.train_batch_size={args.prompts * args.samples}", f"rollout.max_new_tokens={args.max_new_tokens}",
          f"rollout.micro_rollout_batch_size={args.prompts}",
          f"trainer.max_tokens_per_micro_batch={args.micro_tokens}", "trainer.max_steps=1", "trainer.save_steps=0",
          "trainer.save_hf=false", "trainer.tensorboard=false", "reward.workers=1", "data.shuffle=false",
          f"model.gradient_checkpointing={str(args.gradient_checkpointing).lower()}"]
    if recipe.startswith("mgt"):
        ov.append("model.init_from=pretrain")
    if recipe == "mgt_sokoban" and not sokoban_data(data).exists():
        ov.append("reward.default=math")  # data written by an older write_data: no levels beside it
    if engine == "zero3" and getattr(args, "offload_optimizer", False):
        ov.append("distributed.offload_optimizer=true")
    return ov + ENGINES[engine]


def one_run(recipe: str, engine: str, model: str, data: Path, root: Path, args) -> dict:
    out = root / f"{recipe}-{engine}"
    if recipe == "mgt_sokoban" and sokoban_data(data).exists():
        data = sokoban_data(data)
    overrides = run_overrides(recipe, engine, model, data, out, args)
    cmd = [sys.executable, "-m", "lmm_r1_ascend.train", "--recipe", recipe, "--device", "cpu", "--no-progress",
           *overrides]
    start = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as popen:
        sampler = RssSampler(popen.pid)
        try:
            stdout, stderr = popen.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            stdout, stderr = popen.communicate()
        finally:
            sampler.stop()
    proc = subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr)
    wall = time.perf_counter() - start
    # The run's final checkpoint (weights and AdamW moments of the actor and the critic: ~14-20 GB
    # for a gae recipe at 1-2 layers) is not part of the measurement: free the disk for the next run.
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    row = {"recipe": recipe, "engine": engine, "model": model, "wall_s": round(wall, 1), "rc": proc.returncode,
           "prompt_tokens": args.prompt_tokens, "prompts": args.prompts, "samples": args.samples,
           "max_new_tokens": args.max_new_tokens, "micro_tokens": args.micro_tokens,
           "gradient_checkpointing": args.gradient_checkpointing,
           "offload_optimizer": "distributed.offload_optimizer=true" in overrides,
           "ray_memory_usage_threshold": os.environ.get("RAY_memory_usage_threshold"),  # Ray's kill line (default 0.95)
           # sampled every 0.5 s over the CLI's process tree (Ray's ranks included): survives a kill
           "sampled_rank_peak_gb": sampler.rank_peaks(), "sampled_host_used_peak_gb": sampler.host_peak,
           "sampled_rank_peak_footprint_gb": sampler.rank_footprints(), "host_swap_gb": swap_total_gb(),
           "sampled_host_swap_used_peak_gb": sampler.host_swap_peak,
           "ray_memory_monitor_refresh_ms": os.environ.get("RAY_memory_monitor_refresh_ms"),  # 0: monitor off
           "reward": "math" if "reward.default=math" in overrides else None,
           "command": "python -m lmm_r1_ascend.train --recipe " + recipe + " --device cpu " + " ".join(
               o for o in overrides if not o.startswith(("output_dir=", "data.prompt_data=")))}
    if data.name == "sokoban.jsonl":  # the recipe's own prompts, longer than the budget
        row["prompt_tokens"] = max(json.loads(line)["prompt_tokens"] for line in data.read_text().splitlines())
    metrics = out / "metrics.jsonl"
    if proc.returncode != 0 or not metrics.exists():
        row["error"] = proc.stderr[-3000:]
        oom = ray_oom_report(proc.stderr)
        if oom:
            row["oom"] = oom
        return row
    step = json.loads(metrics.read_text().splitlines()[-1])
    row.update(peak_gb=step.get("memory/peak_gb"), step_s=step.get("timing/step"),
               tokens=step.get("tokens/total", None), loss_policy=step.get("loss/policy"))
    try:
        from lmm_r1_ascend.plan import estimate_from_overrides

        est = estimate_from_overrides(recipe, overrides, devices=2 if engine == "zero3" else 1, device_memory_gb=24,
                                      backend="cpu", steps=1)  # one step measured: AdamW moments come after its backward
        row["plan_gb"] = round(est.total_gb, 3)
        measured, row["measured_from"] = measured_gb(row)
        row["measured_gb"] = measured
        row["plan_error"] = round(est.total_gb / measured - 1, 3) if measured else None
    except ImportError:
        pass
    return row


class RssSampler:
    """Peak memory (GB) of every Ray training rank under process `root`, and the host's, sampled
    every 0.5 s in a thread: the figures a rank killed by Ray's memory monitor never writes to
    metrics.jsonl. Per rank: peak RSS, and peak RSS + swap (VmSwap), the rank's footprint when
    the host swaps (a rank whose pages went to swap has a smaller RSS, not a smaller need);
    for the host: peak used memory (MemTotal - MemAvailable) and peak swap in use."""

    def __init__(self, root: int, every: float = 0.5):
        import threading

        self.root, self.every = root, every
        self.peaks: dict[int, float] = {}
        self.footprints: dict[int, float] = {}
        self.host_peak, self.host_swap_peak = 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        out, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += children.get(pid, [])
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                info = {k: int(v.split()[0]) for k, v in
                        (line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())}
                used = (info["MemTotal"] - info["MemAvailable"]) * 1024 / 1e9
                swap = (info["SwapTotal"] - info["SwapFree"]) * 1024 / 1e9
                self.host_peak = round(max(self.host_peak, used), 2)
                self.host_swap_peak = round(max(self.host_swap_peak, swap), 2)
            except (OSError, KeyError, ValueError):
                pass
            for pid in self._tree():
                try:
                    if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::TrainRank"):
                        continue
                    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
                    rss = int(status["VmRSS"].split()[0]) * 1024 / 1e9
                    swap = int(status.get("VmSwap", "0 kB").split()[0]) * 1024 / 1e9
                except (OSError, KeyError, ValueError):
                    continue
                self.peaks[pid] = max(self.peaks.get(pid, 0.0), rss)
                self.footprints[pid] = max(self.footprints.get(pid, 0.0), rss + swap)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def rank_peaks(self) -> list[float]:
        return sorted((round(v, 2) for v in self.peaks.values()), reverse=True)

    def rank_footprints(self) -> list[float]:
        return sorted((round(v, 2) for v in self.footprints.values()), reverse=True)


def swap_total_gb() -> float:
    """The host's swap space (GB); 0 without swap or where /proc/meminfo cannot be read."""
    try:
        line = next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("SwapTotal:"))
    except (OSError, StopIteration):
        return 0.0
    return round(int(line.split()[1]) * 1024 / 1e9, 2)


def measured_gb(row: dict) -> tuple[float | None, str]:
    """The per-rank peak to hold the plan against, and where it comes from. Without swap in use:
    metrics.jsonl's memory/peak_gb (each rank's exact peak RSS, VmHWM). When the host swapped
    during the run, RSS undercounts what a rank held; then the sampled peak RSS + swap of the
    largest rank (sampled every 0.5 s, so it can miss a short peak: a lower bound)."""
    if row.get("sampled_host_swap_used_peak_gb", 0) > 0.1 and row.get("sampled_rank_peak_footprint_gb"):
        return max(row["sampled_rank_peak_footprint_gb"][0], row.get("peak_gb") or 0.0), "RSS+swap"
    return row.get("peak_gb"), "RSS"


def ray_oom_report(stderr: str) -> dict | None:
    """What Ray's memory monitor said when it killed a rank: the node's used / limit GB and, per
    training rank, its memory (Ray's MEM(GB) column, which is below the rank's RSS) and the method it
    was in; None if not killed. Ray's node figures are its own "used / limit" (the limit is the
    node's capacity as Ray sees it, the kill line is the threshold times it)."""
    import re

    node = re.search(r"Memory on the node \(IP: [^)]*\) was ([\d.]+)GB used / ([\d.]+)GB limit", stderr)
    top = stderr.rfind("Top 10 memory users")
    if top < 0:
        return None
    ranks = re.findall(r"^\d+\t([\d.]+)\tray::TrainRank\.?(\w*)", stderr[top:], flags=re.M)
    report = {"rank_gb": [float(gb) for gb, _ in ranks], "phase": next((m for _, m in ranks if m), "")}
    if node:
        report.update(ray_node_used_gb=float(node.group(1)), ray_node_limit_gb=float(node.group(2)))
    return report


def table(path: str) -> str:
    """Markdown: every recorded run, measured peak per rank beside the plan's estimate (recomputed now)."""
    from lmm_r1_ascend.plan import estimate_from_overrides

    lines = ["| recipe | engine | model (layers, vision) | prompt tok | micro tok | ckpt | step s | CLI wall s | "
             "measured GB/rank | plan GB | error |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        overrides = r["command"].split(" --device cpu ", 1)[1].split()
        est = estimate_from_overrides(r["recipe"], overrides, devices=2 if r["engine"] == "zero3" else 1,
                                      device_memory_gb=24, backend="cpu", steps=1)
        depth = r["model"].split(":", 1)[1].replace("layers=", "").replace("vision_", "")
        engine = r["engine"] + (" + offload opt" if "distributed.offload_optimizer=true" in overrides else "")
        if r.get("rc") != 0:
            why = "killed by Ray's memory monitor (host RAM)" if "memory" in r.get("error", "") else "failed"
            oom = r.get("oom") or ray_oom_report(r.get("error", ""))
            if oom and oom["phase"]:
                why += f" in {oom['phase']}"
            if r.get("sampled_rank_peak_gb"):
                why += (f", RSS {' / '.join(f'{g:.2f}' for g in r['sampled_rank_peak_gb'])} GB per rank "
                        f"(host {r['sampled_host_used_peak_gb']:.1f} GB used, Ray threshold "
                        f"{r.get('ray_memory_usage_threshold') or 0.95})")
            ranks = 2 if r["engine"] == "zero3" else 1
            lines.append(f"| {r['recipe']} | {engine} | {depth} | {r['prompt_tokens']} | {r['micro_tokens']} | "
                         f"{'on' if r['gradient_checkpointing'] else 'off'} | - | {r['wall_s']:.0f} | {why} | {est.total_gb:.2f} "
                         f"(x {ranks} ranks = {ranks * est.total_gb:.1f} GB of one 24 GB host) | - |")
            continue
        measured, source = measured_gb(r)
        shown = f"{measured:.2f}" + (f" ({source}: host swapped {r['sampled_host_swap_used_peak_gb']:.1f} GB)"
                                     if source != "RSS" else "")
        lines.append(f"| {r['recipe']} | {engine} | {depth} | {r['prompt_tokens']} | {r['micro_tokens']} | "
                     f"{'on' if r['gradient_checkpointing'] else 'off'} | {r['step_s']:.1f} | {r['wall_s']:.0f} | {shown} | "
                     f"{est.total_gb:.2f} | {est.total_gb / measured - 1:+.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--engines", default="torch,zero3")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vision-layers", type=int, default=2)
    p.add_argument("--prompts", type=int, default=2, help="prompts per rollout (one 448x448 image each)")
    p.add_argument("--prompt-tokens", type=int, default=320)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--micro-tokens", type=int, default=1024)
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--offload-optimizer", action="store_true",
                   help="ZeRO-3 runs: distributed.offload_optimizer=true (optimizer state and fp32 master in host RAM)")
    p.add_argument("--dtype", default="auto", help="auto: bf16 where the CPU supports it, else float32")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", default="benchmarks/results/real_shape_cpu.jsonl")
    p.add_argument("--workdir", default=None)
    p.add_argument("--table", default=None, metavar="JSONL", help="print the measured-vs-plan table of a results file")
    args = p.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0

    from lmm_r1_ascend.models.shape_models import build_tokenizer
    from lmm_r1_ascend.workers.builders import resolve_model_name

    model = f"qwen2.5-vl-3b-shape:layers={args.layers},vision_layers={args.vision_layers}"
    resolve_model_name(model)  # build once, outside the timed runs
    root = Path(args.workdir or tempfile.mkdtemp(prefix="real_shape_"))
    data = write_data(root / "data", build_tokenizer(), args.prompts, args.prompt_tokens)
    stamp = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.machine(),
             "cpus": os.cpu_count(), "python": platform.python_version()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    failed = 0
    for recipe in args.recipes.split(","):
        for engine in args.engines.split(","):
            row = {**one_run(recipe, engine, model, data, root, args), **stamp}
            failed += row["rc"] != 0
            print(json.dumps({k: v for k, v in row.items() if k != "command"}), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
