"""The training configuration: nested dataclasses whose keys mirror the code and RECIPE.md.

A recipe YAML (lmm_r1_ascend/recipes/*.yaml) sets any subset of these keys; `key=value`
overrides on the command line set dotted paths (`optim.actor_lr=1e-6`,
`algorithm.advantage_estimator=rloo`). Defaults are the recipe's common hyperparameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lmm_r1_ascend.algorithms.config import AlgorithmConfig

# Enumerated keys are Literal types: config/loader.py checks any value against typing.get_args.
LOGGERS = ("tensorboard", "wandb", "swanlab", "mlflow")  # trainer.loggers: experiment trackers


@dataclass
class ModelConfig:
    """pretrain: HF directory or a built-in tiny model name (tiny-qwen2, tiny-qwen2.5-vl, demo-fre).
    critic_pretrain: backbone of the critic (defaults to pretrain) when the estimator needs one.
    init_from: for stage mgt, the FRE run directory (or its hf/ export) the actor starts from.
    dtype: auto (the backend's: fp32 on CPU, bf16 on accelerators) | float32 | bfloat16 | float16.
    freeze_prefixes: parameter-name prefixes kept frozen in the actor (e.g. model.visual).
    share_prompts: packed forwards (actor, reference, critic) run each distinct prompt of a
      micro-batch once, its images included, and its n samples' responses attend to that copy
      (kernels/shared_prompts.py); not under sequence parallelism. False packs every sample whole.
    """

    pretrain: str = "tiny-qwen2"
    critic_pretrain: str | None = None
    init_from: str | None = None
    dtype: str = "auto"
    gradient_checkpointing: bool = False
    freeze_prefixes: list[str] = field(default_factory=list)
    share_prompts: bool = True


@dataclass
class DataConfig:
    """prompt_data: jsonl / json files or a saved HF dataset directory (one or several).
    system_prompt: text, "math" (the recipe's math system prompt), or null (rows' own).
    eval_data: held-out files for validation during training (trainer.eval_steps); loaded
      like prompt_data, in file order, never shuffled. `demo:arithmetic-eval` is the demo's
      held-out split.
    """

    prompt_data: list[str] = field(default_factory=list)
    eval_data: list[str] = field(default_factory=list)
    loader: str = "auto"
    system_prompt: str | None = None
    max_prompt_len: int = 4096
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 16384 * 28 * 28
    on_bad_line: Literal["raise", "skip"] = "raise"
    shuffle: bool = True
    response_key: str = "response"  # stage sft: the row field holding the reference response (a row without one is bad)


@dataclass
class RolloutConfig:
    """engine: hf (transformers generate; the default on CPU) | vllm (vLLM / vllm-ascend) | a
      registered one (rollout/registry.py).
    rollout_batch_size: prompts per rollout (each sampled n_samples_per_prompt times).
    micro_rollout_batch_size: prompts per generate() call of the hf engine (x n samples = rows
      per call); vLLM schedules its own batches and ignores it. On CPU at small widths each
      decode iteration is mostly fixed overhead, so fewer, wider calls win: the demo's 16
      prompts x 8 in one call took 0.52x the time of 2-prompt calls and 0.82x that of 8-prompt
      ones (benchmarks/results/rollout_rows_cpu.txt). With the hf engine on a GPU/NPU the bound is the KV
      cache: rows x (prompt + max_new_tokens) x layers x 2 x kv_heads x head_dim x bytes
      (Qwen2.5-VL-3B in bf16: 36 KiB per token, ~300 MB per 8k-token row), which is why the
      paper recipes keep 1-2 prompts x 16 samples; use vLLM there.
    async_mode: sync (generate, then train, then sync weights: exact, resumable bit for bit) |
      one_step_off (engine actors generate the next batch while the ranks train on this one:
      each batch is one weight version behind) | bounded (engine actors run up to
      max_staleness versions ahead). Async modes need engine actors on devices of their own
      (distributed.mode=ray, rollout_engines >= 1) and old_logprobs=recompute: the update is
      decoupled PPO, see docs/async_rollout.md.
    max_staleness: bounded mode: how many weight versions a sample may lag the trainer
      (>= 1; one_step_off is bounded with 1, sync is 0).
    """

    engine: str = "hf"
    rollout_batch_size: int = 256
    micro_rollout_batch_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 4096
    vllm_tensor_parallel_size: int = 1
    vllm_gpu_memory_utilization: float = 0.5
    vllm_enable_sleep: bool = True
    async_mode: Literal["sync", "one_step_off", "bounded"] = "sync"
    max_staleness: int = 1


@dataclass
class RewardConfig:
    """default: the reward for rows whose datasource no route matches: math | sokoban |
    custom:PATH.py | http(s)://URL. routes: {datasource glob: spec}.
    overlong_shaping: DAPO's soft overlong penalty, added to the reward: 0 up to
      max_new_tokens - overlong_buffer_len response tokens, then falling linearly to
      -overlong_penalty at rollout.max_new_tokens (algorithms/shaping.py).
    """

    default: str = "math"
    routes: dict[str, str] = field(default_factory=dict)
    format_weight: float = 0.5
    use_format: bool = True
    timeout_s: float = 10.0
    workers: int = 2
    on_error: str = "raise"
    overlong_shaping: bool = False
    overlong_buffer_len: int = 1024
    overlong_penalty: float = 1.0


@dataclass
class EnvConfig:
    """Multi-turn agent rollout (rollout/multi_turn.py, docs/agents.md). name: a registered
      environment (envs/registry.py, e.g. sokoban); "" is the single-response rollout. With a name,
      each sample is a trajectory: the policy answers, the environment steps on the answer and its
      observation (text and/or images) becomes the next user turn, until the env says done,
      max_turns turns, or the response budget; the env's summed rewards are the sample's reward.
    file: a Python file of your own environments (envs/registry.py load_env_file), imported before
      env.name is looked up, in every process that plays the env: IMPORTING IT RUNS ITS CODE, as for a
      custom reward file; env.name must be one of the names it registers. "": built-in envs only.
    kwargs: the environment's constructor arguments (e.g. sokoban: moves_per_turn, max_moves, show_grid).
    max_turns: policy turns per trajectory. max_images: images in one whole sequence (prompt and
      observations); max_image_pixels: pixels (w x h) of one observation image before resizing.
    max_response_tokens: every turn and observation of a trajectory together (each turn is also
      capped by rollout.max_new_tokens). timeout_s: longest env reset / step (envs/guard.py).
    """

    name: str = ""
    file: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    max_turns: int = 5
    max_images: int = 8
    max_image_pixels: int = 1024 * 1024
    max_response_tokens: int = 4096
    timeout_s: float = 30.0


@dataclass
class OptimConfig:
    actor_lr: float = 1e-6
    critic_lr: float = 9e-6
    adam_betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    max_norm: float = 1.0
    lr_scheduler: str = "cosine_with_min_lr"
    min_lr_ratio: float = 0.1
    lr_warmup_ratio: float = 0.03


@dataclass
class TrainerConfig:
    """train_batch_size: samples per optimizer step; a rollout of rollout_batch_size x n
    samples gives (rollout_batch_size * n / train_batch_size) steps per epoch.
    max_tokens_per_micro_batch: packed tokens per forward/backward (sequences are kept whole), counted
      with every sample whole: with model.share_prompts the packed row is shorter.
    num_episodes: passes over the prompt data; max_steps: stop after this many rollouts (0: no cap).
    """

    train_batch_size: int = 256
    max_epochs: int = 1
    max_tokens_per_micro_batch: int = 16384
    num_episodes: int = 1
    max_steps: int = 0
    save_steps: int = 20
    save_hf: bool = True
    keep_checkpoints: int = 2
    tensorboard: bool = True  # false drops tensorboard from trainer.loggers (a shortcut older commands use)
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])  # any of LOGGERS (docs/trackers.md)
    project: str = "lmm-r1-ascend"  # the trackers' project (wandb / swanlab project, mlflow experiment)
    run_name: str = ""  # the trackers' run name ("": output_dir's folder name)
    tags: list[str] = field(default_factory=list)  # the trackers' run tags
    log_artifacts: bool = False  # at the end, upload config.yaml, metrics.jsonl, eval/ and hf/ to the trackers
    deterministic: bool = False
    resume: bool = True   # continue from the newest checkpoint in output_dir when there is one
    eval_steps: int = 0   # validate on data.eval_data every N steps (and after the last); 0: never
    eval_before_train: bool = False  # also validate the starting model (logged as step 0)
    best_metric: str = ""  # e.g. eval/all/accuracy: keep <output_dir>/best (HF format) at its highest
    max_consecutive_skips: int = 3  # stop after this many optimizer steps in a row skipped as non-finite (0: never)
    on_save_error: str = "stop"  # a checkpoint that cannot be written (disk full, I/O error): stop | skip (warn, count)


@dataclass
class EvalConfig:
    """Sampling of validation during training (trainer.eval_steps) on data.eval_data.

    n_samples: per prompt (pass@k / maj@k for k <= n). temperature: 0 is greedy.
    max_new_tokens: 0 takes rollout.max_new_tokens. limit: only the first N prompts (0: all).
    batch_prompts: prompts per generate() call.
    """

    n_samples: int = 1
    temperature: float = 0.0
    max_new_tokens: int = 0
    limit: int = 0
    batch_prompts: int = 64


@dataclass
class DistributedConfig:
    """How the workers are placed (docs/distributed.md).

    mode: local (every worker in this process, one rank) | ray (one Ray actor per rank).
    world_size: training ranks (data parallel); each hosts the actor and, when used, the
      critic and reference (colocated: they share the rank's device).
    colocate_models: false gives the critic and the reference worker groups of their own
      (world_size ranks each, on devices of their own; ray mode).
    train_engine: torch (single process) | deepspeed (ZeRO; needed for world_size > 1).
    zero_stage, offload_optimizer, offload_params: DeepSpeed ZeRO options.
    rollout_engines: rollout engine actors (ray mode); 0 places one engine inside rank 0's
      process, updated in place. Each engine uses rollout.vllm_tensor_parallel_size devices.
    colocate_rollout: with rollout_engines=0, an engine inside EVERY training rank's process
      (all models and engines share the devices, as the paper's 8-device runs; prompts are
      split across the ranks, weights copied in place on each).
    Weight sync follows the placement: in place for the engine in rank 0's process, a
      bucketed broadcast (a side group from trainer rank 0 to the engine actors over the
      backend's collective library) otherwise; weight_sync_bucket_mb sizes its buckets.
    ray_address: "" starts a local Ray instance; "auto" joins the cluster `ray start` made.
    cpus_per_rank: CPU cores reserved per rank in the placement group.
    placement_strategy: PACK (fill nodes first) | SPREAD | STRICT_PACK | STRICT_SPREAD.
    timeout_s: collective and rendezvous timeout.
    sequence_parallel_size: ranks that split each packed micro-batch's tokens (SP group size;
      it must divide world_size: world_size / sequence_parallel_size data-parallel replicas).
      Every rank of an SP group holds ~1/sp of the tokens of each forward (docs/sequence_parallel.md).
    sequence_parallel_mode: ring (k/v passed around the group; any head count) | ulysses
      (all-to-all to a head split; attention and kv heads must divide by the SP size).
    """

    mode: Literal["local", "ray"] = "local"
    world_size: int = 1
    colocate_models: bool = True
    train_engine: Literal["torch", "deepspeed"] = "torch"
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    rollout_engines: int = 1
    colocate_rollout: bool = False
    weight_sync_bucket_mb: int = 256
    ray_address: str = ""
    cpus_per_rank: int = 1
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    timeout_s: float = 1800.0
    sequence_parallel_size: int = 1
    sequence_parallel_mode: Literal["ring", "ulysses"] = "ring"


@dataclass
class TrainConfig:
    stage: Literal["fre", "mgt", "sft"] = "fre"  # sft: teacher forcing on data.response_key (trainer/sft.py)
    recipe: str | None = None
    device: str = "auto"
    seed: int = 42
    output_dir: str = "outputs/run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
