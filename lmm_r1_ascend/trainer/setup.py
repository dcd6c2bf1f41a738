"""Build a run's components from its config: data, actor, reference, critic, rollout engine, rewards.

Every user-caused problem here (missing data, no FRE checkpoint for stage mgt, a model
directory that does not exist) raises SetupError with one line saying what to do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from lmm_r1_ascend.backends import Backend
from lmm_r1_ascend.config import TrainConfig
from lmm_r1_ascend.engines.torch_engine import TorchEngine
from lmm_r1_ascend.rollout.base import RolloutEngine, RolloutSample
from lmm_r1_ascend.trainer.workers import ActorWorker, CriticWorker, ReferenceWorker

BUILTIN_MODELS = {  # names that resolve to models the project ships or builds offline
    "demo-fre": Path(__file__).resolve().parent.parent / "demo" / "assets" / "fre-warmup",
}
MATH_PROMPT_ALIASES = ("math",)


class SetupError(RuntimeError):
    """A run cannot start; the message is one line meant for users."""


def resolve_actor_path(cfg: TrainConfig) -> str:
    """The actor's starting checkpoint: model.pretrain for stage fre; the FRE result for mgt."""
    if cfg.stage == "mgt" and cfg.model.init_from != "pretrain":
        if not cfg.model.init_from:
            raise SetupError("stage mgt continues from an FRE checkpoint: set model.init_from=<FRE output_dir> "
                             "(or model.init_from=pretrain to start from model.pretrain)")
        src = Path(cfg.model.init_from)
        for candidate in (src / "hf", src):
            if (candidate / "config.json").exists():
                return str(candidate)
        raise SetupError(f"no FRE checkpoint at '{src}' (looked for {src}/hf/config.json and {src}/config.json): "
                         "run stage fre first, or point model.init_from at its output_dir")
    return resolve_model_name(cfg.model.pretrain)


def resolve_model_name(name: str) -> str:
    if name in BUILTIN_MODELS:
        path = BUILTIN_MODELS[name]
        if not (path / "config.json").exists():
            raise SetupError(f"built-in model '{name}' is missing at {path}: run `python scripts/build_demo_model.py`")
        return str(path)
    return name


@dataclass
class Components:
    """What the controller holds: data, processors, rewards, and handles to the workers
    (a TrainingCluster of ranks and a RolloutClient), never the models themselves."""

    cfg: TrainConfig
    backend: Backend
    tokenizer: Any
    image_processor: Any
    dataset: Any
    cluster: Any   # lmm_r1_ascend.distributed.cluster.TrainingCluster
    rollout: Any   # lmm_r1_ascend.distributed.rollout_client.RolloutClient
    reward: Any

    def score(self, samples: list[RolloutSample]) -> tuple[torch.Tensor, dict[str, float], dict[str, torch.Tensor]]:
        """Scalar rewards (B,), their metrics (reward/mean, reward/<component>, reward/status/<s>) and per-sample info."""
        from lmm_r1_ascend.rewards import RewardInput
        from lmm_r1_ascend.rewards.extraction import extract_response

        inputs, prompts = [], {}
        for s in samples:  # n samples share a prompt: decode it once
            if s.prompt_index not in prompts:
                prompts[s.prompt_index] = self.tokenizer.decode(s.prompt_ids.tolist())
            prompt = prompts[s.prompt_index]
            full = self.tokenizer.decode(torch.cat((s.prompt_ids, s.response_ids)).tolist())
            inputs.append(RewardInput(response=extract_response(full, prompt=prompt), label=s.prompt.label,
                                      query=full, prompt=prompt, datasource=s.prompt.datasource, meta=s.prompt.meta))
        outs = self.reward(inputs)
        totals = torch.tensor([o.total for o in outs], dtype=torch.float32)
        metrics = {"reward/mean": float(totals.mean()), "reward/std": float(totals.std(unbiased=False))}
        info: dict[str, torch.Tensor] = {}
        for key in sorted({k for o in outs for k in o.components}):
            values = torch.tensor([float(o.components.get(key, 0.0)) for o in outs])
            info[f"reward_{key}"] = values
            metrics[f"reward/{key}"] = float(values.mean())
        for status in sorted({o.status for o in outs}):
            metrics[f"reward/status/{status}"] = sum(o.status == status for o in outs) / len(outs)
        sources = sorted({s.prompt.datasource for s in samples})
        if len(sources) > 1:
            for src in sources:
                sel = [i for i, s in enumerate(samples) if s.prompt.datasource == src]
                metrics[f"reward/{src}/mean"] = float(totals[sel].mean())
        return totals, metrics, info

    def export_hf(self, path: Path) -> Path:
        """The actor in Hugging Face format (+ tokenizer, image processor, critic next to it if any)."""
        self.cluster.export_hf(path)
        self.tokenizer.save_pretrained(path)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(path)
        return path

    def close(self) -> None:
        for part in (self.reward, self.rollout, self.cluster):
            close = getattr(part, "close", None)
            if close is not None:
                close()


def save_hf_model(model: torch.nn.Module, path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """save_pretrained with transformers' own attention recorded, so the export loads anywhere
    (our packed-attention name is registered only inside this process). state_dict: the full
    weights when the module's own parameters are partitioned (ZeRO-3)."""
    from lmm_r1_ascend.models.critic import Critic

    config = model.config
    saved = getattr(config, "_attn_implementation", None)
    try:
        if saved and saved.startswith("lmm_r1_"):
            config._attn_implementation = "sdpa"
        if isinstance(model, Critic):
            model.save_pretrained(path, state_dict=state_dict)
        else:
            model.save_pretrained(path, safe_serialization=True, state_dict=state_dict)
    finally:
        if saved is not None:
            config._attn_implementation = saved


def _reward_router(cfg: TrainConfig):
    from lmm_r1_ascend.rewards.registry import RewardRouter

    math_opts = {"format_weight": cfg.reward.format_weight, "use_format": cfg.reward.use_format,
                 "timeout_s": cfg.reward.timeout_s, "workers": cfg.reward.workers}
    return RewardRouter(cfg.reward.default, routes=cfg.reward.routes,
                        options={"math": math_opts, "custom": {"on_error": cfg.reward.on_error},
                                 "http": {"on_error": cfg.reward.on_error}})


def planned_rollouts(cfg: TrainConfig, num_prompts: int) -> int:
    """Rollouts (trainer steps) of the run: every episode covers the prompts once, capped by max_steps."""
    rollouts = cfg.trainer.num_episodes * math.ceil(num_prompts / cfg.rollout.rollout_batch_size)
    return min(rollouts, cfg.trainer.max_steps) if cfg.trainer.max_steps else rollouts


def prepare_data(cfg: TrainConfig, *, shuffle: bool | None = None) -> tuple[str, Any, Any, Any]:
    """Check the data and model paths; return (actor path, tokenizer, image processor, PromptDataset)."""
    from lmm_r1_ascend.data import MATH_SYSTEM_PROMPT, PromptDataset, load_processors
    from lmm_r1_ascend.models.loading import resolve_model_path

    if not cfg.data.prompt_data:
        raise SetupError("data.prompt_data is empty: pass data.prompt_data=PATH.jsonl (or a list of paths)")
    for path in cfg.data.prompt_data:
        if not Path(path).exists():
            raise SetupError(f"data file not found: {path} (data.prompt_data)")
    actor_path = resolve_actor_path(cfg)
    if not Path(actor_path).exists() and not actor_path.startswith("tiny-"):
        raise SetupError(f"model not found: '{actor_path}' is not a local directory (hub downloads are not "
                         "attempted: download it first and pass model.pretrain=/path/to/model)")
    actor_path = str(resolve_model_path(actor_path))
    tokenizer, image_processor = load_processors(actor_path)
    system_prompt = MATH_SYSTEM_PROMPT if cfg.data.system_prompt in MATH_PROMPT_ALIASES else cfg.data.system_prompt
    dataset = PromptDataset(cfg.data.prompt_data, tokenizer, image_processor, loader=cfg.data.loader,
                            system_prompt=system_prompt, min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels,
                            max_prompt_len=cfg.data.max_prompt_len, on_bad_line=cfg.data.on_bad_line, seed=cfg.seed,
                            shuffle=cfg.data.shuffle if shuffle is None else shuffle)
    return actor_path, tokenizer, image_processor, dataset


def total_updates(cfg: TrainConfig, num_prompts: int) -> int:
    """Optimizer steps of the run (for the LR schedule)."""
    alg, tr = cfg.algorithm, cfg.trainer
    per_rollout = cfg.rollout.rollout_batch_size * alg.n_samples_per_prompt // tr.train_batch_size
    return max(1, planned_rollouts(cfg, num_prompts) * per_rollout * tr.max_epochs)


def make_engine(cfg: TrainConfig, module: torch.nn.Module, lr: float, total_steps: int):
    """The training engine distributed.train_engine names, with the optim section's settings."""
    opt, dist_cfg = cfg.optim, cfg.distributed
    kwargs = dict(lr=lr, betas=opt.adam_betas, weight_decay=opt.weight_decay, max_norm=opt.max_norm,
                  total_steps=total_steps, scheduler=opt.lr_scheduler, min_lr_ratio=opt.min_lr_ratio,
                  warmup_ratio=opt.lr_warmup_ratio)
    if dist_cfg.train_engine == "torch":
        return TorchEngine(module, **kwargs)
    try:
        from lmm_r1_ascend.engines.deepspeed_engine import DeepSpeedEngine
    except ImportError as err:
        raise SetupError(f"distributed.train_engine=deepspeed needs DeepSpeed ({err}): pip install "
                         "'lmm-r1-ascend[dist]' (or the requirements file of your device)") from err
    return DeepSpeedEngine(module, zero_stage=dist_cfg.zero_stage, bf16=next(module.parameters()).dtype == torch.bfloat16,
                           offload_optimizer=dist_cfg.offload_optimizer, offload_params=dist_cfg.offload_params, **kwargs)


def build_rank_workers(cfg: TrainConfig, backend: Backend, actor_path: str, updates: int,
                       roles: tuple[str, ...] = ("actor", "critic", "reference"),
                       ) -> tuple[ActorWorker | None, ReferenceWorker | None, CriticWorker | None]:
    """The models of one rank on backend.device(0), among `roles`: actor, and the reference and
    critic when the algorithm uses them."""
    from lmm_r1_ascend.models.loading import ModelSpec, load_critic, load_policy, load_reference
    from lmm_r1_ascend.models.train_modules import CriticValues, PolicyLogProbs

    device = backend.device(0)
    dtype = None if cfg.model.dtype == "auto" else cfg.model.dtype
    alg, opt = cfg.algorithm, cfg.optim
    max_tokens = cfg.trainer.max_tokens_per_micro_batch
    spec = ModelSpec(path=actor_path, dtype=dtype, gradient_checkpointing=cfg.model.gradient_checkpointing,
                     freeze_prefixes=tuple(cfg.model.freeze_prefixes))
    actor = None
    if "actor" in roles:
        actor_model = load_policy(spec, backend).to(device)
        actor_fwd = PolicyLogProbs(actor_model, cfg.rollout.temperature)
        actor = ActorWorker(actor_model, make_engine(cfg, actor_fwd, opt.actor_lr, updates),
                            temperature=cfg.rollout.temperature, max_tokens=max_tokens)
    reference = None
    if "reference" in roles and alg.uses_reference:
        ref_model = load_reference(ModelSpec(path=actor_path, dtype=dtype), backend).to(device)
        reference = ReferenceWorker(ref_model, temperature=cfg.rollout.temperature, max_tokens=max_tokens)
    critic = None
    if "critic" in roles and alg.uses_critic:
        critic_path = resolve_model_name(cfg.model.critic_pretrain) if cfg.model.critic_pretrain else actor_path
        critic_model = load_critic(ModelSpec(path=critic_path, dtype=dtype,
                                             gradient_checkpointing=cfg.model.gradient_checkpointing),
                                   backend).to(device)
        critic = CriticWorker(critic_model, make_engine(cfg, CriticValues(critic_model), opt.critic_lr, updates),
                              max_tokens=max_tokens)
    return actor, reference, critic


def build_rollout_engine(cfg: TrainConfig, actor_path: str, device: torch.device, dtype: torch.dtype) -> RolloutEngine:
    from lmm_r1_ascend.data import load_processors
    from lmm_r1_ascend.rollout.base import build_engine

    if cfg.rollout.engine == "hf":
        tokenizer, _ = load_processors(actor_path)
        return build_engine("hf", actor_path, device=device, dtype=dtype, tokenizer=tokenizer)
    return build_engine("vllm", actor_path, seed=cfg.seed, tensor_parallel_size=cfg.rollout.vllm_tensor_parallel_size,
                        gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization,
                        enable_sleep_mode=cfg.rollout.vllm_enable_sleep)


def build_components(cfg: TrainConfig, backend: Backend, *, log: Callable[[str], None] = print) -> Components:
    from lmm_r1_ascend.distributed.cluster import start_cluster

    actor_path, tokenizer, image_processor, dataset = prepare_data(cfg)
    log(f"data: {len(dataset)} prompts ({dataset.counts})")
    cluster, rollout = start_cluster(cfg, backend, actor_path, total_updates(cfg, len(dataset)), log=log)
    kernels = backend.select_kernels()
    log(f"backend {backend.name}: attention={kernels['attention'].name}, fused_ops={kernels['fused_ops'].name}; "
        f"actor {actor_path}; {cluster.describe()}; rollout: {rollout.describe()}")
    return Components(cfg, backend, tokenizer, image_processor, dataset, cluster, rollout, _reward_router(cfg))
