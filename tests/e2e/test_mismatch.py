"""The rollout/trainer mismatch through the real trainer (hf engine, CPU, tiny models, 1-3 steps):
recomputed old log-probs agree with the engine's when nothing differs, a planted mismatch
(another sampling temperature, perturbed rollout weights) shows in the metrics and the
warning, corrections bound the loss weights, and dynamic sampling keeps only informative
groups, holds the batch size and resumes exactly."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from lmm_r1_ascend.algorithms.shaping import informative_groups
from lmm_r1_ascend.config import load_config
from lmm_r1_ascend.demo.data import prepare_demo_data
from lmm_r1_ascend.trainer.ppo import PPOTrainer
from lmm_r1_ascend.trainer import ppo_update as ppo_update_module

SMALL = [  # one rollout of 2 prompts x 4 samples, one mini-batch: the update's ratio is pi / pi_old at pi = pi_old
    "stage=fre", "device=cpu", "model.pretrain=demo-fre", "data.prompt_data=[demo:arithmetic]",
    "data.max_prompt_len=512", "rollout.rollout_batch_size=2", "rollout.max_new_tokens=12",
    "reward.workers=1", "algorithm.advantage_estimator=rloo", "algorithm.n_samples_per_prompt=4",
    "algorithm.init_kl_coef=0.0", "optim.actor_lr=1e-3", "trainer.train_batch_size=8",
    "trainer.max_steps=1", "trainer.save_steps=0", "trainer.max_tokens_per_micro_batch=64",
    "trainer.tensorboard=false", "trainer.save_hf=false",
]


def _trainer(out, *extra, base=SMALL, recipe=None):
    logs: list[str] = []
    cfg = prepare_demo_data(load_config(recipe=recipe, overrides=[*base, f"output_dir={out}", *extra]))
    return PPOTrainer(cfg, log=logs.append), logs


class _Capture:
    """Records the batch with the trainer's old log-probs and corrections (recomputed before the
    update, or folded into its only step: both end in with_old_log_probs)."""

    def __init__(self, monkeypatch):
        self.batches = []
        real = ppo_update_module.with_old_log_probs

        def spy(batch, old, alg):
            new, metrics = real(batch, old, alg)
            self.batches.append(new)
            return new, metrics

        monkeypatch.setattr(ppo_update_module, "with_old_log_probs", spy)


def _no_fold(monkeypatch):
    """Force the separate recompute forward even where the update is a single on-policy step."""
    monkeypatch.setattr(ppo_update_module, "folds_recompute", lambda *a, **k: False)


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "separate-forward"])
def test_hf_recompute_agrees_with_the_rollout_and_the_first_ratio_is_one(tmp_path, monkeypatch, fold):
    cap = _Capture(monkeypatch)
    if not fold:
        _no_fold(monkeypatch)
    trainer, logs = _trainer(tmp_path)
    try:
        m = trainer.train_step()
    finally:
        trainer.parts.close()
    # Same fp32 weights, same temperature; the engine's log-probs come from generate()'s padded
    # forward, the recompute from packed chunks of 64 tokens: fp32 kernel rounding only (log-probs
    # near -10 carry ~1e-6 absolute rounding, probabilities ~1e-7).
    assert m["mismatch/probs_diff_max"] < 1e-5, m["mismatch/probs_diff_max"]
    assert m["mismatch/log_ratio_abs_max"] < 1e-4 and abs(m["mismatch/kl"]) < 1e-8
    assert m["mismatch/pearson"] > 0.999999
    # The only mini-batch is trained at pi_theta == pi_old: its ratio is 1 up to fp32 rounding.
    assert abs(m["policy/ratio_max"] - 1) < 1e-5 and abs(m["policy/ratio_min"] - 1) < 1e-5, m
    assert m["policy/clip_frac"] == 0.0
    assert not any("mismatch" in line for line in logs)
    batch = cap.batches[0]
    assert batch.rollout_log_probs is not None and batch.correction_weights is None  # rollout_correction: none
    # one mini-batch, one epoch, no reference: the update's own forward gives the old log-probs
    assert ("timing/old_log_probs" in m) is (not fold)
    if fold:  # exactly the forward's: the ratio is 1 to the bit
        assert m["policy/ratio_max"] == 1.0 and m["policy/ratio_min"] == 1.0


def test_rollout_mode_trains_on_the_engines_log_probs(tmp_path, monkeypatch):
    trainer, _ = _trainer(tmp_path, "algorithm.old_logprobs=rollout")
    try:
        m = trainer.train_step()
    finally:
        trainer.parts.close()
    assert not any(k.startswith("mismatch/") for k in m) and "timing/old_log_probs" not in m
    assert abs(m["policy/ratio_max"] - 1) < 1e-4  # the hf engine on CPU: the two agree anyway


@pytest.mark.parametrize("plant", ["temperature", "weights"])
def test_a_planted_mismatch_raises_the_metrics_and_warns_once(tmp_path, plant):
    trainer, logs = _trainer(tmp_path, "trainer.max_steps=2", "algorithm.mismatch_warn_threshold=0.002")
    if plant == "temperature":  # the engine samples (and scores its tokens) at 0.6, the trainer assumes 1.0
        trainer.sampling = dataclasses.replace(trainer.sampling, temperature=0.6)
    engine_model = trainer.parts.cluster.group.workers[0].rollout.model
    try:
        rows = []
        for _ in range(2):
            if plant == "weights":  # stale / wrong rollout weights: noise on every matrix, each step
                gen = torch.Generator().manual_seed(len(rows))
                with torch.no_grad():
                    for p in engine_model.parameters():
                        p.add_(0.05 * torch.randn(p.shape, generator=gen))
            rows.append(trainer.train_step())
    finally:
        trainer.parts.close()
    for m in rows:
        # >= 4 orders of magnitude above the unplanted run's (~1e-7, the test above)
        assert m["mismatch/probs_diff_mean"] > 0.002 and m["mismatch/kl"] > 1e-4, m
        assert m["mismatch/log_ratio_abs_max"] > 0.05 and m["mismatch/seq_log_ratio_abs_max"] > 0.05
        # the trainer's ratio now starts at 1 (recomputed old log-probs) although the engine's differ
        assert abs(m["policy/ratio_max"] - 1) < 1e-5
    warnings = [line for line in logs if "rollout/trainer mismatch" in line]
    assert len(warnings) == 1 and "step 1" in warnings[0] and "mismatch_warn_threshold" in warnings[0]


@pytest.mark.parametrize("correction,low,high", [("token_tis", 0.5, 1.5), ("seq_tis", 0.5, 1.5),
                                                 ("token_mask", 0.8, 1.25), ("seq_mask", 0.8, 1.25),
                                                 ("icepop", 0.8, 1.25)])
def test_corrections_bound_the_loss_weights_under_a_planted_mismatch(tmp_path, monkeypatch, correction, low, high):
    cap = _Capture(monkeypatch)
    trainer, _ = _trainer(tmp_path, f"algorithm.rollout_correction={correction}",
                          f"algorithm.rollout_correction_bounds=[{low}, {high}]")
    trainer.sampling = dataclasses.replace(trainer.sampling, temperature=0.6)
    try:
        m = trainer.train_step()
    finally:
        trainer.parts.close()
    batch = cap.batches[0]
    weights = torch.cat(batch.correction_weights)
    mask = torch.cat(batch.action_mask)
    ratio = (torch.cat(batch.log_probs) - torch.cat(batch.rollout_log_probs)).exp()
    assert float(weights.max()) <= high + 1e-6 and float(weights.min()) >= 0
    if correction in ("token_mask", "icepop"):  # every kept token's ratio is inside the bounds, every dropped one outside
        kept = weights > 0
        assert bool(((ratio[kept] >= low - 1e-6) & (ratio[kept] <= high + 1e-6)).all())
        assert bool(((ratio[~kept & mask] < low) | (ratio[~kept & mask] > high)).all())
    if correction != "token_tis" and correction != "seq_tis":
        assert m["rollout_correction/masked_frac"] > 0  # temperature 0.6 vs 1.0 pushes some ratios out
    assert m["rollout_correction/weight_mean"] == pytest.approx(float(weights[mask].mean()), rel=1e-5)
    assert torch.isfinite(torch.tensor(m["loss/policy"]))


@pytest.mark.parametrize("extra", [[], ["algorithm.rollout_correction=seq_mask", "algorithm.rollout_correction_bounds=[0.8, 1.25]"],
                                   ["algorithm.rollout_correction=token_tis", "algorithm.rollout_correction_bounds=[0.5, 1.5]"]],
                         ids=["none", "seq_mask", "token_tis"])
def test_the_folded_recompute_equals_the_separate_forward(tmp_path, monkeypatch, extra):
    """One on-policy step with the old log-probs from the update's own forward (corrections
    computed inside the loss) against the separate recompute forward, same seed, under a planted
    mismatch (engine temperature 1.3) so that the corrections really weigh and drop tokens."""
    rows, weights = {}, {}
    for fold in (True, False):
        with monkeypatch.context() as mp:
            if not fold:
                _no_fold(mp)
            trainer, _ = _trainer(tmp_path / str(fold), "rollout.rollout_batch_size=4", "trainer.train_batch_size=16",
                                  "rollout.max_new_tokens=40",  # whole answers: rewards (and advantages) vary
                                  *extra)
            trainer.sampling = dataclasses.replace(trainer.sampling, temperature=1.3)
            try:
                rows[fold] = trainer.train_step()
                model = trainer.parts.cluster.group.workers[0].actor.model
                weights[fold] = {n: p.detach().clone() for n, p in model.named_parameters()}
            finally:
                trainer.parts.close()
    folded, separate = rows[True], rows[False]
    assert "timing/old_log_probs" in separate and "timing/old_log_probs" not in folded
    keys = [k for k in separate if k.startswith(("mismatch/", "rollout_correction/", "policy/", "loss/"))]
    keys += ["actor/grad_norm"]
    assert "mismatch/probs_diff_mean" in keys and (not extra or "rollout_correction/weight_mean" in keys)
    assert separate["actor/grad_norm"] > 1e-3  # informative groups: a real update (a wrong weight shows)
    if "seq_mask" in str(extra):
        assert separate["rollout_correction/masked_frac"] > 0  # the correction really dropped sequences
    # The two forwards pack the same samples in other orders (shuffled mini-batch vs rollout
    # order), so fp32 rounding differs: log-probs ~1e-6 apart, losses and norms ~1e-6 relative.
    for k in keys:
        assert folded[k] == pytest.approx(separate[k], rel=1e-4, abs=1e-6), k
    for name, w in weights[False].items():
        torch.testing.assert_close(weights[True][name], w, rtol=1e-5, atol=1e-6, msg=name)


DS = [  # the demo model on its arithmetic: 4 prompts x 4 samples per rollout, some groups all right / all wrong
    "device=cpu", "rollout.rollout_batch_size=4", "algorithm.n_samples_per_prompt=4", "trainer.train_batch_size=16",
    "trainer.max_steps=3", "trainer.save_steps=0", "trainer.tensorboard=false", "trainer.save_hf=false",
    "reward.workers=1", "algorithm.max_sample_batches=3", "trainer.eval_before_train=false", "trainer.eval_steps=0",
]


def _numbers(row):
    return {k: v for k, v in row.items() if isinstance(v, float) and not k.startswith(("timing/", "throughput/", "memory/"))}


def test_dynamic_sampling_keeps_informative_groups_and_resumes_exactly(tmp_path, monkeypatch):
    cap = _Capture(monkeypatch)
    quiet = dict(log=lambda s: None)
    cfg = lambda out: prepare_demo_data(load_config(recipe="demo_dapo", overrides=[*DS, f"output_dir={out}"]))  # noqa: E731
    straight = PPOTrainer(cfg(tmp_path / "a"), **quiet).fit(progress=False)
    assert len(straight) == 3
    assert sum(r["dynamic_sampling/filtered_groups"] for r in straight) > 0  # the filter really acted
    for row, batch in zip(straight, cap.batches):
        groups = int(row["dynamic_sampling/kept_groups"])
        assert len(batch) == 4 * groups
        if not row["dynamic_sampling/short"]:
            assert groups == 4  # the batch size holds
        assert bool(informative_groups(batch.rewards, 4).all())  # no all-equal group reached the update
    PPOTrainer(cfg(tmp_path / "b"), **quiet).fit(progress=False, stop_after=1)
    resumed = PPOTrainer(cfg(tmp_path / "b"), **quiet).fit(progress=False)
    assert len(resumed) == 2
    logged = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(straight, logged):
        na, nb = _numbers(a), _numbers(b)
        assert na.keys() == nb.keys()
        for key in na:
            assert nb[key] == pytest.approx(na[key], rel=1e-6, abs=1e-7), (a["step"], key)


def test_a_gspo_step_trains_through_the_trainer(tmp_path):
    """policy_loss=gspo end to end (its math: tests/unit/test_gspo.py): two mini-batches, so
    the second sees a moved policy; the sequence ratio stays finite and near 1."""
    trainer, _ = _trainer(tmp_path, "algorithm.policy_loss=gspo", "algorithm.advantage_estimator=group_norm",
                          "algorithm.loss_agg_mode=seq-mean-token-mean", "trainer.train_batch_size=4")
    try:
        m = trainer.train_step()
    finally:
        trainer.parts.close()
    assert m["policy/dual_clip_frac"] == 0.0 and 0.0 <= m["policy/clip_frac"] <= 1.0
    assert 0.5 < m["policy/ratio_min"] <= m["policy/ratio_max"] < 2.0, m
    assert torch.isfinite(torch.tensor([m["loss/policy"], m["actor/grad_norm"]])).all()
