"""Asynchronous rollout on a local Ray cluster, on CPU (issue 15): one engine actor generates
while one training rank trains. The staleness the engine stamps on every sample (the weight
version it sampled with) never exceeds the bound, whether the engine or the trainer is the
slow side; one_step_off trains each batch one version late, recomputes the proximal policy
and corrects for the behaviour policy; a rank killed mid-run stops the run with the usual
error and the run resumes from the checkpoint, regenerating what was in flight.

All runs share one Ray instance and a small recipe: 3-4 rollouts of 4 prompts x 4 samples.
"""

from __future__ import annotations

import time

import pytest

ray = pytest.importorskip("ray", reason="distributed.mode=ray needs Ray (pip install 'lmm-r1-ascend[dist]')")

from lmm_r1_ascend.distributed.worker_group import WorkerDiedError  # noqa: E402
from lmm_r1_ascend.trainer import checkpoint as ckpt  # noqa: E402
from lmm_r1_ascend.trainer.ppo import PPOTrainer  # noqa: E402

# On top of SMALL_RUN (conftest.py's small_config): one engine actor, 16-sample mini-batches, the recipe's token budget.
EXTRA = ["trainer.train_batch_size=16", "trainer.max_tokens_per_micro_batch=4096", "trainer.eval_before_train=false",
         "trainer.eval_steps=0", "distributed.mode=ray", "distributed.rollout_engines=1",
         "algorithm.rollout_correction=[token_tis]"]


def _quiet(cfg, cls=PPOTrainer):
    return cls(cfg, log=lambda _: None)


def test_one_step_off_trains_each_batch_one_version_late(small_config, tmp_path, ray_cluster):
    cfg = small_config(tmp_path, "osp", EXTRA + ["rollout.async_mode=one_step_off", "trainer.max_steps=3"])
    history = _quiet(cfg).fit(progress=False)
    assert [h["rollout/staleness_max"] for h in history] == [0.0, 1.0, 1.0]
    assert [h["rollout/staleness_mean"] for h in history] == [0.0, 1.0, 1.0]
    # Step 1's batch came from the weights it trains (the hf engine on CPU runs the trainer's
    # kernels: the same probabilities to fp32 rounding); later batches from the weights one
    # update back, which the recomputed proximal policy sees and the correction reweights.
    assert history[0]["mismatch/probs_diff_max"] < 1e-5
    for h in history[1:]:
        assert h["mismatch/probs_diff_max"] > 1e-3 and h["rollout_correction/weight_mean"] != 1.0
    # the rank trains while the engine generates: it waits for samples only on the first step
    assert history[-1]["rollout/trainer_idle_frac"] < history[0]["rollout/trainer_idle_frac"]
    assert [h["rollout/queue_depth"] for h in history] == [0.0, 2.0, 1.0]


def _slow_engine(trainer: PPOTrainer, seconds: float) -> None:
    """Every generate of the engine actor takes `seconds` longer (patched inside the actor)."""
    def patch(actor):
        inner = actor.engine.generate

        def slow(*args, **kwargs):
            time.sleep(seconds)
            return inner(*args, **kwargs)

        actor.engine.generate = slow

    for handle in trainer.parts.rollout.engines.actors:
        ray.get(handle.__ray_call__.remote(patch))


class _SlowTrainer(PPOTrainer):
    def train_step(self):
        time.sleep(0.6)  # the controller and ranks busy: the engine may run ahead only as far as the bound
        return super().train_step()


@pytest.mark.slow  # timing-bound (sleeps, idle fractions): failed once inside the full default run on
# 2026-12-07 while passing alone; the default run keeps test_one_step_off_trains_each_batch_one_version_late
@pytest.mark.parametrize("slow", ["engine", "trainer"])
def test_the_staleness_bound_holds_whichever_side_is_slow(small_config, tmp_path, ray_cluster, slow):
    cfg = small_config(tmp_path, slow, EXTRA + ["rollout.async_mode=bounded", "rollout.max_staleness=2",
                                                "trainer.max_steps=4"])
    trainer = _quiet(cfg, _SlowTrainer if slow == "trainer" else PPOTrainer)
    if slow == "engine":
        _slow_engine(trainer, 0.6)
    history = trainer.fit(progress=False)
    assert [h["rollout/staleness_max"] for h in history] == [0.0, 1.0, 2.0, 2.0]
    last = history[-1]
    trainer_idle, engine_idle = last["rollout/trainer_idle_frac"], last["rollout/engine_idle_frac"]
    # Seen on an idle 2-core VM: slow engine 0.66 trainer / 0.01 engine idle, slow trainer
    # 0.12 / 0.52; the margin leaves room for a loaded machine.
    if slow == "engine":  # the ranks wait for generation, the engine hardly idles
        assert trainer_idle > engine_idle + 0.2, last
    else:  # the engine waits for the weights the bound requires, the ranks hardly wait
        assert engine_idle > trainer_idle + 0.2, last


class _KillAfter(PPOTrainer):
    """Kills a process once 2 steps are done: the training rank (its engine keeps generating)
    or the engine actor (the rank keeps training, its next batch never comes)."""

    victim = "train"

    def train_step(self):
        if self.step == 2:
            group = self.parts.cluster.group if self.victim == "train" else self.parts.rollout.engines
            ray.kill(group.actors[0], no_restart=True)
        return super().train_step()


@pytest.mark.parametrize("victim", ["train", pytest.param("rollout", marks=pytest.mark.slow)])  # rollout: 39 s, slow
def test_a_killed_worker_under_async_stops_clearly_and_the_run_resumes(small_config, tmp_path, ray_cluster, victim):
    extra = ["rollout.async_mode=one_step_off", "trainer.max_steps=4", "trainer.save_steps=1"]
    killer = type("Kill", (_KillAfter,), {"victim": victim})
    with pytest.raises(WorkerDiedError) as info:
        _quiet(small_config(tmp_path, "killed", EXTRA + extra), killer).fit(progress=False)
    message = str(info.value)
    assert f"worker '{victim}' rank 0" in message and "died during" in message
    # A dead rank fails step 3; a dead engine may still have delivered step 3's batch (generated
    # before the kill), and then fails the push after it or step 4's batch.
    last = ckpt.latest_checkpoint(tmp_path / "killed")
    saved = int(last.name.removeprefix("step_"))
    assert saved in ((2,) if victim == "train" else (2, 3))
    assert "last good checkpoint:" in message and last.name in message and "resume" in message
    # The checkpoint holds the position before the batch that was being generated (draw `saved`,
    # prompts 4*saved..), not the dataset's own position after it: the resumed run regenerates it.
    state = ckpt.load_checkpoint(last)
    assert state["async"]["draw"] == saved and state["data"]["index"] == 4 * saved
    history = _quiet(small_config(tmp_path, "killed", EXTRA + extra)).fit(progress=False)
    assert [h["step"] for h in history] == list(range(saved + 1, 5))
    assert history[0]["rollout/staleness_max"] == 0.0  # regenerated from the checkpoint's weights
