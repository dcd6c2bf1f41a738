"""The SFT stage's loss and its one training identity (workers/sft.py), the reference field's
bad-row handling, and the stage's config checks.

References are independent: a separately loaded, untouched HF model (eager attention) run on
each sequence alone, its logits' torch cross-entropy over the reference tokens (next-token
targets), summed per sequence; aggregated by the direct formula of each mode.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lmm_r1_ascend.algorithms.config import AlgorithmConfig
from lmm_r1_ascend.algorithms.objectives import actor_loss
from lmm_r1_ascend.backends import get_backend
from lmm_r1_ascend.config import ConfigError, load_config
from lmm_r1_ascend.data import DataError, PromptDataset, load_processors
from lmm_r1_ascend.demo.arithmetic import generate_problems, problem_row, write_jsonl
from lmm_r1_ascend.models.forward import samples_from_experience
from lmm_r1_ascend.models.loading import ModelSpec, load_policy
from lmm_r1_ascend.models.train_modules import PolicyLogProbs
from lmm_r1_ascend.workers.builders import resolve_model_name
from lmm_r1_ascend.workers.sft import sft_algorithm, sft_batch, sft_loss

# fp32: the packed varlen forward and the eager per-sequence one differ in summation order only
# (test_packed_forward: max 1e-6 on log-probs of magnitude ~7); a mean over ~100 tokens keeps that.
# 1e-5 still catches an off-by-one target or a missing eos (each moves the loss by > 1e-2).
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def model_dir():
    return resolve_model_name("demo-fre")


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    seed = int(torch.randint(0, 10_000, ()).item())  # fresh problems each run
    path = tmp_path_factory.mktemp("sft") / "rows.jsonl"
    write_jsonl((problem_row(p) for p in generate_problems(6, split="train", seed=seed)), path)
    return path


@pytest.fixture(scope="module")
def data(rows_file, model_dir):
    """(tokenizer, the rows' PromptItems, their teacher-forcing batch)."""
    tok, proc = load_processors(model_dir)
    ds = PromptDataset(rows_file, tok, proc, shuffle=False, response_key="response")
    items = [ds[i] for i in range(len(ds))]
    return tok, items, sft_batch(items, tok)


def _reference(model_dir, batch):
    """Per sequence: (sum of token CE, token count), from the untouched HF model on that sequence alone."""
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                           attn_implementation="eager")
    out = []
    for p, r in zip(batch.prompt_ids, batch.response_ids):
        logits = hf(input_ids=torch.cat((p, r))[None]).logits[0]
        out.append((F.cross_entropy(logits[p.numel() - 1: -1], r, reduction="sum"), r.numel()))
    return hf, out


def test_sft_loss_equals_per_sequence_cross_entropy_packed_and_padded(data, model_dir):
    tok, items, batch = data
    assert all(int(r[-1]) == tok.eos_token_id for r in batch.response_ids)  # every reference ends with the stop
    assert tok.decode(batch.response_ids[0][:-1]) == items[0].meta["response"]
    _, ref = _reference(model_dir, batch)
    ref_token_mean = sum(s for s, _ in ref) / sum(n for _, n in ref)
    ref_seq_mean = sum(s / n for s, n in ref) / len(ref)

    policy = load_policy(ModelSpec(model_dir, dtype="float32"), get_backend("cpu"))
    with torch.no_grad():
        lp = PolicyLogProbs(policy, 1.0)(samples_from_experience(batch))["log_probs"]
    mask, cu = torch.ones_like(lp, dtype=torch.bool), batch.response_cu_seqlens()
    torch.testing.assert_close(sft_loss(lp, mask, cu_seqlens=cu), ref_token_mean, **TOL)
    torch.testing.assert_close(sft_loss(lp, mask, "seq-mean-token-mean", cu_seqlens=cu), ref_seq_mean, **TOL)
    # padded (B, L): the same log-probs right-padded with junk the mask must drop
    parts = lp.split(batch.response_lengths)
    width = max(batch.response_lengths)
    padded = torch.full((len(parts), width), -123.0)
    pmask = torch.zeros(len(parts), width, dtype=torch.bool)
    for i, t in enumerate(parts):
        padded[i, : t.numel()], pmask[i, : t.numel()] = t, True
    torch.testing.assert_close(sft_loss(padded, pmask), ref_token_mean, **TOL)
    torch.testing.assert_close(sft_loss(padded, pmask, "seq-mean-token-mean"), ref_seq_mean, **TOL)


def test_actor_on_policy_step_has_the_cross_entropy_gradient(data, model_dir, mode="token-mean"):
    """What ActorWorker._loss computes on_policy (old = this forward's log-probs, detached; the
    batch's advantages, 1) under sft_algorithm: its gradient is the per-sequence CE's."""
    batch = data[2]
    hf, ref = _reference(model_dir, batch)
    n_tok = sum(n for _, n in ref)
    ref_loss = sum(s for s, _ in ref) / n_tok if mode == "token-mean" else sum(s / n for s, n in ref) / len(ref)
    ref_loss.backward()

    policy = load_policy(ModelSpec(model_dir, dtype="float32"), get_backend("cpu"))
    alg = sft_algorithm(AlgorithmConfig(loss_agg_mode=mode, entropy_loss_coef=0.0, eps_clip=0.2))
    lp = PolicyLogProbs(policy, 1.0)(samples_from_experience(batch))["log_probs"]
    mask, cu = batch.packed("action_mask"), batch.response_cu_seqlens()
    out = actor_loss(alg, lp, lp.detach(), batch.packed("advantages"), mask, cu_seqlens=cu)
    assert float(out.loss.detach()) == pytest.approx(-1.0)  # the surrogate's value: why the trainer reports sft_loss
    out.loss.backward()
    theirs = dict(hf.named_parameters())
    checked = 0
    for name, p in policy.named_parameters():
        if p.grad is None:
            continue
        g = theirs[name].grad
        # fp32 gradients summed in different orders: relative 1e-4 of the tensor's largest entry
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-4 * float(g.abs().max()) + 1e-7)
        checked += 1
    assert checked == len([p for p in hf.parameters() if p.grad is not None]) > 0


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_row_without_a_reference_is_a_bad_row(tmp_path, model_dir):
    good = [problem_row(p) for p in generate_problems(3, split="train", seed=1)]
    missing = dict(good[1])
    del missing["response"]
    empty = {**good[2], "response": "  "}
    path = _write(tmp_path / "rows.jsonl", [good[0], missing, empty])
    tok, proc = load_processors(model_dir)
    with pytest.raises(DataError) as err:
        PromptDataset(path, tok, proc, response_key="response")
    msg = str(err.value)
    assert "\n" not in msg and f"{path}:2" in msg and "'response'" in msg and "no such field" in msg
    ds = PromptDataset(path, tok, proc, response_key="response", on_bad_line="skip")
    assert len(ds) == 1 and ds.counts["data/skipped_bad/no_response"] == 2
    assert len(PromptDataset(path, tok, proc)) == 3  # the RL stages do not need references


@pytest.mark.parametrize("override, words", [
    ("algorithm.n_samples_per_prompt=4", "n_samples_per_prompt=1"),
    ("algorithm.init_kl_coef=0.01", "init_kl_coef=0"),
    ("algorithm.advantage_estimator=gae", "without a critic"),
    ("rollout.temperature=0.7", "rollout.temperature=1"),
    ("data.response_key=", "data.response_key"),
])
def test_stage_sft_config_errors_say_what_to_set(override, words):
    with pytest.raises(ConfigError) as err:
        load_config("demo_sft", overrides=[override])
    assert words in str(err.value) and "\n" not in str(err.value)
    load_config("demo_fre", overrides=[override] if "response_key" in override else [])  # RL stages: fine
