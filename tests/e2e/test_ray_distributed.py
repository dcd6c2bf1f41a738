"""Scale-out on a local Ray cluster (issue 7), on CPU: 2 data-parallel ranks under DeepSpeed
ZeRO-2 and ZeRO-3 follow the single-process run of the same demo recipe step by step;
weight sync across processes leaves the engine's log-probs equal to the trainer's; a
rank killed mid-run stops the run with a clear error and a checkpoint it resumes from.

All runs share one Ray instance (started once, ~10 s) and one small recipe: 3 rollouts of
4 prompts x 4 samples, 2 optimizer steps per rollout.
"""

from __future__ import annotations

import math

import pytest

ray = pytest.importorskip("ray", reason="distributed.mode=ray needs Ray (pip install 'lmm-r1-ascend[dist]')")
pytest.importorskip("deepspeed", reason="ZeRO needs DeepSpeed (pip install 'lmm-r1-ascend[dist]')")

from lmm_r1_ascend.distributed.worker_group import WorkerDiedError  # noqa: E402
from lmm_r1_ascend.trainer.ppo import PPOTrainer  # noqa: E402

# On top of SMALL_RUN (conftest.py's small_config): validate once, after the last step.
EXTRA = ["trainer.eval_before_train=false", "trainer.eval_steps=3", "eval.limit=4", "eval.n_samples=2"]
RAY_2 = ["distributed.mode=ray", "distributed.world_size=2", "distributed.train_engine=deepspeed"]
# Per-step metrics that must agree with the single-process run.
COMPARED = ("reward/mean", "loss/policy", "loss/actor", "policy/clip_frac", "policy/approx_kl", "actor/grad_norm",
            "response_length/mean")


@pytest.fixture(scope="module")
def single_process(small_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return PPOTrainer(small_config(out, "local", EXTRA + []), log=lambda _: None).fit(progress=False)


def _assert_same_steps(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for step, (g, w) in enumerate(zip(got, want), start=1):
        # Same sampled tokens: the engine draws with the same seed from weights that differ only
        # by fp32 reduction order, so rewards and lengths must match exactly.
        assert g["reward/mean"] == w["reward/mean"] and g["response_length/mean"] == w["response_length/mean"], step
        for key in COMPARED:
            # fp32 on both sides; the 2-rank gradient is summed in another order (all-reduce /
            # reduce-scatter of two shards) than the single-process one, ~1e-7 relative per step,
            # amplified a little by Adam's division by sqrt(v): 1e-4 relative leaves a wide margin
            # while a wrong normaliser (x2) or a lost shard (x0.5) is off by 50 %+.
            assert math.isclose(g[key], w[key], rel_tol=1e-4, abs_tol=1e-6), (step, key, g[key], w[key])


@pytest.mark.parametrize("zero_stage, rollout_engines", [(2, 1), (3, 0)], ids=["zero2-engine-actor", "zero3-colocated"])
def test_two_ranks_follow_the_single_process_run(small_config, tmp_path, ray_cluster, single_process, zero_stage,
                                                 rollout_engines):
    cfg = small_config(tmp_path, f"z{zero_stage}", EXTRA + RAY_2 + [f"distributed.zero_stage={zero_stage}",
                                                                    f"distributed.rollout_engines={rollout_engines}"])
    history = PPOTrainer(cfg, log=lambda _: None).fit(progress=False)
    _assert_same_steps(history, single_process)


@pytest.mark.slow  # 56 s; colocated and engine-actor placements are each compared with one process by the tests above
def test_an_engine_in_every_rank_matches_as_many_engine_actors(small_config, tmp_path, ray_cluster):
    """colocate_rollout=true (the paper's layout: each rank's process hosts an engine, in-place
    sync) against 2 engine actors fed by broadcast: the same prompt split and seeds, so the same
    samples and per-step losses."""
    every = PPOTrainer(small_config(tmp_path, "every", EXTRA + RAY_2 + ["distributed.zero_stage=3",
                                                                       "distributed.rollout_engines=0",
                                                                       "distributed.colocate_rollout=true"]),
                       log=lambda _: None).fit(progress=False)
    actors = PPOTrainer(small_config(tmp_path, "actors", EXTRA + RAY_2 + ["distributed.zero_stage=3",
                                                                         "distributed.rollout_engines=2"]),
                        log=lambda _: None).fit(progress=False)
    _assert_same_steps(every, actors)


def test_a_run_larger_than_the_cluster_fails_at_once_saying_what_is_short(small_config, tmp_path, ray_cluster):
    import time

    cfg = small_config(tmp_path, "too-big", EXTRA + ["distributed.mode=ray", "distributed.world_size=8",
                                        "distributed.train_engine=deepspeed", "distributed.cpus_per_rank=2",
                                        "distributed.ray_address=auto"])
    start = time.perf_counter()
    # 8 ranks + 1 engine actor, 2 CPUs each, on a 4-CPU cluster
    # 8 ranks + 1 engine actor, 2 CPUs each, on a 4-CPU cluster
    with pytest.raises(RuntimeError, match=r"short of \{'CPU': 18"):
        PPOTrainer(cfg, log=lambda _: None)
    assert time.perf_counter() - start < 60  # no waiting for a placement that cannot happen


def test_local_mode_with_deepspeed_follows_the_torch_engine(small_config, tmp_path, single_process):
    """One process, DeepSpeed ZeRO-2 at world size 1 (its own private process group)."""
    cfg = small_config(tmp_path, "local-ds", EXTRA + ["distributed.train_engine=deepspeed", "distributed.zero_stage=2"])
    _assert_same_steps(PPOTrainer(cfg, log=lambda _: None).fit(progress=False), single_process)


def test_separate_critic_and_reference_groups_follow_the_local_run(small_config, tmp_path, ray_cluster):
    """colocate_models=false: actor, critic and reference in worker groups of their own (PPO with
    GAE and a KL penalty uses all three); one rank each, torch engine, so it must equal the
    in-process run of the same config."""
    ppo = ["algorithm.advantage_estimator=gae", "algorithm.init_kl_coef=0.01", "trainer.max_steps=2"]
    local = PPOTrainer(small_config(tmp_path, "ppo-local", EXTRA + ppo), log=lambda _: None).fit(progress=False)
    split = ppo + ["distributed.mode=ray", "distributed.colocate_models=false", "distributed.rollout_engines=0"]
    history = PPOTrainer(small_config(tmp_path, "ppo-split", EXTRA + split), log=lambda _: None).fit(progress=False)
    _assert_same_steps(history, local)
    for g, w in zip(history, local):
        # the same computation in other processes: equal up to fp32 run-to-run noise
        assert math.isclose(g["critic/loss"], w["critic/loss"], rel_tol=1e-4, abs_tol=1e-6)
        assert math.isclose(g["kl"], w["kl"], rel_tol=1e-4, abs_tol=1e-7)


def test_weight_sync_across_processes_matches_the_trainers_log_probs(small_config, tmp_path, ray_cluster):
    import dataclasses

    cfg = small_config(tmp_path, "sync", EXTRA + RAY_2 + ["distributed.zero_stage=3", "distributed.rollout_engines=1",
                                             "distributed.weight_sync_bucket_mb=1"])
    trainer = PPOTrainer(cfg, log=lambda _: None)
    try:
        trainer.train_step()  # updates the weights, then broadcasts them to the engine actor
        c = trainer.parts
        samples = c.rollout.generate(trainer._next_prompts(), dataclasses.replace(trainer.sampling, seed=7))
        batch = trainer._experience(samples, c.score_samples(samples).totals, {})
        mine = c.cluster.actor_log_probs(batch)
        worst = max(float((a - s.logprobs).abs().max()) for a, s in zip(mine, samples))
        # fp32, the same weights bit for bit (bytes travel), different processes and packing
        # (padded generate vs packed forward): the kernels' reduction order only, ~1e-6.
        assert worst < 1e-4, worst
        assert trainer.step == 1
    finally:
        trainer.parts.close()


class _KillRankAfter(PPOTrainer):
    """Kills training rank 1's process once `after` steps are done: a lost node, mid-run."""

    after = 2

    def train_step(self):
        if self.step == self.after:
            ray.kill(self.parts.cluster.group.actors[1], no_restart=True)
        return super().train_step()


def test_a_killed_rank_stops_the_run_clearly_and_the_run_resumes(small_config, tmp_path, ray_cluster):
    extra = RAY_2 + ["distributed.zero_stage=2", "distributed.rollout_engines=0", "trainer.save_steps=1",
                     "trainer.max_steps=3"]
    cfg = small_config(tmp_path, "killed", EXTRA + extra)
    with pytest.raises(WorkerDiedError) as info:
        _KillRankAfter(cfg, log=lambda _: None).fit(progress=False)
    message = str(info.value)
    assert "worker 'train' rank 1" in message and "died during" in message
    assert "last good checkpoint:" in message and "step_2" in message and "resume" in message
    resumed = PPOTrainer(small_config(tmp_path, "killed", EXTRA + extra), log=lambda _: None)
    history = resumed.fit(progress=False)
    assert [h["step"] for h in history] == [3]
