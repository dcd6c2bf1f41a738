"""ExperienceBatch, mini/micro-batching, and gradient-accumulation invariance."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmm_r1_ascend.algorithms import AlgorithmConfig, actor_loss, compute_advantages, critic_loss, loss_normaliser
from lmm_r1_ascend.experience import ExperienceBatch, check_groups, collate_multimodal, micro_batches, minibatches

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def make_batch(gen, n_groups=3, n=4, max_prompt=6, max_resp=8, with_values=True) -> ExperienceBatch:
    b = n_groups * n
    p_len = torch.randint(1, max_prompt + 1, (b,), generator=gen).tolist()
    r_len = torch.randint(1, max_resp + 1, (b,), generator=gen).tolist()
    r_len[0] = 1
    masks = []
    for i, r in enumerate(r_len):
        m = torch.ones(r, dtype=torch.bool)
        m[torch.randint(0, r + 1, (), generator=gen) :] = False  # a truncated tail after "EOS"
        if i == 2:
            m[:] = False  # fully masked sample
        masks.append(m)
    lp = [-torch.rand(r, generator=gen) * 2 for r in r_len]
    return ExperienceBatch(
        prompt_ids=[torch.randint(0, 50, (p,), generator=gen) for p in p_len],
        response_ids=[torch.randint(0, 50, (r,), generator=gen) for r in r_len],
        action_mask=masks,
        log_probs=lp,
        ref_log_probs=[x + torch.randn(x.shape, generator=gen) * 0.1 for x in lp],
        values=[torch.randn(r, generator=gen) for r in r_len] if with_values else None,
        rewards=torch.randint(0, 4, (b,), generator=gen).float() * 0.5,
        group_ids=torch.arange(b) // n,
        info={"uid": torch.arange(b)},
    )


def test_construction_errors(rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    good = make_batch(gen)
    required = ("prompt_ids", "response_ids", "action_mask", "log_probs", "rewards", "group_ids")
    kw = {f: getattr(good, f) for f in required}
    with pytest.raises(ValueError, match=r"log_probs\[1\] must have shape"):
        ExperienceBatch(**{**kw, "log_probs": [kw["log_probs"][0], torch.zeros(99)] + kw["log_probs"][2:]})
    with pytest.raises(ValueError, match=r"action_mask\[0\] must be bool"):
        ExperienceBatch(**{**kw, "action_mask": [m.float() for m in kw["action_mask"]]})
    with pytest.raises(ValueError, match=r"response_ids\[0\] is empty"):
        ExperienceBatch(**{**kw, "response_ids": [torch.zeros(0, dtype=torch.long)] + kw["response_ids"][1:]})
    with pytest.raises(ValueError, match=r"prompt_ids\[0\] must be a 1-D integer tensor"):
        ExperienceBatch(**{**kw, "prompt_ids": [torch.zeros(3)] + kw["prompt_ids"][1:]})
    with pytest.raises(ValueError, match=r"rewards must be a \(12,\) tensor"):
        ExperienceBatch(**{**kw, "rewards": torch.zeros(11)})
    with pytest.raises(ValueError, match="values has 1 samples"):
        ExperienceBatch(**kw, values=[torch.zeros(1)])
    with pytest.raises(ValueError, match="info\\['x'\\] must be"):
        ExperienceBatch(**kw, info={"x": torch.zeros(3)})


def test_select_cat_pad_pack(rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    batch = make_batch(gen)
    idx = [5, 0, 7]
    sub = batch.select(idx)
    assert sub.info["uid"].tolist() == idx and sub.group_ids.tolist() == batch.group_ids[idx].tolist()
    for k, i in enumerate(idx):
        assert torch.equal(sub.log_probs[k], batch.log_probs[i]) and torch.equal(sub.prompt_ids[k], batch.prompt_ids[i])
    back = ExperienceBatch.cat([batch.select(range(0, 4)), batch.select(range(4, len(batch)))])
    assert back.info["uid"].tolist() == list(range(len(batch)))
    assert all(torch.equal(a, b) for a, b in zip(back.values, batch.values))
    with pytest.raises(ValueError, match="values is set in some"):
        ExperienceBatch.cat([batch, make_batch(gen, with_values=False)])

    padded = batch.padded("log_probs", pad_value=-7.0)
    lengths = batch.response_lengths
    assert padded.shape == (len(batch), max(lengths))
    for i, n in enumerate(lengths):
        assert torch.equal(padded[i, :n], batch.log_probs[i]) and padded[i, n:].eq(-7.0).all()
    assert batch.padded("action_mask", False).dtype == torch.bool
    assert all(torch.equal(a, b) for a, b in zip(batch.unpadded(padded), batch.log_probs))
    cu = batch.response_cu_seqlens()
    flat = batch.packed("values")
    for i in range(len(batch)):
        assert torch.equal(flat[cu[i] : cu[i + 1]], batch.values[i])
    with pytest.raises(ValueError, match="advantages is not set"):
        batch.packed("advantages")
    with pytest.raises(ValueError, match="not a token-level field"):
        batch.padded("rewards")
    with pytest.raises(IndexError):
        batch.select([len(batch)])
    moved = batch.to("meta")
    assert moved.values[0].device.type == "meta" and moved.info["uid"].device.type == "meta"


def test_minibatches_seeded_shuffle(rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    batch = make_batch(gen, n_groups=5, n=4)
    state = torch.get_rng_state()
    a = minibatches(batch, 6, seed=rng_seed)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    uids = [mb.info["uid"].tolist() for mb in a]
    assert [len(u) for u in uids] == [6, 6, 6, 2]
    assert sorted(sum(uids, [])) == list(range(20))
    assert uids == [mb.info["uid"].tolist() for mb in minibatches(batch, 6, seed=rng_seed)]
    others = [[mb.info["uid"].tolist() for mb in minibatches(batch, 6, seed=rng_seed + k)] for k in (1, 2, 3)]
    assert any(o != uids for o in others)  # 3 other seeds all giving the same of 20! orders: ~impossible
    assert [len(mb) for mb in minibatches(batch, 6, seed=0, drop_last=True)] == [6, 6, 6]
    assert [mb.info["uid"].tolist() for mb in minibatches(batch, 10, seed=0, shuffle=False)] == [
        list(range(10)), list(range(10, 20))]
    with pytest.raises(ValueError, match="mini-batch size"):
        minibatches(batch, 0, seed=0)


@pytest.mark.parametrize("mode", MODES)
def test_micro_batches_respect_budget(rng_seed, mode):
    gen = torch.Generator().manual_seed(rng_seed)
    batch = make_batch(gen)
    budget = int(torch.randint(3, 30, (), generator=gen))
    micros = micro_batches(batch, budget, agg_mode=mode, constant=64.0)
    assert sum((m.indices for m in micros), []) == list(range(len(batch)))  # order kept, all present
    whole = loss_normaliser(mode, batch.action_counts, 64.0)
    for m in micros:
        assert m.num_tokens <= budget or len(m.indices) == 1
        assert m.normaliser == whole and m.agg_mode == mode
        assert m.batch.info["uid"].tolist() == m.indices
    with pytest.raises(ValueError, match="hard_max_tokens"):
        micro_batches(batch, budget, agg_mode=mode, constant=64.0, hard_max_tokens=1)


def _grads(batch, cfg, w, u, feats, normaliser=None, packed=False):
    """Actor and critic losses of a toy model on ``batch``; returns their grads wrt w and u.

    Token t of sample uid k has a feature x = feats[k][t]; log pi = -softplus(x.w),
    entropy = sigmoid(x.w), value = x.u: smooth, and different for every token.
    """
    xs = [feats[int(k)] for k in batch.info["uid"]]
    if packed:
        x = torch.cat(xs)
        cu = batch.response_cu_seqlens()
        get = batch.packed
    else:
        x = torch.nn.utils.rnn.pad_sequence(xs, batch_first=True)
        cu = None
        get = batch.padded
    mask = get("action_mask") if packed else batch.padded("action_mask", False)
    z = x @ w
    out = actor_loss(
        cfg, -F.softplus(z), get("log_probs"), get("advantages"), mask,
        normaliser=normaliser, ref_log_probs=get("ref_log_probs"), entropy=torch.sigmoid(z), cu_seqlens=cu,
    )
    v = critic_loss(cfg, x @ u, get("values"), get("returns"), mask, normaliser=normaliser, cu_seqlens=cu)
    return torch.autograd.grad(out.loss + v.loss, (w, u))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("packed", [False, True])
def test_gradient_accumulation_equals_whole_minibatch(rng_seed, mode, packed):
    gen = torch.Generator().manual_seed(rng_seed)
    cfg = AlgorithmConfig(
        advantage_estimator="gae", n_samples_per_prompt=4, loss_agg_mode=mode, loss_agg_constant=8.0,
        use_kl_loss=True, kl_loss_coef=0.1, entropy_loss_coef=0.01, dual_clip=3.0,
    )
    batch, _ = make_batch(gen, n_groups=4).with_advantages(cfg)
    feats = [torch.randn(n, 6, generator=gen) for n in batch.response_lengths]
    w = (torch.randn(6, generator=gen) * 0.5).requires_grad_(True)
    u = torch.randn(6, generator=gen).requires_grad_(True)
    for mb in minibatches(batch, 10, seed=rng_seed):
        whole = _grads(mb, cfg, w, u, feats)  # normaliser None: computed from mb itself
        budget = int(torch.randint(1, sum(mb.sequence_lengths) + 1, (), generator=gen))
        micros = micro_batches(mb, budget, agg_mode=mode, constant=cfg.loss_agg_constant)
        acc = [torch.zeros_like(w), torch.zeros_like(u)]
        for m in micros:
            gw, gu = _grads(m.batch, cfg, w, u, feats, m.normaliser, packed)
            acc[0] += gw
            acc[1] += gu
        # float32: the same ~100 terms summed in a different order and grouping; relative
        # differences are a few ulps (1e-7) times log(terms); 1e-5 leaves margin, while a
        # wrong normaliser (per micro-batch instead of per mini-batch) is off by O(1).
        torch.testing.assert_close(acc[0], whole[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(acc[1], whole[1], rtol=1e-5, atol=1e-6)
        assert whole[0].abs().max() > 1e-4  # the check is not vacuous


def test_with_advantages_matches_pipeline(rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    batch = make_batch(gen, with_values=False)
    cfg = AlgorithmConfig(advantage_estimator="rloo", n_samples_per_prompt=4, kl_estimator="k2")
    new, result = batch.with_advantages(cfg, kl_coef=0.05)
    direct = compute_advantages(
        cfg, batch.rewards, batch.padded("action_mask", False),
        log_probs=batch.padded("log_probs"), ref_log_probs=batch.padded("ref_log_probs"), kl_coef=0.05,
    )
    for name in ("advantages", "returns", "kl"):
        torch.testing.assert_close(new.padded(name), getattr(direct, name), rtol=0, atol=0)  # same computation
        assert [t.shape[0] for t in getattr(new, name)] == batch.response_lengths
    assert batch.advantages is None  # the input batch is not modified
    shuffled = batch.select(torch.randperm(len(batch), generator=gen).tolist())
    if shuffled.group_ids.tolist() != batch.group_ids.tolist():
        with pytest.raises(ValueError, match="must be consecutive|two blocks"):
            shuffled.with_advantages(cfg)


def test_check_groups():
    check_groups(torch.tensor([3, 3, 1, 1]), 2)
    with pytest.raises(ValueError, match="consecutive"):
        check_groups(torch.tensor([0, 1, 0, 1]), 2)
    with pytest.raises(ValueError, match="two blocks"):
        check_groups(torch.tensor([0, 0, 0, 0]), 2)
    with pytest.raises(ValueError, match="whole groups"):
        check_groups(torch.tensor([0, 0, 0]), 2)


def test_collate_multimodal():
    a = {"pixel_values": torch.ones(4, 3), "image_grid_thw": torch.tensor([[1, 2, 2]])}
    b = {"pixel_values": torch.zeros(8, 3), "image_grid_thw": torch.tensor([[1, 2, 4]])}
    out = collate_multimodal([a, {}, b])
    assert out["pixel_values"].shape == (12, 3) and out["pixel_values"][:4].eq(1).all()
    assert out["image_grid_thw"].tolist() == [[1, 2, 2], [1, 2, 4]]
    assert collate_multimodal([{}, {}]) == {}
