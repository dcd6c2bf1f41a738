"""Rank-side builders every consumer shares: the trainer's ranks (local or Ray), the rollout
engine actors and the parity replay build their models, training engines and rollout
engines here, from one TrainConfig.

User-caused problems (a missing built-in model, no FRE checkpoint for stage mgt, DeepSpeed
not installed) raise SetupError with one line saying what to do.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lmm_r1_ascend.backends import Backend
from lmm_r1_ascend.config import TrainConfig
from lmm_r1_ascend.config.errors import SetupError
from lmm_r1_ascend.engines.base import TrainingEngine
from lmm_r1_ascend.engines.registry import train_engine_class
from lmm_r1_ascend.rollout.base import RolloutEngine
from lmm_r1_ascend.workers.roles import ActorWorker, CriticWorker, ReferenceWorker

BUILTIN_MODELS = {  # names that resolve to models the project ships or builds offline
    "demo-fre": Path(__file__).resolve().parent.parent / "demo" / "assets" / "fre-warmup",
    "demo-vl": Path(__file__).resolve().parent.parent / "demo" / "assets" / "vl-warmup",
}
BUILDER_SCRIPTS = {"demo-fre": "scripts/build_demo_model.py", "demo-vl": "scripts/build_demo_vl_model.py"}
# Built on first use into the cache (models.shape_models): Qwen2.5-VL-3B widths, random weights;
# a ':layers=N,vision_layers=M' suffix sets the depths (default 2 and 2).
BUILTIN_SHAPE_MODELS = ("qwen2.5-vl-3b-shape", "qwen2.5-vl-3b-text-shape")



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
            raise SetupError(f"built-in model '{name}' is missing at {path}: run `python {BUILDER_SCRIPTS[name]}`")
        return str(path)
    if name.partition(":")[0] in BUILTIN_SHAPE_MODELS:
        from lmm_r1_ascend.models.shape_models import ensure_shape_model

        try:
            return str(ensure_shape_model(name))
        except ValueError as err:
            raise SetupError(str(err)) from err
    return name


def save_hf_model(model: torch.nn.Module, path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """save_pretrained with transformers' own attention recorded, so the export loads anywhere
    (our packed-attention name is registered only inside this process). state_dict: the full
    weights when the module's own parameters are partitioned (ZeRO-3)."""
    from lmm_r1_ascend.models.critic import Critic

    config = model.config
    saved = getattr(config, "_attn_implementation", None)
    state_dict = without_tied_copies(model, state_dict)
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


def without_tied_copies(model: torch.nn.Module, state_dict: dict[str, torch.Tensor] | None
                        ) -> dict[str, torch.Tensor] | None:
    """state_dict less the second and later names of any parameter the model ties (a tied output head
    is the embedding's own Parameter): save_pretrained drops those itself only when it builds the state
    dict, so a gathered one (ZeRO-3, or the rank's full state) would write the embedding twice, 0.6 GB
    more for Qwen2.5-VL-3B's 151,936 x 2048 bf16 table. The loader re-ties from config.json."""
    if state_dict is None:
        return None
    first: dict[int, str] = {}
    dropped = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first and name in state_dict and first[id(param)] in state_dict:
            dropped.add(name)
        first.setdefault(id(param), name)
    return {k: v for k, v in state_dict.items() if k not in dropped} if dropped else state_dict


def planned_rollouts(cfg: TrainConfig, num_prompts: int) -> int:
    """Rollouts (trainer steps) of the run: every episode covers the prompts once, capped by max_steps."""
    rollouts = cfg.trainer.num_episodes * math.ceil(num_prompts / cfg.rollout.rollout_batch_size)
    return min(rollouts, cfg.trainer.max_steps) if cfg.trainer.max_steps else rollouts


def total_updates(cfg: TrainConfig, num_prompts: int) -> int:
    """Optimizer steps of the run (for the LR schedule)."""
    alg, tr = cfg.algorithm, cfg.trainer
    per_rollout = cfg.rollout.rollout_batch_size * alg.n_samples_per_prompt // tr.train_batch_size
    return max(1, planned_rollouts(cfg, num_prompts) * per_rollout * tr.max_epochs)


def make_engine(cfg: TrainConfig, module: torch.nn.Module, lr: float, total_steps: int) -> TrainingEngine:
    """The training engine distributed.train_engine names, with the optim section's settings."""
    engine = train_engine_class(cfg.distributed.train_engine)
    return engine.from_config(module, cfg.optim, cfg.distributed, lr=lr, total_steps=total_steps)


def build_rank_workers(cfg: TrainConfig, backend: Backend, actor_path: str, updates: int,
                       roles: tuple[str, ...] = ("actor", "critic", "reference"), attention: str | None = None,
                       ) -> tuple[ActorWorker | None, ReferenceWorker | None, CriticWorker | None]:
    """The models of one rank on backend.device(0), among `roles`: actor, and the reference and
    critic when the algorithm uses them; loaded in that order (the parity replay relies on it).
    attention: force the backend's attention implementation by name (None: its own choice)."""
    from lmm_r1_ascend.models.loading import ModelSpec, load_critic, load_policy, load_reference
    from lmm_r1_ascend.models.train_modules import CriticValues, PolicyLogProbs

    device = backend.device(0)
    dtype = None if cfg.model.dtype == "auto" else cfg.model.dtype
    alg, opt = cfg.algorithm, cfg.optim
    max_tokens = cfg.trainer.max_tokens_per_micro_batch
    share = cfg.model.share_prompts
    spec = ModelSpec(path=actor_path, dtype=dtype, gradient_checkpointing=cfg.model.gradient_checkpointing,
                     freeze_prefixes=tuple(cfg.model.freeze_prefixes), attention=attention, share_prompts=share)
    actor = None
    if "actor" in roles:
        actor_model = load_policy(spec, backend).to(device)
        actor_fwd = PolicyLogProbs(actor_model, cfg.rollout.temperature)
        actor = ActorWorker(actor_model, make_engine(cfg, actor_fwd, opt.actor_lr, updates),
                            temperature=cfg.rollout.temperature, max_tokens=max_tokens)
    reference = None
    if "reference" in roles and alg.uses_reference:
        ref_model = load_reference(ModelSpec(path=actor_path, dtype=dtype, attention=attention, share_prompts=share),
                                  backend).to(device)
        reference = ReferenceWorker(ref_model, temperature=cfg.rollout.temperature, max_tokens=max_tokens)
    critic = None
    if "critic" in roles and alg.uses_critic:
        critic_path = resolve_model_name(cfg.model.critic_pretrain) if cfg.model.critic_pretrain else actor_path
        critic_model = load_critic(ModelSpec(path=critic_path, dtype=dtype, attention=attention, share_prompts=share,
                                             gradient_checkpointing=cfg.model.gradient_checkpointing),
                                   backend).to(device)
        critic = CriticWorker(critic_model, make_engine(cfg, CriticValues(critic_model), opt.critic_lr, updates),
                              max_tokens=max_tokens)
    sp = sequence_parallel_context(cfg, backend)
    if sp is not None:
        from lmm_r1_ascend.models.sequence_parallel import enable_sequence_parallel

        for worker in (actor, reference, critic):
            if worker is not None:
                enable_sequence_parallel(worker.model, sp)
    return actor, reference, critic


def sequence_parallel_context(cfg: TrainConfig, backend: Backend):
    """The rank's SequenceParallel (models.sequence_parallel) for distributed.sequence_parallel_*,
    or None at size 1. Collective: every rank of the default group calls it (it creates the groups)."""
    size = cfg.distributed.sequence_parallel_size
    if size == 1:
        return None
    from lmm_r1_ascend.kernels.collectives import sequence_parallel_group
    from lmm_r1_ascend.models.sequence_parallel import SequenceParallel

    mode = cfg.distributed.sequence_parallel_mode
    group, rank = sequence_parallel_group(size)
    return SequenceParallel(size, rank, group, mode, backend.sequence_parallel_kernels()[mode].fn)


def build_rollout_engine(cfg: TrainConfig, actor_path: str, device: torch.device, dtype: torch.dtype) -> RolloutEngine:
    """The engine rollout.engine names (rollout/registry.py), built from the run config."""
    from lmm_r1_ascend.rollout.base import EngineRun
    from lmm_r1_ascend.rollout.registry import engine_class

    run = EngineRun(seed=cfg.seed, device=cfg.device, n_samples_per_prompt=cfg.algorithm.n_samples_per_prompt)
    engine = engine_class(cfg.rollout.engine).from_config(cfg.rollout, run, actor_path, device, dtype)
    if cfg.env.name:  # multi-turn: whole trajectories are played where the engine lives
        from lmm_r1_ascend.rollout.multi_turn import wrap_multi_turn

        return wrap_multi_turn(engine, cfg.env, cfg.data, actor_path)
    return engine
