"""Does a recipe fit? A per-device memory estimate, a verdict and the smallest change that fits.

    python -m lmm_r1_ascend.plan --recipe fre_text --devices 8 --device-memory 64
    python -m lmm_r1_ascend.plan --recipe mgt_geo distributed.zero_stage=2 --devices 8 --device-memory 64 --json

The model comes from model.pretrain (a local checkpoint's config.json, a built-in name, or
the hub id Qwen/Qwen2.5-VL-3B-Instruct, known offline by its published widths); parameters
are counted exactly on the meta device (no weights are read). Per device, in GB (1e9 B):

  weights / gradients / optimizer  actor (and critic) under the train engine: torch = weights,
      grads and AdamW moments all in the model dtype; DeepSpeed bf16 = 2 B bf16 weights, 2 B bf16
      grads, 4 B fp32 grads, 4 B fp32 master, 8 B Adam moments per trainable parameter (the
      breakdown of DeepSpeed's own estimate_zero2_model_states_mem_needs), split over the
      devices by ZeRO stage (1: optimizer; 2: + grads; 3: + weights, plus the gathered largest
      layer), moved to the host by offload_optimizer / offload_params.
  buckets          ZeRO-2/3's flat gradient-reduction bucket (reduce_bucket_size, 5e8 elements by
      default), as far as gradients fill it.
  activations      per micro-batch of trainer.max_tokens_per_micro_batch tokens: with gradient
      checkpointing the input of each decoder layer (H values per token per layer) plus one
      layer recomputed; without, every layer's saved tensors (10H + 4I + 4 kv values per token).
  log-prob buffers chunked log-probs (kernels/logprobs.py): chunk x vocab logits in the model
      dtype and fp32 (and the fp32 softmax), plus the output-head gradient buffer (V x H) of
      its backward.
  reference        frozen weights, a full copy on every rank (not partitioned).
  rollout          hf: a full weight copy plus the KV cache of one generate call; vllm:
      vllm_gpu_memory_utilization x device memory (weights + KV cache inside it), released
      for training when vllm_enable_sleep is on (then the larger phase counts, not the sum).
  runtime          the process / device context (CPU: Python, torch and libraries' RSS).
  offloaded        backends whose offload is device memory (Backend.offload_is_device_memory: cpu): it stays in the same RAM.

The estimate was checked against measured per-rank peaks (benchmarks/bench_real_shape.py,
docs/memory_plan.md); it is meant to be within 25 % of them, not exact.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace

from lmm_r1_ascend.backends.registry import backend_class, backend_names
from lmm_r1_ascend.engines.registry import DATA_PARALLEL_ENGINE, train_engine_class
from lmm_r1_ascend.models.shape_models import ModelShape, model_shape

GB = 1e9
HUB_SHAPES = {"Qwen/Qwen2.5-VL-3B-Instruct": "qwen2.5-vl-3b-shape:layers=36,vision_layers=32"}
LOGPROB_CHUNK = 1024  # models.forward.packed_log_probs' default chunk_size
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Estimate:
    parts: dict[str, float]            # GB per device, by component
    total_gb: float
    device_memory_gb: float
    fits: bool
    host_gb: float = 0.0               # offloaded state, on the host
    deepspeed_gb: dict[str, float] = field(default_factory=dict)  # DeepSpeed's own model-state estimates
    notes: list[str] = field(default_factory=list)
    change: str = ""                   # the smallest override that makes it fit ("" when it fits)


def model_config(name: str):
    """The transformers config of model.pretrain, offline."""
    from lmm_r1_ascend.models.loading import load_config, resolve_model_path
    from lmm_r1_ascend.models.shape_models import parse_shape_name, shape_config

    name = HUB_SHAPES.get(name, name)
    parsed = parse_shape_name(name)
    if parsed is not None:
        return shape_config(*parsed)
    from lmm_r1_ascend.workers.builders import BUILTIN_MODELS

    if name in BUILTIN_MODELS:
        name = str(BUILTIN_MODELS[name])
    return load_config(resolve_model_path(name))


@functools.lru_cache(maxsize=16)
def shape_of(name: str) -> ModelShape:
    """model_shape(model_config(name)), cached per name."""
    return model_shape(model_config(name))


def activations(shape: ModelShape, tokens: int, image_patches: int, *, b: int, checkpointing: bool,
                vision_trainable: bool) -> float:
    """Bytes saved for backward by one packed micro-batch (text tokens + vision patches)."""
    per_layer = 10 * shape.hidden + 4 * shape.intermediate + 4 * shape.kv_dim
    if checkpointing:
        text = tokens * (shape.layers * shape.hidden + per_layer)
    else:
        text = tokens * shape.layers * per_layer
    text += tokens * 3 * shape.hidden  # final norm, its output, the hidden states handed to the head
    vision = 0
    if image_patches and shape.vision_layers and vision_trainable:
        v_layer = 10 * shape.vision_hidden + 4 * shape.vision_intermediate
        depth = shape.vision_layers
        vision = image_patches * ((depth * shape.vision_hidden + v_layer) if checkpointing else depth * v_layer)
    return (text + vision) * b


def logprob_buffers(shape: ModelShape, tokens: int, *, b: int, head_trainable: bool) -> float:
    """Peak extra bytes of chunked log-probs: chunk logits (dtype + fp32 + fp32 softmax) and the
    backward's V x H output-head gradient buffer."""
    chunk = min(LOGPROB_CHUNK, tokens)
    return chunk * shape.vocab * (b + 8) + (shape.vocab * shape.hidden * b if head_trainable else 0)


def kv_cache(shape: ModelShape, tokens: int, b: int) -> float:
    return 2 * shape.layers * shape.kv_dim * tokens * b


def _rollout(cfg, shape: ModelShape, sample: int, b: int, device_memory_gb: float,
             notes: list[str]) -> tuple[float, float]:
    """(resident, transient) bytes of a colocated rollout engine on a training device: hf keeps a copy
    of the weights plus one generate call's KV cache; vLLM reserves its share. Appends its notes."""
    dist, ro = cfg.distributed, cfg.rollout
    rows = ro.micro_rollout_batch_size * cfg.algorithm.n_samples_per_prompt
    if not (dist.mode == "local" or dist.rollout_engines == 0 or dist.colocate_rollout):
        notes.append(f"rollout engines on devices of their own ({dist.rollout_engines} x "
                     f"{ro.vllm_tensor_parallel_size}): not counted here")
        return 0.0, 0.0
    if ro.engine == "vllm":
        share = ro.vllm_gpu_memory_utilization * device_memory_gb * GB
        kv_need = kv_cache(shape, rows * sample, b)
        room = share - shape.params * b
        notes.append(f"vLLM: {ro.vllm_gpu_memory_utilization:.2f} x {device_memory_gb:g} GB; KV cache for "
                     f"{rows} x {sample} tokens needs {kv_need / GB:.1f} GB, {max(room, 0) / GB:.1f} GB left for it")
        return (0.0, share) if ro.vllm_enable_sleep else (share, 0.0)
    return shape.params * b, kv_cache(shape, rows * sample, b) + rows * shape.vocab * 4


def estimate(cfg, *, devices: int, device_memory_gb: float, backend: str = "cuda", shape: ModelShape | None = None,
             image_tokens: int | None = None, steps: int = 2) -> Estimate:
    """Per-device peak of the training step of `cfg` (a TrainConfig) on `devices` devices.

    image_tokens: merged image tokens per micro-batch (default: 256 per sample, one 448x448
    image, for multimodal data, none for stage fre text data). steps=1: the first step, whose
    AdamW moments appear only after its backward (torch and DeepSpeed create them lazily)."""
    device = backend_class(backend)  # its class-level facts only: nothing probes or needs the device
    shape = shape or shape_of(cfg.model.pretrain)
    dtype = cfg.model.dtype if cfg.model.dtype != "auto" else str(device.default_dtype).removeprefix("torch.")
    b = _BYTES[dtype]
    dist, alg, tr, ro = cfg.distributed, cfg.algorithm, cfg.trainer, cfg.rollout
    engine = train_engine_class(dist.train_engine)  # its class-level planner facts
    if not engine.data_parallel and devices > 1:
        devices_note = (f"train_engine={engine.name} runs one rank: --devices > 1 needs "
                        f"distributed.train_engine={DATA_PARALLEL_ENGINE}")
        raise ValueError(devices_note)
    frozen_vision = any(p.rstrip(".") in ("model.visual", "visual") for p in cfg.model.freeze_prefixes)
    trainable = shape.params - (shape.vision if frozen_vision else 0)
    sample = cfg.data.max_prompt_len + ro.max_new_tokens
    tokens = max(tr.max_tokens_per_micro_batch, 1)
    if image_tokens is None:
        multimodal = shape.vision_layers and (cfg.stage == "mgt" or cfg.recipe == "fre_multi")
        image_tokens = 256 * max(1, tokens // sample) if multimodal else 0
    kw = dict(dist=dist, devices=devices, b=b, largest=shape.largest_layer)
    actor, host = engine.model_states(shape.params, trainable, **kw)
    parts = {k: v for k, v in actor.items()}
    moments = 0.0
    if steps == 1:  # AdamW moments exist only after the first backward (torch's lazy state; DeepSpeed
        # keeps the torch optimizer, whose moments are lazy too): the step peak is the larger
        moments = parts["optimizer"] * engine.moments_share(b)
        parts["optimizer"] -= moments
    act = activations(shape, tokens, 4 * image_tokens, b=b, checkpointing=cfg.model.gradient_checkpointing,
                      vision_trainable=not frozen_vision)
    lp = logprob_buffers(shape, tokens, b=b, head_trainable=True)
    lp += shape.embed * b  # the input embedding's backward makes a dense V x H gradient before accumulating it
    train_transient = act + lp
    if steps == 1:
        train_transient = max(train_transient, moments)
    critic = 0.0
    if alg.uses_critic:
        c_params = shape.params - (0 if shape.tied else shape.embed) + shape.hidden  # no LM head; a value head
        c_states, c_host = engine.model_states(c_params, c_params, **kw)
        critic, host = sum(c_states.values()), host + c_host
        parts["critic"] = critic
        c_act = activations(shape, tokens, 4 * image_tokens, b=b, checkpointing=cfg.model.gradient_checkpointing,
                            vision_trainable=True)
        train_transient = max(train_transient, c_act)
    parts["reference"] = shape.params * b if alg.uses_reference else 0.0
    notes: list[str] = []
    rollout_resident, rollout_transient = _rollout(cfg, shape, sample, b, device_memory_gb, notes)
    parts["rollout"] = rollout_resident
    parts["runtime"] = device.runtime_overhead_gb * GB
    if device.offload_is_device_memory and host:
        # On CPU the "host" DeepSpeed offloads to is the rank's own RAM: nothing leaves the device
        # (measured: mgt_sokoban ZeRO-3 x 2 with offload_optimizer was killed earlier, not later).
        parts["offloaded"] = host
        notes.append(f"backend {backend}: the {host / GB:.1f} GB offloaded stay in the same RAM (counted in the total)")
    resident = sum(parts.values())
    transient = max(train_transient, rollout_transient)  # phases run one after another
    parts["activations"] = act
    parts["logprob_buffers"] = lp
    parts["transient_peak"] = transient  # the largest of the phases above (activations + buffers, rollout, ...)
    total = resident + transient
    gb = {k: round(v / GB, 3) for k, v in parts.items()}
    est = Estimate(parts=gb, total_gb=round(total / GB, 3), device_memory_gb=device_memory_gb,
                   fits=total <= device_memory_gb * GB, host_gb=round(host / GB, 3), notes=notes)
    est.deepspeed_gb = {k: round(v / GB, 3) for k, v in
                        engine.library_estimate(shape.params, shape.largest_layer, devices, dist).items()}
    return est


def smallest_change(cfg, *, devices: int, device_memory_gb: float, backend: str, shape: ModelShape) -> str:
    """The least disruptive change that makes `cfg` fit, as overrides (and --devices N): the first
    single change that fits, in the order below; failing that, the shortest run of them in
    that order (each kept only if it lowers the estimate)."""
    def total(c, n):
        try:
            return estimate(c, devices=n, device_memory_gb=device_memory_gb, backend=backend, shape=shape)
        except ValueError:
            return None

    def with_(c, section: str, **kw):
        return replace(c, **{section: replace(getattr(c, section), **kw)})

    ds = {"train_engine": DATA_PARALLEL_ENGINE}
    sample = cfg.data.max_prompt_len + cfg.rollout.max_new_tokens
    candidates = []  # (overrides, transform, device factor)
    tokens = cfg.trainer.max_tokens_per_micro_batch
    while tokens // 2 >= sample:
        tokens //= 2
        candidates.append((f"trainer.max_tokens_per_micro_batch={tokens}",
                           lambda c, t=tokens: with_(c, "trainer", max_tokens_per_micro_batch=t), 1))
    if not cfg.model.gradient_checkpointing:
        candidates.append(("model.gradient_checkpointing=true", lambda c: with_(c, "model", gradient_checkpointing=True), 1))
    if cfg.rollout.engine == "vllm":
        for util in (0.4, 0.3, 0.2):
            if util < cfg.rollout.vllm_gpu_memory_utilization:
                candidates.append((f"rollout.vllm_gpu_memory_utilization={util}",
                                   lambda c, u=util: with_(c, "rollout", vllm_gpu_memory_utilization=u), 1))
    elif cfg.rollout.micro_rollout_batch_size > 1:
        candidates.append(("rollout.micro_rollout_batch_size=1", lambda c: with_(c, "rollout", micro_rollout_batch_size=1), 1))
    if not train_engine_class(cfg.distributed.train_engine).shards_weights(cfg.distributed):
        candidates.append((f"distributed.train_engine={DATA_PARALLEL_ENGINE} distributed.zero_stage=3",
                           lambda c: with_(c, "distributed", zero_stage=3, **ds), 1))
    candidates.append(("distributed.offload_optimizer=true",
                       lambda c: with_(c, "distributed", offload_optimizer=True, zero_stage=max(c.distributed.zero_stage, 1),
                                       **ds), 1))
    candidates.append(("distributed.zero_stage=3 distributed.offload_params=true",
                       lambda c: with_(c, "distributed", zero_stage=3, offload_params=True, **ds), 1))
    for factor in (2, 4, 8):
        candidates.append((f"--devices {devices * factor}", lambda c: with_(c, "distributed", **ds), factor))
    for text, fn, factor in candidates:
        est = total(fn(cfg), devices * factor)
        if est is not None and est.fits:
            return text
    current, n, chosen = cfg, devices, []
    best = total(cfg, devices)
    for text, fn, factor in candidates:
        trial = total(fn(current), n * factor)
        if trial is not None and (best is None or trial.total_gb < best.total_gb):
            current, n, best = fn(current), n * factor, trial
            chosen = [t for t in chosen if not (t.startswith("--devices") and text.startswith("--devices"))] + [text]
            if trial.fits:
                return " ".join(chosen)
    return (f"nothing here makes it fit (best {best.total_gb:.1f} GB with {' '.join(chosen)}): "
            "use devices with more memory, or rollout engines on devices of their own")


def estimate_from_overrides(recipe: str, overrides: list[str], *, devices: int, device_memory_gb: float,
                            backend: str = "cuda", steps: int = 2) -> Estimate:
    from lmm_r1_ascend.config import load_config

    cfg = load_config(recipe, overrides=overrides)
    return estimate(cfg, devices=devices, device_memory_gb=device_memory_gb, backend=backend, steps=steps)


def format_table(est: Estimate, title: str) -> str:
    lines = [title, f"{'component':<18}{'GB/device':>10}"]
    lines += [f"{k:<18}{v:>10.2f}" for k, v in est.parts.items()]
    lines.append(f"{'total':<18}{est.total_gb:>10.2f}   of {est.device_memory_gb:g} GB: "
                 + ("fits" if est.fits else "does NOT fit"))
    if est.host_gb:
        lines.append(f"host (offloaded)  {est.host_gb:>10.2f}")
    if est.deepspeed_gb:
        lines.append("DeepSpeed's own model-state estimates (GB/device): " + ", ".join(
            f"{k} {v:.2f}" for k, v in est.deepspeed_gb.items()))
    lines += [f"note: {n}" for n in est.notes]
    if not est.fits:
        lines.append(f"smallest change that fits: {est.change}")
    return "\n".join(lines)


def plan_run(cfg, *, devices: int, device_memory_gb: float, backend: str):
    """(the config as it would run on `devices`, its Estimate): a single-device engine becomes the
    data-parallel one on several devices; `change` holds the smallest change that fits when it does not."""
    if devices > 1 and not train_engine_class(cfg.distributed.train_engine).data_parallel:
        cfg = replace(cfg, distributed=replace(cfg.distributed, train_engine=DATA_PARALLEL_ENGINE))
    shape = shape_of(cfg.model.pretrain)
    est = estimate(cfg, devices=devices, device_memory_gb=device_memory_gb, backend=backend, shape=shape)
    if not est.fits:
        est.change = smallest_change(cfg, devices=devices, device_memory_gb=device_memory_gb, backend=backend,
                                     shape=shape)
    return cfg, est


def main(argv: list[str] | None = None) -> int:
    from lmm_r1_ascend.config.cli import CliParser, parse_cli
    from lmm_r1_ascend.config.loader import ConfigError

    p = CliParser(prog="python -m lmm_r1_ascend.plan", description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True)
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--device-memory", type=float, default=64.0, help="GB per device (64 for Ascend 910B, 80 for A100/H100)")
    p.add_argument("--backend", default="npu", choices=sorted(backend_names()),
                   help="whose device facts to count (runtime overhead, default dtype, where offload lands)")
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = parse_cli(p, argv, overrides_dest="overrides")
    if args.devices < 1:
        p.error(f"--devices must be >= 1, got {args.devices}")
    if not math.isfinite(args.device_memory) or args.device_memory <= 0:
        p.error(f"--device-memory must be a positive number of GB, got {args.device_memory:g}")
    try:
        from lmm_r1_ascend.config import load_config

        cfg, est = plan_run(load_config(args.recipe, overrides=args.overrides), devices=args.devices,
                            device_memory_gb=args.device_memory, backend=args.backend)
    except (ConfigError, ValueError, FileNotFoundError, NotADirectoryError) as err:
        p.exit(2, f"error: {' '.join(str(err).split())}\n")
    if args.json:
        print(json.dumps(asdict(est), indent=2))
    else:
        eng = train_engine_class(cfg.distributed.train_engine).describe(cfg.distributed)
        print(format_table(est, f"{args.recipe}: {cfg.model.pretrain}, {args.devices} x {args.device_memory:g} GB "
                                f"({args.backend}), {eng}, {cfg.trainer.max_tokens_per_micro_batch} tokens/micro-batch, "
                                f"gradient checkpointing {'on' if cfg.model.gradient_checkpointing else 'off'}"))
    return 0 if est.fits else 1


if __name__ == "__main__":
    sys.exit(main())
