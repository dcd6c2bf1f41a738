"""Replay a recorded rollout on one backend: the trainer's training computation, same tokens.

Per recorded step, exactly what ``PPOTrainer.train_step`` does after the rollout and the
rewards: reference log-probs and critic values on packed micro-batches, KL-shaped GAE
advantages (``ExperienceBatch.with_advantages``), the critic's then the actor's updates over
seeded mini-batches (``trainer.ppo_update.ppo_update``, the trainer's own function), through the
real workers and engines. Before the updates, the actor's log-probs of the replayed tokens
are compared with the log-probs the rollout sampled them with. No rollout engine runs:
only the training computation differs between backends.

Per step, the result holds (floats, means over mini-batches where the trainer averages):
    policy_loss, value_loss, kl (the trainer's "kl": mean token KL of the rollout policy
    against the reference), entropy, actor_grad_norm, critic_grad_norm (pre-clip),
    logprob_diff_mean / logprob_diff_max (|actor log-prob - recorded log-prob| over action
    tokens, before the step's updates), ref_logprob_mean, value_mean (forward-only
    quantities that locate a divergence before any backward runs), and the trainer's
    rollout/trainer mismatch figures (mismatch_probs_diff_mean / _max, mismatch_kl: this
    backend's recomputed old log-probs against the recorded rollout's, as the trainer logs
    them as mismatch/*).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmm_r1_ascend.parity.rollout_file import TRAINING_KEYS, ParityInputError, load_rollout

RESULT_FORMAT = "lmm-r1-parity/1"
METRICS = ("policy_loss", "value_loss", "kl", "entropy", "actor_grad_norm", "critic_grad_norm",
           "logprob_diff_mean", "logprob_diff_max", "ref_logprob_mean", "value_mean",
           "mismatch_probs_diff_mean", "mismatch_probs_diff_max", "mismatch_kl")
# replay metric -> the trainer's ppo_update metric (algorithm.old_logprobs=recompute)
MISMATCH_METRICS = {"mismatch_probs_diff_mean": "mismatch/probs_diff_mean",
                    "mismatch_probs_diff_max": "mismatch/probs_diff_max", "mismatch_kl": "mismatch/kl"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _experience(step: dict[str, Any]):
    from lmm_r1_ascend.experience import ExperienceBatch

    return ExperienceBatch(
        prompt_ids=[t.long() for t in step["prompt_ids"]], response_ids=[t.long() for t in step["response_ids"]],
        action_mask=[t.bool() for t in step["action_mask"]], log_probs=[t.float() for t in step["log_probs"]],
        rewards=step["rewards"].float(), group_ids=step["group_ids"].long())


def _masked(values: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([v[m] for v, m in zip(values, masks)])


def run_config(model: str, algorithm: dict, training: dict, dtype: str, attention: str | None = None):
    """The TrainConfig a recording's settings describe: its model, algorithm and "training"
    keys (rollout_file.TRAINING_KEYS) on the torch engine, everything else at its default."""
    from lmm_r1_ascend.config.loader import build
    from lmm_r1_ascend.config.schema import TrainConfig

    sections: dict[str, dict] = {"model": {"pretrain": model, "dtype": dtype}, "algorithm": dict(algorithm)}
    for section, keys in TRAINING_KEYS.items():
        sections.setdefault(section, {}).update({key: training[key] for key in keys})
    return build(TrainConfig, sections)


class ParityModels:
    """Actor, reference and critic workers on one backend, built by the trainer's own builder
    (workers.builders.build_rank_workers: load order actor, reference, critic; torch engines
    with the recorded settings).

    value_head: the critic head's initial weights (1, H); None keeps the loader's draw.
    """

    def __init__(self, model: str, algorithm: dict, training: dict, backend, device: torch.device, dtype: str,
                 attention: str | None = None, value_head: torch.Tensor | None = None):
        from lmm_r1_ascend.workers.builders import build_rank_workers, resolve_model_name

        cfg = run_config(model, algorithm, training, dtype)
        self.alg = cfg.algorithm
        if backend.device(0) != device:
            raise ValueError(f"ParityModels builds on the backend's device {backend.device(0)}, not {device}")
        self.actor, self.reference, self.critic = build_rank_workers(
            cfg, backend, resolve_model_name(model), int(training["total_updates"]), attention=attention)
        if self.alg.old_logprobs != "recompute":
            raise ParityInputError("the recording's algorithm.old_logprobs must be recompute: the replay reports the "
                                   "rollout/trainer mismatch (mismatch_*)")
        if self.reference is None or self.critic is None:
            raise ParityInputError("the recording's algorithm must use a reference (KL) and a critic (gae): "
                                   "the replay reports both losses")
        if value_head is not None:
            head = self.critic.model.value_head.weight
            with torch.no_grad():
                head.copy_(value_head.to(head))

    # The TrainingCluster methods ppo_update calls (one rank, in this process).
    def actor_log_probs(self, batch) -> list[torch.Tensor]:
        return self.actor.log_probs(batch)

    def ref_log_probs(self, batch) -> list[torch.Tensor]:
        return self.reference.log_probs(batch)

    def critic_values(self, batch) -> list[torch.Tensor]:
        return self.critic.values(batch)

    def train_critic(self, minibatch, alg) -> dict[str, float]:
        return self.critic.train_minibatch(minibatch, alg)

    def train_actor(self, minibatch, alg) -> dict[str, float]:
        return self.actor.train_minibatch(minibatch, alg)

    def train_actor_on_policy(self, minibatch, alg) -> tuple[dict[str, float], list[torch.Tensor]]:
        return self.actor.train_on_policy(minibatch, alg)

    def attention_modules(self) -> list[torch.nn.Module]:
        """The modules whose text attention is the backend's packed attention."""
        return [self.actor.model, self.reference.model, self.critic.model.model]


def replay_step(models: ParityModels, batch, *, seed: int, step: int, kl_ctl, training: dict) -> dict[str, float]:
    """One step of the trainer's training computation on a recorded batch (see the module doc):
    `trainer.ppo_update.ppo_update`, the function PPOTrainer.train_step calls."""
    from lmm_r1_ascend.trainer.ppo_update import ppo_update
    from lmm_r1_ascend.workers.roles import average_metrics

    current = models.actor.log_probs(batch)
    diff = (_masked(current, batch.action_mask) - _masked(batch.log_probs, batch.action_mask)).abs()
    upd = ppo_update(models, batch, models.alg, kl_ctl=kl_ctl, train_batch_size=int(training["train_batch_size"]),
                     max_epochs=int(training["max_epochs"]), seed=seed, step=step)
    batch = upd.batch
    c, a = average_metrics(upd.critic_rows), average_metrics(upd.actor_rows)
    return {
        **{name: float(upd.metrics[key]) for name, key in MISMATCH_METRICS.items()},
        "policy_loss": a["loss/policy"], "value_loss": c["critic/loss"], "kl": float(upd.advantages.mean_kl),
        "entropy": a["policy/entropy"], "actor_grad_norm": a["actor/grad_norm"],
        "critic_grad_norm": c["critic/grad_norm"], "logprob_diff_mean": float(diff.mean()),
        "logprob_diff_max": float(diff.max()),
        "ref_logprob_mean": float(_masked(batch.ref_log_probs, batch.action_mask).mean()),
        "value_mean": float(_masked(batch.values, batch.action_mask).mean()),
        "optimizer_steps": float(len(upd.actor_rows)),
    }


def run_parity(rollout_path: str | Path, *, device: str = "cpu", dtype: str = "float32",
               attention: str | None = None, plant: str | None = None, threads: int | None = 1,
               log=lambda msg: None) -> dict[str, Any]:
    """Replay ``rollout_path`` on backend ``device``; return the JSON-able parity result.

    dtype: "float32" or "bfloat16" (model weights and activations). attention: force an
    attention implementation of the backend by name (select_kernels override). plant: a
    deliberate bug ("wrong-scale", "leaky-mask", see parity.plants) to check the harness.
    threads: torch's CPU threads for the run (restored afterwards; None leaves them). One by
    default: CPU matmul blocking and reduction order depend on the thread count, so a CPU
    golden should not depend on the machine's cores; and on a shared 2-core machine two
    threads per process ran 9x slower than one (oversubscription).
    """
    from lmm_r1_ascend.backends import get_backend
    from lmm_r1_ascend.parity.plants import PLANTS

    if dtype not in DTYPES:
        raise ParityInputError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if plant is not None and plant not in PLANTS:
        raise ParityInputError(f"unknown plant {plant!r}; choose one of {list(PLANTS)}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ParityInputError(f"threads must be an int >= 1 or None, got {threads!r}")
    rollout = load_rollout(rollout_path)
    backend = get_backend(device)  # BackendUnavailable when the device cannot be used here
    # torch's process-wide switches are put back afterwards (in-process callers, tests)
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    backend.set_deterministic(True)  # before any device work: cuBLAS reads its workspace setting once
    try:
        try:
            kernels = backend.select_kernels({"attention": attention} if attention else None)
        except ValueError as exc:  # an unknown implementation name (an unusable one is BackendUnavailable)
            raise ParityInputError(str(exc)) from None
        if threads is not None:
            torch.set_num_threads(threads)
        return _run(rollout, backend, kernels, dtype, attention, plant, log)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])


def _run(rollout: dict, backend, kernels: dict, dtype: str, attention: str | None, plant: str | None,
         log) -> dict[str, Any]:
    from lmm_r1_ascend.algorithms.kl import make_kl_controller
    from lmm_r1_ascend.parity.plants import apply_plant
    from lmm_r1_ascend.parity.stamp import environment

    dev = backend.device(0)
    seed = int(rollout["seed"])
    backend.seed_everything(seed)
    models = ParityModels(rollout["model"], rollout["algorithm"], rollout["training"], backend, dev, dtype,
                          attention, value_head=rollout["critic_value_head"])
    if plant is not None:
        apply_plant(plant, kernels.attention.fn, models.attention_modules(),
                    name=f"lmm_r1_varlen_{backend.name}_{kernels.attention.name}_plant_{plant}")
    alg = models.alg
    kl_ctl = make_kl_controller(alg.init_kl_coef, alg.kl_target, alg.kl_horizon)
    steps = []
    for k, step in enumerate(rollout["steps"]):
        row = replay_step(models, _experience(step), seed=seed, step=k, kl_ctl=kl_ctl, training=rollout["training"])
        steps.append({"step": k, **row})
        log(f"step {k}: " + ", ".join(f"{m} {row[m]:.6g}" for m in METRICS))
    return {
        "format": RESULT_FORMAT,
        "rollout": {"name": rollout["name"], "sha256": rollout["sha256"], "steps": len(rollout["steps"]),
                    "samples_per_step": len(rollout["steps"][0]["response_ids"]), "model": rollout["model"]},
        "environment": environment(backend, device=dev, kernels=kernels, dtype=DTYPES[dtype], seed=seed, plant=plant),
        "algorithm": {k: rollout["algorithm"][k] for k in ("advantage_estimator", "init_kl_coef", "kl_estimator",
                                                           "policy_loss", "loss_agg_mode")},
        "metrics": list(METRICS),
        "steps": steps,
    }
