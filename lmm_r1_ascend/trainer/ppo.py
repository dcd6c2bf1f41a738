"""The PPO controller loop (DESIGN.md "One training step"): one loop for every backend and
every placement (local: one process; ray: one actor per rank, see lmm_r1_ascend/distributed).

Per step: rollout (n samples per prompt) -> rewards (overlong shaping; dynamic sampling
draws more prompts while groups are uninformative, trainer/rollout_collect.py) -> the old
policy's log-probs recomputed by the actor, the rollout/trainer mismatch and its correction
weights -> reference log-probs and critic values on packed micro-batches -> KL-shaped
advantages -> critic update -> actor update -> new actor weights into the rollout engine
-> metrics -> checkpoint. The controller only
holds small CPU tensors; the workers own the models.

With rollout.async_mode one_step_off | bounded the engine actors generate the next batches
while the ranks train (trainer/async_rollout.py): the step takes a batch generated ahead,
and pushes the new weights without waiting for the engines.

Beside the loop, one object per job: Checkpointer (trainer/checkpointer.py: resume, save,
the failed-save count), Validator (trainer/validation.py: the held-out evaluation), Progress
(trainer/progress.py: the bar and the per-step lines), SkipRuns (trainer/skips.py: the stop
after too many skipped optimizer steps in a row).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import torch
import yaml

from lmm_r1_ascend.algorithms.kl import make_kl_controller
from lmm_r1_ascend.algorithms.rollout_correction import MISMATCH_WARNING_CAUSES
from lmm_r1_ascend.backends import get_backend
from lmm_r1_ascend.config import TrainConfig, to_dict
from lmm_r1_ascend.distributed.rollout_client import staleness_bound
from lmm_r1_ascend.distributed.worker_group import WorkerDiedError
from lmm_r1_ascend.engines.base import NonFiniteError
from lmm_r1_ascend.experience import ExperienceBatch
from lmm_r1_ascend.experience.multi_turn import step_rewards_of
from lmm_r1_ascend.rewards.scoring import Scored, reward_metrics
from lmm_r1_ascend.rollout.base import RolloutSample, SamplingConfig
from lmm_r1_ascend.rollout.multi_turn import env_error_metrics
from lmm_r1_ascend.trainer.async_rollout import AsyncRollout, staleness_metrics
from lmm_r1_ascend.trainer.checkpointer import Checkpointer
from lmm_r1_ascend.trainer.dry_run import check_rewards
from lmm_r1_ascend.trainer.metrics import MetricsWriter, length_by_source
from lmm_r1_ascend.trainer.ppo_update import UpdateResult, ppo_update
from lmm_r1_ascend.trainer.progress import Progress
from lmm_r1_ascend.trainer.rollout_collect import Collected, collect, shape_overlong
from lmm_r1_ascend.trainer.setup import build_components
from lmm_r1_ascend.trainer.skips import SkipRuns
from lmm_r1_ascend.trainer.stop import RunStopped, StopRequest
from lmm_r1_ascend.trainer.trackers import check_loggers, open_trackers
from lmm_r1_ascend.trainer.validation import Validator
from lmm_r1_ascend.workers.builders import planned_rollouts
from lmm_r1_ascend.workers.roles import average_metrics

Timed = Callable[[str], contextlib.AbstractContextManager]


class PPOTrainer:
    def __init__(self, cfg: TrainConfig, *, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.progress = Progress(log)
        log = self.log = self.progress.log  # every message of the run goes through the progress bar when one is shown
        self.backend = get_backend(cfg.device)
        self.backend.seed_everything(cfg.seed)
        if cfg.trainer.deterministic:
            self.backend.set_deterministic(True)
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        check_loggers(cfg.trainer)  # an unknown or uninstalled tracker fails here, before any model loads
        check_rewards(cfg)  # a broken custom reward file fails here, in one line, not at the first scoring
        c = self.parts = build_components(cfg, self.backend, log=log)
        alg = cfg.algorithm
        self.kl_ctl = make_kl_controller(alg.init_kl_coef, alg.kl_target, alg.kl_horizon)
        self.total_steps = planned_rollouts(cfg, len(c.dataset))
        self.step = 0
        self.step_skips: dict[str, list[float]] = {}  # role -> skipped (1.0) or applied (0.0) per optimizer step
        self._mismatch_warned = False
        self.checkpoints = Checkpointer(cfg, self.out, self.backend, c.cluster, log)
        self.stop = StopRequest()  # its notice goes straight to stderr (print is not safe in a signal handler)
        t = cfg.trainer
        self.validator = Validator(cfg, c, self.out, log) if t.eval_steps or t.eval_before_train else None
        self.sampling = SamplingConfig(
            n=alg.n_samples_per_prompt, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
            top_k=cfg.rollout.top_k, max_new_tokens=cfg.rollout.max_new_tokens)
        self.async_rollout = None
        if cfg.rollout.async_mode != "sync":  # config validation ensures engine actors (RemoteRollout)
            self.async_rollout = AsyncRollout(
                c.rollout, bound=staleness_bound(cfg.rollout), take_prompts=self._next_prompts,
                data_state=c.dataset.state_dict, sampling=self.sampling, seed=cfg.seed,
                steps_after=lambda: self.total_steps - self.step - 1)
            if not alg.corrections:
                self.log(f"warning: rollout.async_mode={cfg.rollout.async_mode} trains on samples from weights up to "
                         f"{staleness_bound(cfg.rollout)} weight version(s) (rollouts' updates) old with "
                         "algorithm.rollout_correction=none: the PPO "
                         "ratio is taken against the recomputed (proximal) policy, but nothing reweights for the "
                         "policy that sampled them; token_tis gives decoupled PPO's importance weight "
                         "(docs/async_rollout.md)")

    # ------------------------------------------------------------------ the loop
    def fit(self, progress: bool = True, stop_after: int | None = None, step_lines: bool = False) -> list[dict]:
        """Train to the planned step count (resuming when a checkpoint exists). stop_after: end this
        process after that many steps with a checkpoint, as an interruption would (tests, preemption).
        step_lines: without a bar, log one line per step (a run written to a file shows its progress)."""
        cfg, history = self.cfg, []
        try:
            with contextlib.ExitStack() as cleanup:  # closed in reverse: the bar, the metrics writer, the workers
                cleanup.callback(self.parts.close)
                with self.stop:  # a first SIGINT / SIGTERM asks for a stop; left before anything is closed
                    self.maybe_resume()
                    writer = MetricsWriter(self.out, truncate_after=self.step,  # trackers: driver-side only
                                           trackers=open_trackers(cfg, to_dict(cfg), self.out, resume_step=self.step))
                    cleanup.callback(writer.close)
                    self.progress.open(total=self.total_steps, initial=self.step, bar=progress, step_lines=step_lines,
                                       desc=f"{cfg.stage} {cfg.recipe or ''}".strip())
                    cleanup.callback(self.progress.close)
                    self._loop(history, writer, stop_after)
        except WorkerDiedError as err:
            raise err.with_hint(self.checkpoints.resume_hint()) from None
        except NonFiniteError as err:  # a run of skipped steps, or weights gone bad before a save
            # from a Ray rank the error is Ray's wrapper, whose text is the remote traceback: take the cause's
            raise NonFiniteError(f"{getattr(err, 'cause', None) or err}; {self.checkpoints.resume_hint()}") from None
        return history

    def _loop(self, history: list, writer: MetricsWriter, stop_after: int | None) -> None:
        t, val = self.cfg.trainer, self.validator
        skips = SkipRuns(t.max_consecutive_skips)  # role -> optimizer steps skipped in a row (this process)
        if val is not None and t.eval_before_train and self.step == 0:
            writer.write(0, self._validate(0))  # the starting model, as step 0 (not a training step: not in history)
        while self.step < self.total_steps:
            if stop_after is not None and len(history) >= stop_after:
                self.save()
                return
            self._stop_if_asked()
            metrics = self.train_step()
            if val is not None and val.due(self.step, self.total_steps):
                metrics.update(self._validate(self.step))
            history.append(writer.write(self.step, metrics))
            self.progress.step_done(self.step, self.total_steps, self._step_summary(metrics))
            skips.advance(self.step_skips, self.step)  # before the save: a stopped run keeps its last good checkpoint
            if t.save_steps and self.step % t.save_steps == 0 and self.step < self.total_steps:
                self.save()
        self.save()  # a signal during this last save changes nothing: the run is complete
        if t.save_hf:
            self.parts.export_hf(self.out / "hf")
        if t.log_artifacts:
            writer.upload([self.out / name for name in ("config.yaml", "metrics.jsonl", "eval", "hf")])

    def _stop_if_asked(self) -> None:
        """After a first SIGINT / SIGTERM: this step's checkpoint (unless it was just written), then
        RunStopped (the CLI prints the resume command)."""
        if not self.stop.requested:
            return
        path = self.checkpoints.written(self.step)
        if path is None and self.step > 0:
            path = self.save()
        raise RunStopped(self.stop.signum, self.step, path or self.checkpoints.latest())

    def _validate(self, step: int) -> dict[str, float]:
        """The held-out evaluation (trainer/validation.py), said on the progress bar while it runs."""
        self.progress.eval_started(len(self.validator.prompts), self.validator.sampling.n)
        metrics = self.validator.run(step)
        self.progress.eval_finished(step, metrics)
        return metrics

    def _step_summary(self, metrics: dict[str, float]) -> str:
        """The step's figures on the progress bar and in the per-step line (trainer/sft.py shows its loss)."""
        return (f"reward {metrics['reward/mean']:.3f} acc {metrics.get('reward/accuracy', 0):.3f} "
                f"step {metrics['timing/step']:.1f}s")

    # ------------------------------------------------------------------ resume and save
    def maybe_resume(self) -> bool:
        """Continue from the latest checkpoint (trainer.resume); False when there is none."""
        path = self.checkpoints.resume(self._load_run_state)
        if path is None:
            return False
        self.parts.rollout.sync_weights()
        self.log(f"resumed from {path} at step {self.step}")
        return True

    def _load_run_state(self, state: dict) -> None:
        c = self.parts
        c.dataset.load_state_dict(state["data"])
        if self.async_rollout is not None:  # in-flight draws were dropped: regenerate from the oldest
            self.async_rollout.load_resume_state(state.get("async", {"draw": int(state["step"])}))
        self.kl_ctl.value = float(state["kl_coef"])
        self.step = int(state["step"])
        if self.validator is not None:
            self.validator.load_state_dict(state.get("eval", {}))

    def save(self) -> Path | None:
        """This step's checkpoint (trainer/checkpointer.py); None when it could not be written and
        trainer.on_save_error=skip."""
        state = {"data": self.parts.dataset.state_dict(), "kl_coef": self.kl_ctl.value}
        if self.async_rollout is not None:  # the dataset position before the oldest unconsumed draw
            state["async"] = self.async_rollout.resume_state()
            state["data"] = state["async"]["data"]
        if self.validator is not None:
            state["eval"] = self.validator.state_dict()
        return self.checkpoints.save(self.step, state)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        c, cfg, alg = self.parts, self.cfg, self.cfg.algorithm
        timings: dict[str, float] = {}
        timed = self._timer(timings)
        version = c.rollout.version  # the weights this step trains (the staleness of its samples is against them)
        depth = len(self.async_rollout.queue) if self.async_rollout is not None else 0  # draws generated ahead
        upd = None
        with timed("step"):
            got = collect(lambda k: self._draw(k, timed), n=alg.n_samples_per_prompt,
                          want_groups=cfg.rollout.rollout_batch_size, dynamic=alg.dynamic_sampling,
                          max_draws=alg.max_sample_batches, log=self.log, step=self.step)
            if got.samples:
                batch = self._experience(got.samples, got.scored.totals, got.scored.info)
                upd = ppo_update(c.cluster, batch, alg, kl_ctl=self.kl_ctl, train_batch_size=cfg.trainer.train_batch_size,
                                 max_epochs=cfg.trainer.max_epochs, seed=cfg.seed, step=self.step, timed=timed)
            with timed("weight_sync"):
                if self.async_rollout is not None:
                    self.async_rollout.end_step(updated=upd is not None)
                elif upd is not None:
                    c.rollout.sync_weights()
        self.step += 1
        lengths = torch.tensor([int(s.response_ids.numel()) for s in got.drawn], dtype=torch.float32)
        metrics = self._rollout_metrics(got, lengths, version, depth)
        self.step_skips = {}
        if upd is not None:
            metrics.update(self._update_metrics(upd, stale=bool(metrics.get("rollout/staleness_max"))))
        metrics.update(self._speed_metrics(got.drawn, float(lengths.sum()), timings))
        return self._with_common_metrics(metrics)

    def _timer(self, timings: dict[str, float]) -> Timed:
        """timed(name): a block's wall time (after the device finishes its work) added to timings['timing/<name>']."""
        @contextlib.contextmanager
        def timed(name: str) -> Iterator[None]:
            start = time.perf_counter()
            yield
            self.backend.synchronize()
            timings[f"timing/{name}"] = timings.get(f"timing/{name}", 0.0) + time.perf_counter() - start
        return timed

    def _next_prompts(self) -> list:
        c, want, out = self.parts, self.cfg.rollout.rollout_batch_size, []
        while len(out) < want:
            before = len(out)
            for item in c.dataset:
                out.append(item)
                if len(out) == want:
                    break
            if len(out) == before:
                raise RuntimeError("the prompt dataset yielded nothing (every row filtered or skipped?)")
        return out

    def _draw(self, k: int, timed: Timed) -> tuple[list[RolloutSample], Scored]:
        """The k-th prompt batch of this step (k > 0 only under dynamic sampling), sampled and scored."""
        c, cfg = self.parts, self.cfg
        with timed("rollout"):
            if self.async_rollout is not None:  # generated ahead, up to the staleness bound
                samples = self.async_rollout.take()
            else:
                prompts = self._next_prompts()
                # draw 0 keeps the seed it always had; further draws get seeds no other step uses
                sampling = dataclasses.replace(self.sampling, seed=cfg.seed * 100003 + self.step + k * 1_000_003)
                samples = c.rollout.generate(prompts, sampling)
        with timed("reward"):
            scored = c.score_samples(samples)
            r = cfg.reward
            if r.overlong_shaping:
                scored = shape_overlong(samples, scored, max_new_tokens=cfg.rollout.max_new_tokens,
                                        buffer_len=r.overlong_buffer_len, penalty=r.overlong_penalty)
        return samples, scored

    def _experience(self, samples: list[RolloutSample], rewards: torch.Tensor, info: dict) -> ExperienceBatch:
        # multi-turn samples also carry each turn's env reward at its last sampled token (gae / reinforce
        # credit it where it was earned; outcome estimators use `rewards`, the return)
        return ExperienceBatch(
            step_rewards=step_rewards_of(samples),
            prompt_ids=[s.prompt_ids for s in samples], response_ids=[s.response_ids for s in samples],
            action_mask=[s.action_mask for s in samples], log_probs=[s.logprobs for s in samples],
            rewards=rewards, group_ids=torch.tensor([s.prompt_index for s in samples]),
            multimodal=[s.multimodal for s in samples] if any(s.multimodal for s in samples) else None,
            info=info)

    # ------------------------------------------------------------------ one step's metrics
    def _rollout_metrics(self, got: Collected, lengths: torch.Tensor, version: int, depth: int) -> dict[str, float]:
        """What the policy did: rewards and lengths (`lengths`: response tokens of each drawn sample) of
        every sample drawn this step, dynamic sampling, staleness and the rollout engine's own figures."""
        drawn = got.drawn
        metrics = {
            **reward_metrics(drawn, got.drawn_scored),
            **env_error_metrics(drawn),
            "response_length/mean": float(lengths.mean()), "response_length/max": float(lengths.max()),
            "response_length/clip_ratio": sum(s.finish_reason == "length" for s in drawn) / len(drawn),
            **length_by_source(drawn),
            **got.metrics,
            **staleness_metrics(got.samples or drawn, version),
            **self.parts.rollout.metrics(),
        }
        if self.async_rollout is not None:
            metrics["rollout/queue_depth"] = float(depth)
        return metrics

    def _update_metrics(self, upd: UpdateResult, *, stale: bool) -> dict[str, float]:
        """The update's figures; records this rollout's skipped optimizer steps in step_skips."""
        if not stale:  # stale samples' mismatch includes the policy lag
            self._check_mismatch(upd.metrics, step=self.step)  # self.step already counts this step
        metrics = {
            "kl": float(upd.advantages.mean_kl), "kl_coef": upd.kl_coef,
            "advantages/mean": float(upd.batch.packed("advantages").mean()),
            **upd.metrics, **average_metrics(upd.critic_rows + upd.actor_rows)}
        for role, rows in (("critic", upd.critic_rows), ("actor", upd.actor_rows)):
            if rows:  # a count over this rollout's optimizer steps, not a mean
                self.step_skips[role] = [float(r.get(f"{role}/skipped_steps", 0.0)) for r in rows]
                metrics[f"{role}/skipped_steps"] = sum(self.step_skips[role])
        return metrics

    def _speed_metrics(self, drawn: list[RolloutSample], gen_tokens: float,
                       timings: dict[str, float]) -> dict[str, float]:
        prompt_tokens = sum(int(s.prompt_ids.numel()) for s in drawn)
        # async: timing/rollout is only the wait for samples generated ahead; the engines' own time counts
        gen_s = self.async_rollout.pop_generation_s() if self.async_rollout is not None else timings["timing/rollout"]
        return {
            **timings,
            "throughput/rollout_tokens_per_s": gen_tokens / max(gen_s, 1e-9),
            "throughput/tokens_per_s": (gen_tokens + prompt_tokens) / timings["timing/step"],
            "data/epoch": self.parts.dataset.epoch,
            "memory/peak_gb": self.parts.cluster.peak_memory_gb(),
        }

    def _check_mismatch(self, metrics: dict[str, float], step: int) -> None:
        """Warn once per run when the rollout engine's token probabilities drift from the trainer's."""
        diff = metrics.get("mismatch/probs_diff_mean")
        limit = self.cfg.algorithm.mismatch_warn_threshold
        if diff is None or self._mismatch_warned or not diff > limit:
            return
        self._mismatch_warned = True
        self.log(f"warning: step {step}: rollout/trainer mismatch: mean |p_rollout - p_trainer| = {diff:.4g} "
                 f"over response tokens (> algorithm.mismatch_warn_threshold={limit}; max "
                 f"{metrics['mismatch/probs_diff_max']:.3g}, k3 KL {metrics['mismatch/kl']:.3g}). "
                 + MISMATCH_WARNING_CAUSES)

    def _with_common_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """The figures every stage's step adds: the failed-save count (trainer.on_save_error=skip;
        one at step N shows from N + 1) and the short aliases of the role metrics."""
        if self.cfg.trainer.on_save_error == "skip":
            metrics["checkpoint/save_failures"] = float(self.checkpoints.failures)
        for src, dst in (("policy/entropy", "entropy"), ("critic/loss", "loss/value"), ("actor/grad_norm", "grad_norm")):
            if src in metrics:
                metrics[dst] = metrics[src]
        return metrics
