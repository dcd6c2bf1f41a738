"""Record the parity rollout once: a short, seeded PPO run on CPU whose rollouts are kept.

The recording IS the trainer (``PPOTrainer.train_step``: HF rollout engine, math rewards,
the training computation) on the built-in demo model "demo-fre" and the
"demo:arithmetic" data, with ``PARITY_OVERRIDES`` on the demo_fre recipe: a critic (GAE)
and a non-zero KL coefficient so every training term is exercised; two mini-batches per
step and ~600-token micro-batches, so several optimizer steps are taken and gradients are
accumulated over packed forwards. Every step's samples are stored (layout in
``rollout_file``), so a later ``parity run`` on any backend trains on exactly these tokens.

Self-check: after recording, the file is replayed on CPU; the replay must reproduce the
recording trainer's own metrics, or the recording is rejected (the replay would not be
the trainer's computation).
"""

from __future__ import annotations

import math
import platform
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from lmm_r1_ascend.parity.rollout_file import ROLLOUT_FORMAT, TRAINING_KEYS, ParityInputError, file_sha256

RECIPE = "demo_fre"
MODEL = "demo-fre"
PARITY_OVERRIDES = (
    "device=cpu", "model.dtype=float32", "trainer.deterministic=true",
    "algorithm.advantage_estimator=gae", "algorithm.advantage_normalization=auto",
    "algorithm.init_kl_coef=0.01", "algorithm.n_samples_per_prompt=8",
    "rollout.rollout_batch_size=2", "rollout.max_new_tokens=40", "rollout.temperature=1.0",
    "trainer.train_batch_size=8", "trainer.max_epochs=1", "trainer.max_tokens_per_micro_batch=600",
    "trainer.save_steps=0", "trainer.tensorboard=false", "trainer.resume=false",
    "optim.critic_lr=5.0e-5", "reward.workers=1",
)
# PPOTrainer.train_step metric -> parity metric (replay.METRICS).
TRAINER_METRICS = {"loss/policy": "policy_loss", "critic/loss": "value_loss", "kl": "kl",
                   "policy/entropy": "entropy", "actor/grad_norm": "actor_grad_norm",
                   "critic/grad_norm": "critic_grad_norm"}
# What the replay needs from the run's config, besides the algorithm section.
# The self-check replays with the recording's kernels on the same machine; only the order of
# a few reductions may differ (1e-7 relative in fp32), so 1e-4 relative is a wide margin.
SELF_CHECK_RTOL, SELF_CHECK_ATOL = 1e-4, 1e-6


def _recorder_class():
    from lmm_r1_ascend.trainer.ppo import PPOTrainer

    class RecordingTrainer(PPOTrainer):
        """The trainer, unchanged, keeping each rollout's experience batch as it is built."""

        def _experience(self, samples, rewards, info):
            batch = super()._experience(samples, rewards, info)
            self.recorded.append((batch, [s.finish_reason for s in samples]))
            return batch

    return RecordingTrainer


def _step_record(batch, finish_reasons: list[str]) -> dict[str, Any]:
    # int32 ids: the demo vocabulary is tiny, and it halves the committed file.
    return {
        "prompt_ids": [t.to(torch.int32).clone() for t in batch.prompt_ids],
        "response_ids": [t.to(torch.int32).clone() for t in batch.response_ids],
        "action_mask": [t.to(torch.bool).clone() for t in batch.action_mask],
        "log_probs": [t.to(torch.float32).clone() for t in batch.log_probs],
        "rewards": batch.rewards.to(torch.float32).clone(),
        "group_ids": batch.group_ids.to(torch.int64).clone(),
        "finish_reasons": list(finish_reasons),
    }


def _initial_value_head(seed: int, algorithm: dict, training: dict) -> torch.Tensor:
    """The critic head the trainer starts from: seed, then load actor, reference, critic (its order)."""
    from lmm_r1_ascend.backends import get_backend
    from lmm_r1_ascend.parity.replay import ParityModels

    backend = get_backend("cpu")
    backend.seed_everything(seed)
    models = ParityModels(MODEL, algorithm, training, backend, backend.device(0), "float32")
    return models.critic.model.value_head.weight.detach().float().cpu().clone()


def self_check(path: str | Path, trainer_metrics: list[dict[str, float]]) -> None:
    """Replay ``path`` on CPU; raise RuntimeError unless it reproduces the trainer's metrics."""
    from lmm_r1_ascend.parity.replay import run_parity

    steps = run_parity(path, device="cpu")["steps"]
    bad = []
    for k, (row, want) in enumerate(zip(steps, trainer_metrics)):
        for key, metric in TRAINER_METRICS.items():
            a, b = want[key], row[metric]
            if not abs(a - b) <= SELF_CHECK_ATOL + SELF_CHECK_RTOL * abs(a):
                bad.append(f"step {k} {metric}: trainer {a:.8g}, replay {b:.8g}")
    if bad:
        raise RuntimeError("the CPU replay does not reproduce the recording trainer, so it is not the trainer's "
                           "computation (did PPOTrainer.train_step change? update parity/replay.py): " + "; ".join(bad))


def record_rollout(out: str | Path, *, steps: int = 3, seed: int = 42, check: bool = True,
                   log: Callable[[str], None] = print) -> Path:
    """Run ``steps`` seeded PPO steps on CPU (one torch thread) and save their rollouts to ``out``."""
    import transformers

    from lmm_r1_ascend.config import load_config, to_dict
    from lmm_r1_ascend.demo.data import prepare_demo_data
    from lmm_r1_ascend.parity.stamp import utc_now

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ParityInputError(f"--steps must be an int >= 1, got {steps!r}")
    out = Path(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as parity runs do: results independent of the core count
    try:
        with tempfile.TemporaryDirectory(prefix="lmm-r1-parity-record-") as tmp:
            cfg = load_config(recipe=RECIPE, overrides=[*PARITY_OVERRIDES, f"seed={int(seed)}",
                                                        f"trainer.max_steps={steps}", f"output_dir={tmp}"])
            cfg = prepare_demo_data(cfg)
            trainer = _recorder_class()(cfg, log=log)
            trainer.recorded = []
            metrics = []
            try:
                for k in range(steps):
                    row = trainer.train_step()
                    metrics.append({key: float(row[key]) for key in TRAINER_METRICS})
                    log(f"recorded step {k}: reward/mean {row['reward/mean']:.3f}, "
                        f"loss/policy {row['loss/policy']:.5g}")
            finally:
                trainer.parts.close()
        sections = to_dict(cfg)
        training = {key: sections[sec][key] for sec, keys in TRAINING_KEYS.items() for key in keys}
        per_rollout = (cfg.rollout.rollout_batch_size * cfg.algorithm.n_samples_per_prompt
                       // cfg.trainer.train_batch_size)
        # The trainer plans rollouts x mini-batches x epochs optimizer updates for its LR schedule.
        training["total_updates"] = max(1, steps * per_rollout * cfg.trainer.max_epochs)
        algorithm = sections["algorithm"]
        data = {
            "format": ROLLOUT_FORMAT, "model": MODEL, "seed": int(cfg.seed), "algorithm": algorithm,
            "training": training, "critic_value_head": _initial_value_head(int(cfg.seed), algorithm, training),
            "steps": [_step_record(b, f) for b, f in trainer.recorded], "trainer_metrics": metrics,
            "recorded_with": {"torch": str(torch.__version__), "transformers": str(transformers.__version__),
                              "python": platform.python_version(), "date_utc": utc_now()},
        }
    finally:
        torch.set_num_threads(threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, out)
    if check:
        try:
            self_check(out, metrics)
        except RuntimeError:
            out.unlink()
            raise
        log("self-check: the CPU replay reproduces the recording trainer's metrics")
    n = len(data["steps"][0]["rewards"])
    log(f"wrote {out} ({math.ceil(out.stat().st_size / 1024)} KiB, {steps} steps x {n} samples, "
        f"sha256 {file_sha256(out)[:12]})")
    return out
