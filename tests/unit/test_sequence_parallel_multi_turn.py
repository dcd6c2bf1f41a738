"""Sequence parallelism on multi-turn samples (issue 34): a packed micro-batch of trajectories
whose responses hold environment-observation turns (action_mask False) with Sokoban board images
inside them, split over two gloo ranks, gives the single-rank results.

The harness is test_sequence_parallel_model's (``_compare``: each rank runs the forward unsplit,
then split over both ranks; outputs must match on every rank and the SP group's SUMMED parameter
gradients must equal the unsplit gradient, at its fp32 tolerance ``TOL``); the samples are
test_multi_turn_train's (``multi_turn_sequence``, ``batch_of``), whose single-rank packed forward
that module checks against Hugging Face's own forward of each sequence. Covered: log-probs and
entropies under ring (the tiny Qwen2.5-VL) and Ulysses (a 4-head / 2-kv-head variant of it), the
actor's loss under ring, and that under ring the loss ignores environment tokens (advantages, old
and reference log-probs planted there change neither loss nor gradient, while a change on one
sampled token does change them).
"""

from __future__ import annotations

import dataclasses
import datetime
import types

import torch
import torch.distributed as dist

from _mp_deadline import spawn_until
from test_multi_turn_train import batch_of, multi_turn_sequence, vl  # noqa: F401  (vl: the fixture)
from test_sequence_parallel_model import TIMEOUT_S, TOL, _compare

SEEDS_TURNS = ((11, 3), (12, 2), (13, 3))  # one packed micro-batch of three trajectories


def _loss_batches(seqs):
    """(batch, planted on env tokens, changed on one sampled token): reference log-probs added to
    batch_of's batch so the KL term is in the loss too."""
    batch = batch_of(seqs)
    g = torch.Generator().manual_seed(8)
    batch = dataclasses.replace(batch, ref_log_probs=[lp - 0.1 * torch.rand(lp.shape, generator=g) * m
                                                      for lp, m in zip(batch.log_probs, batch.action_mask)])
    env = [~m for m in batch.action_mask]
    planted = dataclasses.replace(
        batch, advantages=[a + 1e6 * e for a, e in zip(batch.advantages, env)],
        log_probs=[lp - 5.0 * e for lp, e in zip(batch.log_probs, env)],
        ref_log_probs=[lp + 3.0 * e for lp, e in zip(batch.ref_log_probs, env)])
    changed_adv = [a.clone() for a in batch.advantages]
    last_sampled = int(batch.action_mask[1].nonzero()[-1])
    changed_adv[1][last_sampled] = changed_adv[1][last_sampled].abs() + 1.0  # > 0: PPO's unclipped side
    changed = dataclasses.replace(batch, advantages=changed_adv)
    return batch, planted, changed


def _worker(rank: int, tmp: str, path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rdzv", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        import transformers

        from lmm_r1_ascend.algorithms.config import AlgorithmConfig
        from lmm_r1_ascend.backends import get_backend
        from lmm_r1_ascend.experience.micro import micro_batches
        from lmm_r1_ascend.kernels.collectives import sequence_parallel_group
        from lmm_r1_ascend.models.forward import packed_log_probs, samples_from_experience
        from lmm_r1_ascend.models.loading import ModelSpec, load_policy, prepare_for_backend
        from lmm_r1_ascend.models.sequence_parallel import SequenceParallel, enable_sequence_parallel
        from lmm_r1_ascend.models.train_modules import PolicyLogProbs
        from lmm_r1_ascend.workers.roles import ActorWorker

        seqs = torch.load(f"{tmp}/seqs.pt")
        group, sp_rank = sequence_parallel_group(2)
        backend = get_backend("cpu")
        kernels = backend.sequence_parallel_kernels()
        ring = SequenceParallel(2, sp_rank, group, "ring", kernels["ring"].fn)
        uly = SequenceParallel(2, sp_rank, group, "ulysses", kernels["ulysses"].fn)
        results: dict = {}
        batch, planted, changed = _loss_batches(seqs)
        samples = samples_from_experience(batch)

        def logp_ent(m):
            out = packed_log_probs(m, samples, return_entropy=True)
            return [out.log_probs, out.entropy]

        policy = load_policy(ModelSpec(path, dtype="float32"), backend)
        _compare("ring/log_probs", policy, logp_ent, ring, results)

        cfg = AlgorithmConfig(advantage_estimator="reinforce", init_kl_coef=0.0, entropy_loss_coef=0.01,
                              use_kl_loss=True, kl_loss_coef=0.1, kl_loss_estimator="k1", kl_clamp=None)
        # k1, unclamped: a KL term leaking env tokens (where the random model's log-probs are ~ -12, far
        # from batch_of's 0) would otherwise sit in the clamp, and the plant there would change nothing
        worker = ActorWorker.__new__(ActorWorker)  # the actor's own loss (its engine only steps the optimizer)
        worker.model, worker.engine = policy, types.SimpleNamespace(module=PolicyLogProbs(policy, 1.0))

        def loss_of(b):
            (micro,) = micro_batches(b, 10**6, agg_mode=cfg.loss_agg_mode)  # the whole batch in one forward
            return worker._loss(micro, cfg, torch.device("cpu")).loss

        _compare("ring/actor_loss", policy, lambda m: [[loss_of(batch)]], ring, results)

        enable_sequence_parallel(policy, ring)  # under SP: env-token values reach neither loss nor gradient
        got = {}
        for name, b in (("batch", batch), ("planted", planted), ("changed", changed)):
            policy.zero_grad(set_to_none=True)
            loss = loss_of(b)
            loss.backward()
            got[name] = (loss.detach(), {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None})
        enable_sequence_parallel(policy, None)
        (l0, g0), (l1, g1), (l2, g2) = got["batch"], got["planted"], got["changed"]
        results["planted_equal"] = (bool(torch.equal(l0, l1)) and g0.keys() == g1.keys()
                                    and all(torch.equal(g0[n], g1[n]) for n in g0))
        results["changed_differs"] = (not torch.equal(l0, l2)) and any(not torch.equal(g0[n], g2[n]) for n in g0)
        results["n_grads"] = len(g0)

        # Ulysses splits heads: a 4-head / 2-kv-head variant of the tiny VL model (mRoPE sections
        # resized to its 16-dim heads)
        cfg_vl = transformers.AutoConfig.from_pretrained(path)
        text = cfg_vl.text_config
        text.num_attention_heads, text.num_key_value_heads = 4, 2
        text.rope_parameters = {**text.rope_parameters, "mrope_section": [2, 3, 3]}
        torch.manual_seed(0)
        wide = transformers.AutoModelForImageTextToText.from_config(cfg_vl, dtype=torch.float32)
        prepare_for_backend(wide, backend)
        wide.train()
        _compare("ulysses/log_probs", wide, logp_ent, uly, results)
        torch.save(results, f"{tmp}/res{rank}.pt")
    finally:
        dist.destroy_process_group()


def _in_response_image_pads(seqs, image_token_id):
    """Per packed position: an image pad of an observation turn inside a response."""
    out = []
    for p, r, m, *_ in seqs:
        out += [torch.zeros(len(p), dtype=torch.bool), (r == image_token_id) & ~m]
    return torch.cat(out)


def test_sp2_on_multi_turn_samples_equals_sp1(vl, tmp_path):
    from transformers import AutoConfig

    from lmm_r1_ascend.kernels.sequence_split import split_packed

    path, tok, proc = vl
    seqs = [multi_turn_sequence(tok, proc, seed, turns=t) for seed, t in SEEDS_TURNS]
    # the split really cuts through observation images inside responses: every rank holds pads of
    # them, and at least one such image has pads on both ranks
    pads = _in_response_image_pads(seqs, AutoConfig.from_pretrained(path).image_token_id)
    lengths = [len(p) + len(r) for p, r, *_ in seqs]
    held = [split_packed(lengths, 2, k) for k in range(2)]
    held = [s.index[s.valid] for s in held]
    assert all(bool(pads[h].any()) for h in held)
    on = [torch.zeros_like(pads) for _ in held]
    for o, h in zip(on, held):
        o[h] = True
    starts = torch.nonzero(pads & ~torch.cat([torch.tensor([False]), pads[:-1]]))[:, 0].tolist()
    ends = torch.nonzero(pads & ~torch.cat([pads[1:], torch.tensor([False])]))[:, 0].tolist()
    assert any(bool(on[0][a:b + 1].any()) and bool(on[1][a:b + 1].any()) for a, b in zip(starts, ends))

    torch.save(seqs, tmp_path / "seqs.pt")
    spawn_until(_worker, (str(tmp_path), path), 2, 3 * TIMEOUT_S, "2-rank multi-turn run")
    for rank in range(2):
        res = torch.load(tmp_path / f"res{rank}.pt")
        assert res.pop("planted_equal"), f"rank {rank}: planted env-token values changed the SP loss or gradient"
        assert res.pop("changed_differs"), f"rank {rank}: a changed sampled-token advantage changed nothing"
        assert res.pop("n_grads") > 10
        assert set(res) == {"ring/log_probs", "ring/actor_loss", "ulysses/log_probs"}
        for name, (out_err, grad_err) in res.items():
            assert out_err <= TOL and grad_err <= TOL, f"rank {rank} {name}: outputs {out_err:.2e}, grads {grad_err:.2e}"
