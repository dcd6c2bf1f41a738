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
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
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
from lmm_r1_ascend.engines.registry import train_engine_class
from lmm_r1_ascend.experience import ExperienceBatch
from lmm_r1_ascend.rollout.base import RolloutSample, SamplingConfig
from lmm_r1_ascend.trainer import checkpoint as ckpt
from lmm_r1_ascend.trainer.async_rollout import AsyncRollout, staleness_metrics
from lmm_r1_ascend.trainer.metrics import MetricsWriter, length_by_source
from lmm_r1_ascend.trainer.trackers import check_loggers, open_trackers
from lmm_r1_ascend.trainer.ppo_update import ppo_update
from lmm_r1_ascend.config.errors import SetupError
from lmm_r1_ascend.trainer.rollout_collect import collect, shape_overlong
from lmm_r1_ascend.trainer.dry_run import check_rewards
from lmm_r1_ascend.trainer.stop import RunStopped, StopRequest
from lmm_r1_ascend.trainer.setup import Scored, build_components, reward_metrics
from lmm_r1_ascend.trainer.validation import Validator
from lmm_r1_ascend.workers.builders import planned_rollouts
from lmm_r1_ascend.workers.roles import average_metrics


class PPOTrainer:
    def __init__(self, cfg: TrainConfig, *, log: Callable[[str], None] = print):
        self.cfg, self._sink, self._bar = cfg, log, None
        log = self.log  # every message of the run goes through the progress bar when one is shown
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
        self._mismatch_warned = False
        self.save_failures = 0  # checkpoints that could not be written (trainer.on_save_error=skip)
        self._ckpt_bytes: int | None = None  # the last written checkpoint's size: the next one's expected size
        self._saved_step: int | None = None
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

    def log(self, text: str) -> None:
        """A message of the run: printed above the progress bar (which is redrawn), not through it."""
        if self._bar is None:
            self._sink(text)
        else:
            with self._bar.external_write_mode():
                self._sink(text)

    # ------------------------------------------------------------------ resume
    def maybe_resume(self) -> bool:
        path = ckpt.latest_checkpoint(self.out) if self.cfg.trainer.resume else None
        if path is None:
            return False
        c = self.parts
        state = ckpt.load_checkpoint(path)
        from lmm_r1_ascend.trainer import fingerprint as fp

        now = fp.run_fingerprint(self.cfg, fp.model_info(self.cfg))
        if "fingerprint" not in state:
            self.log(f"warning: checkpoint {path} has no run fingerprint (written by an older version): "
                     "resuming without checking that it belongs to this run's model, data and algorithm")
        elif diff := fp.compare_fingerprints(state["fingerprint"], now):
            raise SetupError(fp.mismatch_message(path, state["fingerprint"], now, diff))
        saved_world, d = int(state.get("world_size", 1)), self.cfg.distributed
        if saved_world != c.cluster.world_size:
            if not train_engine_class(d.train_engine).resumes_on_any_world_size(d):
                raise SetupError(f"checkpoint {path} was written by {saved_world} rank(s), and a ZeRO-0 checkpoint "
                                 f"resumes only on as many ranks: set distributed.world_size={saved_world}, or train "
                                 "with ZeRO 1-3, whose checkpoints resume on any world size (docs/resume.md)")
            self.log(f"resuming a checkpoint of {saved_world} rank(s) on {c.cluster.world_size}: the weights and "
                     "optimizer state are re-partitioned (DeepSpeed's universal checkpoint); the next steps equal "
                     "the old world size's up to floating-point reduction order (docs/resume.md)")
        size = ckpt.directory_bytes(path)  # before the load: another world size adds a converted copy to it
        c.cluster.load(path)
        c.dataset.load_state_dict(state["data"])
        if self.async_rollout is not None:  # in-flight draws were dropped: regenerate from the oldest
            self.async_rollout.load_resume_state(state.get("async", {"draw": int(state["step"])}))
        self.kl_ctl.value = float(state["kl_coef"])
        self.step = int(state["step"])
        self.save_failures = int(state.get("save_failures", 0))
        self._ckpt_bytes, self._saved_step = size, self.step
        if self.validator is not None:
            self.validator.load_state_dict(state.get("eval", {}))
        ckpt.set_rng_state(state["rng"], self.backend.rng_device_type())
        c.rollout.sync_weights()
        self.log(f"resumed from {path} at step {self.step}")
        return True

    def save(self) -> Path | None:
        """This step's checkpoint. When it cannot be written (too little free space, checked first
        against the last checkpoint's size or an estimate; or any write error), one line names the
        directory, the bytes needed and free: trainer.on_save_error=stop raises CheckpointSaveError,
        skip warns, counts checkpoint/save_failures and returns None. NonFiniteError and a dead
        worker are not save errors: they propagate."""
        c = self.parts
        from lmm_r1_ascend.trainer import fingerprint as fp

        need = self._ckpt_bytes or self._estimate_ckpt_bytes()
        state = {"data": c.dataset.state_dict(), "kl_coef": self.kl_ctl.value, "save_failures": self.save_failures,
                 "world_size": c.cluster.world_size, "fingerprint": fp.run_fingerprint(self.cfg, fp.model_info(self.cfg))}
        if self.async_rollout is not None:  # the dataset position before the oldest unconsumed draw
            state["async"] = self.async_rollout.resume_state()
            state["data"] = state["async"]["data"]
        if self.validator is not None:
            state["eval"] = self.validator.state_dict()
        try:
            path = ckpt.save_checkpoint(self.out, self.step, state, c.cluster.save, need_bytes=need,
                                        keep=self.cfg.trainer.keep_checkpoints, device_type=self.backend.rng_device_type())
        except (NonFiniteError, WorkerDiedError):
            raise
        except Exception as err:  # noqa: BLE001 - any write failure (OSError, torch's writer, a rank's error)
            return self._save_failed(err, need)
        self._ckpt_bytes, self._saved_step = ckpt.directory_bytes(path), self.step
        return path

    def _estimate_ckpt_bytes(self) -> int | None:
        """Before the first save: the checkpoint's size from the actor's parameter count (safetensors
        headers; None when unknown), for the actor and, when trained, a critic of the same size."""
        from lmm_r1_ascend.trainer.console import model_dir, parameter_count

        try:
            n = parameter_count(model_dir(self.cfg))
        except Exception:  # noqa: BLE001 - an estimate only: without it the first save is not checked
            return None
        if n is None:
            return None
        from lmm_r1_ascend.models.loading import resolve_dtype

        alg, d = self.cfg.algorithm, self.cfg.distributed
        dtype = resolve_dtype(None if self.cfg.model.dtype == "auto" else self.cfg.model.dtype, self.backend)
        per_param = train_engine_class(d.train_engine).checkpoint_bytes_per_param(dtype.itemsize)
        return ckpt.estimate_bytes(n, per_param, models=1 + int(alg.uses_critic))

    def _save_failed(self, err: Exception, need: int | None) -> None:
        root = ckpt.checkpoint_dir(self.out)
        cause = ckpt.first_line(err)
        where = "" if isinstance(err, ckpt.CheckpointSpaceError) else f" ({ckpt.space_line(root, need)})"
        line = f"checkpoint step_{self.step} not written: {cause}{where}"
        if self.cfg.trainer.on_save_error == "stop":
            raise ckpt.CheckpointSaveError(f"{line}; {self._resume_hint()} (trainer.on_save_error=skip "
                                           "trains on without it)") from None
        self.save_failures += 1
        self.log(f"warning: {line}; training goes on (trainer.on_save_error=skip; "
                 f"{self.save_failures} failed so far, checkpoint/save_failures in metrics.jsonl)")
        return None

    # ------------------------------------------------------------------ one step
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

    def _experience(self, samples: list[RolloutSample], rewards: torch.Tensor, info: dict) -> ExperienceBatch:
        return ExperienceBatch(
            prompt_ids=[s.prompt_ids for s in samples], response_ids=[s.response_ids for s in samples],
            action_mask=[s.action_mask for s in samples], log_probs=[s.logprobs for s in samples],
            rewards=rewards, group_ids=torch.tensor([s.prompt_index for s in samples]),
            multimodal=[s.multimodal for s in samples] if any(s.multimodal for s in samples) else None,
            info=info)

    def _draw(self, k: int, timed) -> tuple[list[RolloutSample], Scored]:
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

    def train_step(self) -> dict[str, float]:
        c, cfg, alg = self.parts, self.cfg, self.cfg.algorithm
        timings: dict[str, float] = {}
        version = c.rollout.version  # the weights this step trains (the staleness of its samples is against them)
        depth = len(self.async_rollout.queue) if self.async_rollout is not None else 0  # draws generated ahead

        @contextmanager
        def timed(name: str):
            start = time.perf_counter()
            yield
            self.backend.synchronize()
            timings[f"timing/{name}"] = timings.get(f"timing/{name}", 0.0) + time.perf_counter() - start

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
        drawn = got.drawn
        lengths = torch.tensor([int(s.response_ids.numel()) for s in drawn], dtype=torch.float32)
        gen_tokens = float(lengths.sum())
        metrics = {
            **reward_metrics(drawn, got.drawn_scored),
            "response_length/mean": float(lengths.mean()), "response_length/max": float(lengths.max()),
            "response_length/clip_ratio": sum(s.finish_reason == "length" for s in drawn) / len(drawn),
            **length_by_source(drawn),
            **got.metrics,
            **staleness_metrics(got.samples or drawn, version),
            **c.rollout.metrics(),
        }
        if self.async_rollout is not None:
            metrics["rollout/queue_depth"] = float(depth)
        self.step_skips = {}  # role -> skipped (1.0) or applied (0.0) per optimizer step, in order
        if upd is not None:
            if not metrics.get("rollout/staleness_max"):  # stale samples' mismatch includes the policy lag
                self._check_mismatch(upd.metrics, step=self.step)  # self.step already counts this step
            metrics.update({
                "kl": float(upd.advantages.mean_kl), "kl_coef": upd.kl_coef,
                "advantages/mean": float(upd.batch.packed("advantages").mean()),
                **upd.metrics, **average_metrics(upd.critic_rows + upd.actor_rows)})
            for role, rows in (("critic", upd.critic_rows), ("actor", upd.actor_rows)):
                if rows:  # a count over this rollout's optimizer steps, not a mean
                    self.step_skips[role] = [float(r.get(f"{role}/skipped_steps", 0.0)) for r in rows]
                    metrics[f"{role}/skipped_steps"] = sum(self.step_skips[role])
        prompt_tokens = sum(int(s.prompt_ids.numel()) for s in drawn)
        # async: timing/rollout is only the wait for samples generated ahead; the engines' own time counts
        gen_s = self.async_rollout.pop_generation_s() if self.async_rollout is not None else timings["timing/rollout"]
        metrics.update({
            **timings,
            "throughput/rollout_tokens_per_s": gen_tokens / max(gen_s, 1e-9),
            "throughput/tokens_per_s": (gen_tokens + prompt_tokens) / timings["timing/step"],
            "data/epoch": c.dataset.epoch,
            "memory/peak_gb": c.cluster.peak_memory_gb(),
        })
        return self._with_common_metrics(metrics)

    def _with_common_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """The figures every stage's step adds: the failed-save count (trainer.on_save_error=skip;
        one at step N shows from N + 1) and the short aliases of the role metrics."""
        if self.cfg.trainer.on_save_error == "skip":
            metrics["checkpoint/save_failures"] = float(self.save_failures)
        for src, dst in (("policy/entropy", "entropy"), ("critic/loss", "loss/value"), ("actor/grad_norm", "grad_norm")):
            if src in metrics:
                metrics[dst] = metrics[src]
        return metrics

    # ------------------------------------------------------------------ the loop
    def fit(self, progress: bool = True, stop_after: int | None = None, step_lines: bool = False) -> list[dict]:
        """Train to the planned step count (resuming when a checkpoint exists). stop_after: end this
        process after that many steps with a checkpoint, as an interruption would (tests, preemption).
        step_lines: without a bar, log one line per step (a run written to a file shows its progress)."""
        self._step_lines = step_lines and not progress
        cfg = self.cfg
        writer, bar, history = None, None, []
        try:
            self.stop.__enter__()
            self.maybe_resume()
            writer = MetricsWriter(self.out, truncate_after=self.step,  # trackers: driver-side only, never in Ray ranks
                                   trackers=open_trackers(cfg, to_dict(cfg), self.out, resume_step=self.step))
            if progress:
                from tqdm.auto import tqdm

                # tqdm's own rate would repeat the step time the postfix gives; without it the figures fit 100 columns
                bar = self._bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                                       desc=f"{cfg.stage} {cfg.recipe or ''}".strip(),
                                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                                  "[{elapsed}<{remaining}{postfix}]")
            self._loop(history, writer, bar, stop_after)
        except WorkerDiedError as err:
            raise err.with_hint(self._resume_hint()) from None
        except NonFiniteError as err:  # a run of skipped steps, or weights gone bad before a save
            # from a Ray rank the error is Ray's wrapper, whose text is the remote traceback: take the cause's
            raise NonFiniteError(f"{getattr(err, 'cause', None) or err}; {self._resume_hint()}") from None
        finally:
            self.stop.__exit__()
            if bar is not None:
                bar.close()
                self._bar = None
            if writer is not None:
                writer.close()
            self.parts.close()
        return history

    def _stop_if_asked(self) -> None:
        """After a first SIGINT / SIGTERM: this step's checkpoint (unless it was just written), then
        RunStopped (the CLI prints the resume command)."""
        if not self.stop.requested:
            return
        path = ckpt.checkpoint_dir(self.out) / f"step_{self.step}" if self._saved_step == self.step else None
        if path is None and self.step > 0:
            path = self.save()
        raise RunStopped(self.stop.signum, self.step, path or ckpt.latest_checkpoint(self.out))

    def _resume_hint(self) -> str:
        """Where a failed run can pick up: the last good checkpoint and how to resume from it."""
        last = ckpt.latest_checkpoint(self.out)
        if last is None:
            return "no checkpoint was written yet (trainer.save_steps); the run must start over"
        return f"last good checkpoint: {last} (step {last.name.removeprefix('step_')}); " + (
            "run the same command again to resume from it" if self.cfg.trainer.resume else
            "run again with trainer.resume=true to resume from it")

    def _count_skips(self, runs: dict[str, int]) -> None:
        """Advance the per-role runs of consecutive skipped optimizer steps (non-finite loss or grad
        norm) with this rollout's steps; NonFiniteError once one reaches trainer.max_consecutive_skips."""
        limit = self.cfg.trainer.max_consecutive_skips
        for role, flags in getattr(self, "step_skips", {}).items():
            for skipped in flags:
                runs[role] = runs.get(role, 0) + 1 if skipped else 0
            if limit > 0 and runs.get(role, 0) >= limit:
                raise NonFiniteError(
                    f"step {self.step}: {runs[role]} consecutive optimizer steps of the {role} were skipped "
                    f"because the loss or the gradient norm was not finite (NaN/inf) "
                    f"(trainer.max_consecutive_skips={limit}; 0 never stops). The weights are unchanged by the "
                    "skipped steps. Usual causes: bf16 overflow (try fp32, or a lower learning rate), a "
                    "poisoned batch (bad data or rewards: see reward/status/* in metrics.jsonl), or too high a "
                    "learning rate (optim.*_lr)")

    def _validate(self, step: int, bar) -> dict[str, float]:
        """The held-out evaluation, said on the bar while it runs (64 x 8 samples take a while)."""
        val = self.validator
        if bar is not None:
            bar.set_postfix_str(f"held-out eval ({len(val.prompts)} prompts x {val.sampling.n})...", refresh=True)
        metrics = val.run(step)
        if bar is not None and step == 0 and bar.n == 0:
            bar.reset()  # the clock starts with training: the eval before it would skew the rate and ETA
        if bar is not None and "eval/all/accuracy" in metrics:
            self._held_out = f"{metrics['eval/all/accuracy']:.3f}"
            bar.set_postfix_str(f"held-out {self._held_out}", refresh=True)
        return metrics

    def _step_summary(self, metrics: dict[str, float]) -> str:
        """The step's figures on the progress bar and in the per-step line (trainer/sft.py shows its loss)."""
        return (f"reward {metrics['reward/mean']:.3f} acc {metrics.get('reward/accuracy', 0):.3f} "
                f"step {metrics['timing/step']:.1f}s")

    def _loop(self, history: list, writer: MetricsWriter, bar, stop_after: int | None) -> None:
        cfg, val = self.cfg, self.validator
        skip_runs: dict[str, int] = {}  # role -> optimizer steps skipped in a row (this process)
        if val is not None and cfg.trainer.eval_before_train and self.step == 0:
            writer.write(0, self._validate(0, bar))  # the starting model, as step 0 (not a training step: not in history)
        while self.step < self.total_steps:
            if stop_after is not None and len(history) >= stop_after:
                self.save()
                return
            self._stop_if_asked()
            metrics = self.train_step()
            if val is not None and val.due(self.step, self.total_steps):
                metrics.update(self._validate(self.step, bar))
            history.append(writer.write(self.step, metrics))
            if bar is not None:
                bar.update(1)
                shown = self._step_summary(metrics)
                if getattr(self, "_held_out", None):  # the latest held-out accuracy stays shown
                    shown += f" held-out {self._held_out}"
                bar.set_postfix_str(shown, refresh=True)
            elif self._step_lines:
                self.log(f"step {self.step}/{self.total_steps}: {self._step_summary(metrics)}")
            self._count_skips(skip_runs)  # before the save: a stopped run keeps its last good checkpoint
            if cfg.trainer.save_steps and self.step % cfg.trainer.save_steps == 0 and self.step < self.total_steps:
                self.save()
        self.save()  # a signal during this last save changes nothing: the run is complete
        if cfg.trainer.save_hf:
            self.parts.export_hf(self.out / "hf")
        if cfg.trainer.log_artifacts:
            writer.upload([self.out / name for name in ("config.yaml", "metrics.jsonl", "eval", "hf")])
