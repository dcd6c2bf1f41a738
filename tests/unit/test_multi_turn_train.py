"""Training on multi-turn samples: images inside responses in the packed forward, masked
environment tokens in GAE, the loss and the mismatch metrics, per-turn credit.

The samples are built the way rollout/multi_turn.py builds them (the tokenizer's template for
the observations, Sokoban board images), with random "sampled" turns in between."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from lmm_r1_ascend.algorithms.advantages import gae, step_token_rewards
from lmm_r1_ascend.algorithms.config import AlgorithmConfig
from lmm_r1_ascend.algorithms.pipeline import compute_advantages
from lmm_r1_ascend.algorithms.rollout_correction import mismatch_metrics
from lmm_r1_ascend.backends import get_backend
from lmm_r1_ascend.data import load_processors
from lmm_r1_ascend.envs.registry import make_env
from lmm_r1_ascend.envs.sokoban_generate import generate_level
from lmm_r1_ascend.experience.batch import ExperienceBatch
from lmm_r1_ascend.experience.micro import micro_batches
from lmm_r1_ascend.models.forward import Sample, pack_samples, packed_log_probs, samples_from_experience
from lmm_r1_ascend.models.loading import ModelSpec, load_policy, load_reference
from lmm_r1_ascend.models.tiny import ensure_tiny_model
from lmm_r1_ascend.models.train_modules import PolicyLogProbs
from lmm_r1_ascend.rollout.turn_template import TurnTemplate
from lmm_r1_ascend.workers.roles import ActorWorker


@pytest.fixture(scope="module")
def vl():
    path = str(ensure_tiny_model("tiny-qwen2.5-vl"))
    tok, proc = load_processors(path)
    return path, tok, proc


def multi_turn_sequence(tok, proc, seed: int, turns: int = 2):
    """(prompt ids, response ids, action mask, pixel_values, image_grid_thw) of a trajectory whose
    observations are Sokoban boards: prompt = a user message + the first board; response = turns of
    random sampled ids (ending with <|im_end|>) with the template's observation turns between them."""
    g = torch.Generator().manual_seed(seed)
    tpl = TurnTemplate(tok, proc)
    env = make_env("sokoban", cell=16)
    room, _ = generate_level(np.random.default_rng(seed), dim=6, num_boxes=1)
    obs = env.reset(0, {"room": room})
    prompt = tok.apply_chat_template([{"role": "user", "content": "play"}], tokenize=False,
                                     add_generation_prompt=False)
    first = tpl.observation(obs, None)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"] + first.ids
    pix, grids, resp, mask = [first.pixel_values], [first.image_grid_thw], [], []
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for t in range(turns):
        sampled = torch.randint(10, 600, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        sampled.append(im_end)
        resp += sampled
        mask += [True] * len(sampled)
        if t + 1 < turns:
            nxt = tpl.observation(env.step("<think> x </think><answer> up </answer>").observation, im_end)
            resp += nxt.ids
            mask += [False] * len(nxt.ids)
            pix.append(nxt.pixel_values)
            grids.append(nxt.image_grid_thw)
    return (torch.tensor(prompt_ids), torch.tensor(resp), torch.tensor(mask), torch.cat(pix), torch.cat(grids))


def test_packed_forward_sees_images_inside_responses(vl):
    path, tok, proc = vl
    policy = load_reference(ModelSpec(path), get_backend("cpu"))
    seqs = [multi_turn_sequence(tok, proc, seed, turns=t) for seed, t in ((0, 3), (1, 2))]
    samples = [Sample(torch.cat((p, r)), len(r), pv, g, m) for p, r, m, pv, g in seqs]
    got = packed_log_probs(policy, samples).log_probs
    import transformers

    hf = transformers.AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32,
                                                                  attn_implementation="eager").eval()
    for s, lp in zip(samples, got):  # reference: HF's own forward of the one sequence (its own rope index)
        ids = s.input_ids[None]
        with torch.no_grad():
            logits = hf(input_ids=ids, pixel_values=s.pixel_values, image_grid_thw=s.image_grid_thw,
                        mm_token_type_ids=(ids == hf.config.image_token_id).int()).logits[0].float()
        ref = torch.log_softmax(logits, -1)[:-1].gather(-1, ids[0, 1:, None])[:, 0][-s.response_length:]
        torch.testing.assert_close(lp, ref, rtol=2e-5, atol=2e-5)  # fp32 summation order only (test_packed_forward)
    # without the action mask every response pad would be "sampled text": the images no longer fit
    with pytest.raises(ValueError, match=r"<\|image_pad\|> tokens but its image_grid_thw"):
        pack_samples([Sample(s.input_ids, s.response_length, s.pixel_values, s.image_grid_thw) for s in samples],
                     policy.config)
    with pytest.raises(ValueError, match="action_mask must be a bool"):
        pack_samples([Sample(samples[0].input_ids, samples[0].response_length, samples[0].pixel_values,
                             samples[0].image_grid_thw, samples[0].action_mask.long())], policy.config)


def batch_of(seqs, advantages=None):
    b = len(seqs)
    g = torch.Generator().manual_seed(7)
    return ExperienceBatch(
        prompt_ids=[p for p, *_ in seqs], response_ids=[r for _, r, *_ in seqs],
        action_mask=[m for _, _, m, *_ in seqs],
        log_probs=[-torch.rand(len(r), generator=g) * m for _, r, m, *_ in seqs],
        rewards=torch.zeros(b), group_ids=torch.arange(b),
        advantages=advantages or [torch.randn(len(r), generator=g) * m for _, r, m, *_ in seqs],
        multimodal=[{"pixel_values": pv, "image_grid_thw": gr} for *_, pv, gr in seqs])


def test_planted_advantages_on_env_tokens_change_no_gradient(vl):
    path, tok, proc = vl
    seqs = [multi_turn_sequence(tok, proc, seed) for seed in (2, 3)]
    batch = batch_of(seqs)
    planted = batch_of(seqs, [a + 1e6 * (~m) for a, m in zip(batch.advantages, batch.action_mask)])
    assert all(bool((a != b).any()) for a, b in zip(batch.advantages, planted.advantages))  # the plant is there
    cfg = AlgorithmConfig(advantage_estimator="reinforce", init_kl_coef=0.0, entropy_loss_coef=0.01)
    grads = []
    for b in (batch, planted):
        policy = load_policy(ModelSpec(path), get_backend("cpu"))
        worker = ActorWorker.__new__(ActorWorker)  # the actor's own loss (its engine only steps the optimizer)
        worker.model, worker.engine = policy, types.SimpleNamespace(module=PolicyLogProbs(policy, 1.0))
        for micro in micro_batches(b, 10**6, agg_mode=cfg.loss_agg_mode):
            worker._loss(micro, cfg, torch.device("cpu")).loss.backward()
        grads.append({n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])
    assert any(bool(g.abs().sum() > 0) for g in grads[0].values())


def slow_gae(rewards, values, mask, gamma, lambd):
    """Textbook GAE over each row's sampled tokens only (env tokens cut out), in Python floats."""
    adv = torch.zeros_like(rewards, dtype=torch.float64)
    for i in range(rewards.shape[0]):
        idx = [t for t in range(rewards.shape[1]) if mask[i, t]]
        running, nxt_v = 0.0, 0.0
        for t in reversed(idx):
            delta = float(rewards[i, t]) + gamma * nxt_v - float(values[i, t])
            running = delta + gamma * lambd * running
            adv[i, t], nxt_v = running, float(values[i, t])
    return adv


@pytest.mark.parametrize("gamma,lambd", [(1.0, 1.0), (0.9, 0.8), (0.99, 0.0)])
def test_gae_bridges_env_tokens(gamma, lambd):
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0],   # turns with observations between
                         [1, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0],   # then trailing padding
                         [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    rewards = torch.randn(mask.shape, generator=g, dtype=torch.float64) * mask
    values = torch.randn(mask.shape, generator=g, dtype=torch.float64) * 5  # junk on env tokens too
    adv, ret = gae(rewards, values, mask, gamma, lambd)
    want = slow_gae(rewards, values, mask, gamma, lambd)
    torch.testing.assert_close(adv, want, rtol=1e-12, atol=1e-12)
    assert bool((adv[~mask] == 0).all()) and bool((ret[~mask] == 0).all())
    torch.testing.assert_close(ret[mask], (want + values)[mask])
    # values on env tokens are never read
    adv2, _ = gae(rewards, torch.where(mask, values, values + 1e9), mask, gamma, lambd)
    assert torch.equal(adv, adv2)


def test_per_turn_rewards_and_outcome_credit():
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 1], [1, 0, 0, 1, 0, 0, 0, 0]], dtype=torch.bool)
    step = torch.zeros(mask.shape)
    step[0, 1], step[0, 5], step[0, 7], step[1, 0], step[1, 3] = 1.0, -0.3, 20.0, 0.5, 2.0
    totals = step.sum(-1)
    tok = step_token_rewards(step, mask, reward_clip_range=(-10.0, 10.0))
    assert tok[0, 7] == 10.0 and tok[0, 1] == 1.0 and tok[1, 3] == 2.0 and bool((tok[~mask] == 0).all())
    # a clip range without 0 clips the turns' rewards only, never the sampled tokens between them
    clipped = torch.zeros(mask.shape)
    clipped[0, 1], clipped[0, 5], clipped[0, 7], clipped[1, 0], clipped[1, 3] = 1.0, 0.6, 1.5, 0.6, 1.5
    assert torch.equal(step_token_rewards(step, mask, reward_clip_range=(0.6, 1.5)), clipped)
    bad = step.clone()
    bad[0, 2] = 1.0
    with pytest.raises(ValueError, match="environment"):
        step_token_rewards(bad, mask)
    values = torch.randn(mask.shape)
    gae_cfg = AlgorithmConfig(advantage_estimator="gae", init_kl_coef=0.0, advantage_normalization="none",
                              gamma=1.0, lambd=1.0)
    out = compute_advantages(gae_cfg, totals, mask, values=values, step_rewards=step)
    # gamma = lambda = 1: A_t = (rewards from t on) - V_t, each turn's reward counted from where it was earned
    want = torch.flip(torch.cumsum(torch.flip(tok, [1]), 1), [1]) - values
    torch.testing.assert_close(out.advantages[mask], want[mask])
    # outcome estimators: every sampled token of a trajectory gets the group-shaped RETURN
    for name in ("grpo", "rloo", "reinforce_baseline"):
        cfg = AlgorithmConfig(advantage_estimator=name, n_samples_per_prompt=2, init_kl_coef=0.0,
                              advantage_normalization="none", reward_clip_range=None)
        a = compute_advantages(cfg, totals, mask, step_rewards=step).advantages
        b = compute_advantages(cfg, totals, mask).advantages
        assert torch.equal(a, b)
        for i in range(2):
            assert torch.allclose(a[i][mask[i]], a[i][mask[i]][0].expand(int(mask[i].sum())))


def test_packing_and_mismatch_metrics_on_multi_turn_samples(vl):
    path, tok, proc = vl
    seqs = [multi_turn_sequence(tok, proc, seed) for seed in (4, 5, 6)]
    batch = batch_of(seqs)
    lengths = batch.sequence_lengths
    micros = micro_batches(batch, max(lengths) + 1, agg_mode="token-mean")
    assert [m.indices for m in micros] and sum(len(m.indices) for m in micros) == 3 and len(micros) >= 2
    for m in micros:  # each micro-batch packs its samples' images, observation images included
        packed = pack_samples(samples_from_experience(m.batch), load_config(path))
        want = sum(int(mm["image_grid_thw"].shape[0]) for mm in m.batch.multimodal)
        assert packed.image_grid_thw.shape[0] == want
        assert int((packed.mm_token_type_ids == 1).sum()) == int(packed.image_grid_thw.prod(-1).sum()) // 4
    # mismatch metrics read only sampled tokens: rollout log-probs that differ on env tokens change nothing
    old = batch.packed("log_probs")
    mask = batch.packed("action_mask")
    roll = old + 0.01 * mask
    a = mismatch_metrics(old, roll, mask, batch.response_cu_seqlens())
    b = mismatch_metrics(old, roll - 5.0 * (~mask), mask, batch.response_cu_seqlens())
    assert a == b
    p_diff = (old[mask].double().exp() - roll[mask].double().exp()).abs()
    assert a["mismatch/probs_diff_mean"] == pytest.approx(float(p_diff.mean()), rel=1e-12)


def load_config(path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)
