"""Model loading: Auto classes, dtype, packed attention, freezing, reference, critic, errors."""

from __future__ import annotations

import json

import pytest
import torch

from lmm_r1_ascend.backends import get_backend
from lmm_r1_ascend.models.critic import VALUE_HEAD_FILE, Critic, init_value_head
from lmm_r1_ascend.models.forward import Sample, packed_log_probs, packed_values
from lmm_r1_ascend.models.loading import (
    ModelSpec, freeze_by_prefix, load_critic, load_policy, load_reference, prepare_for_backend, resolve_model_path,
)
from lmm_r1_ascend.models.tiny import ensure_tiny_model


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tiny_load"))


@pytest.fixture(scope="module")
def text_path(cache):
    return str(ensure_tiny_model("tiny-qwen2", cache_dir=cache))


@pytest.fixture(scope="module")
def vl_path(cache):
    return str(ensure_tiny_model("tiny-qwen2.5-vl", cache_dir=cache))


def _samples(n=2):
    return [Sample(torch.randint(10, 600, (5 + 3 * i,)), 2 + i) for i in range(n)]


def test_tiny_names_load_through_the_auto_classes(cache):
    text = load_policy(ModelSpec("tiny-qwen2", tiny_cache_dir=cache))
    vl = load_policy(ModelSpec("tiny-qwen2.5-vl", tiny_cache_dir=cache))
    assert type(text).__name__ == "Qwen2ForCausalLM"
    assert type(vl).__name__ == "Qwen2_5_VLForConditionalGeneration"
    critic = load_critic(ModelSpec("tiny-qwen2.5-vl", tiny_cache_dir=cache))
    assert type(critic.model).__name__ == "Qwen2_5_VLModel" and not hasattr(critic.model, "lm_head")
    # The critic's parameter names are the policy's (minus the tied LM head) plus the value head.
    assert {n for n, _ in critic.named_parameters()} == {n for n, _ in vl.named_parameters()} | {"value_head.weight"}


def test_dtype_mode_and_packed_attention(text_path):
    policy = load_policy(ModelSpec(text_path, dtype="bfloat16"), get_backend("npu-emulated"))
    assert {p.dtype for p in policy.parameters()} == {torch.bfloat16}
    assert policy.training and all(p.requires_grad for p in policy.parameters())
    assert policy.config._attn_implementation == "lmm_r1_varlen_npu-emulated_npu_fusion"
    assert load_policy(ModelSpec(text_path)).dtype == torch.float32  # no backend: float32
    assert load_policy(ModelSpec(text_path), get_backend("cpu")).dtype == get_backend("cpu").default_dtype

    ref = load_reference(ModelSpec(text_path), get_backend("cpu"))
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    out = packed_log_probs(ref, _samples())
    assert not any(t.requires_grad for t in out.log_probs)


def test_fused_ops_follow_the_backend(text_path):
    def fused(model):
        return {getattr(m, "_lmm_npu_fused", None) for m in model.modules()} - {None}

    assert fused(load_policy(ModelSpec(text_path), get_backend("npu-emulated"))) == {"rms_norm", "swiglu", "rotary"}
    assert not fused(load_policy(ModelSpec(text_path, fused_ops=False), get_backend("npu-emulated")))
    assert not fused(load_policy(ModelSpec(text_path), get_backend("cpu")))  # the CPU backend has none
    critic = load_critic(ModelSpec(text_path), get_backend("npu-emulated"))
    assert fused(critic.model) == {"rms_norm", "swiglu", "rotary"}


def test_attention_override(text_path):
    policy = load_policy(ModelSpec(text_path, attention="reference"), get_backend("npu-emulated"))
    assert policy.config._attn_implementation == "lmm_r1_varlen_npu-emulated_reference"
    with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
        prepare_for_backend(policy, get_backend("cpu"), attention="flash")


def test_freezing_the_vision_tower(vl_path, rng_seed):
    spec = ModelSpec(vl_path, freeze_prefixes=("model.visual",))
    policy = load_policy(spec, get_backend("cpu"))
    names = {n for n, _ in policy.named_parameters()}
    frozen = {n for n, p in policy.named_parameters() if not p.requires_grad}
    assert frozen == {n for n in names if n.startswith("model.visual.")} and frozen

    cfg = policy.config
    ids = torch.cat([torch.randint(10, 600, (3,)),
                     torch.tensor([cfg.vision_start_token_id] + [cfg.image_token_id] + [cfg.vision_end_token_id]),
                     torch.randint(10, 600, (4,))])
    sample = Sample(ids, 3, torch.randn(4, 1176), torch.tensor([[1, 2, 2]]))
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    torch.cat(packed_log_probs(policy, [sample]).log_probs).sum().backward()
    assert all((p.grad is None) == (n in frozen) for n, p in policy.named_parameters())
    # Weight decay would move every parameter it is applied to; AdamW skips params without grad.
    torch.optim.AdamW(policy.parameters(), lr=1e-2, weight_decay=0.5).step()
    for n, p in policy.named_parameters():
        assert torch.equal(p, before[n]) == (n in frozen), n

    critic = load_critic(spec, get_backend("cpu"))  # same prefix, same names on the critic
    assert {n for n, p in critic.named_parameters() if not p.requires_grad} == frozen


def test_bad_freeze_prefix(text_path):
    policy = load_policy(ModelSpec(text_path))
    with pytest.raises(ValueError, match="'model.visual' matches no parameter of Qwen2ForCausalLM.*model.layers"):
        freeze_by_prefix(policy, ["model.visual"])
    with pytest.raises(ValueError, match="'model.lay' matches no parameter"):  # prefixes are whole name components
        freeze_by_prefix(policy, ["model.lay"])
    with pytest.raises(ValueError, match="non-empty"):
        freeze_by_prefix(policy, [""])
    assert all(p.requires_grad for p in policy.parameters())  # a failed call freezes nothing
    assert freeze_by_prefix(policy, "model.norm") == ["model.norm.weight"]  # one bare string is one prefix
    with pytest.raises(ValueError, match="'vision' matches no parameter"):
        load_policy(ModelSpec(text_path, freeze_prefixes=("vision",)))


def test_missing_directory_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"'{tmp_path}/nope' does not exist"):
        resolve_model_path(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="looks like a Hugging Face Hub id, but nothing is downloaded here"):
        load_policy(ModelSpec("Qwen/Qwen2.5-VL-3B-Instruct"))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        resolve_model_path(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="is a file"):
        resolve_model_path(tmp_path / "weights.bin")
    with pytest.raises(ValueError, match="unknown model dtype 'float8'"):
        ModelSpec("tiny-qwen2", dtype="float8")


def test_value_head_initialisation():
    head = torch.nn.Linear(64, 1, bias=False)
    init_value_head(head, torch.Generator().manual_seed(3))
    expected = torch.empty(1, 64).normal_(0.0, 1 / 65, generator=torch.Generator().manual_seed(3))
    assert torch.equal(head.weight.detach(), expected)
    wide = torch.nn.Linear(20000, 1, bias=False)
    init_value_head(wide, torch.Generator().manual_seed(0))
    # 20000 draws: the sample std is within ~1% (4 sigma = 2%) of 1/(H+1); the mean within 4 sigma.
    assert abs(wide.weight.std().item() * 20001 - 1) < 0.02
    assert abs(wide.weight.mean().item()) < 4 / 20001 / 20000**0.5


def test_critic_save_and_load_round_trip(vl_path, tmp_path, rng_seed):
    critic = load_critic(ModelSpec(vl_path), get_backend("cpu"))
    with torch.no_grad():
        critic.value_head.weight.normal_()  # not the init: the loaded head must be the saved one
    out = critic.save_pretrained(tmp_path / "critic")
    assert (out / VALUE_HEAD_FILE).is_file()
    assert json.loads((out / "lmm_r1_critic.json").read_text())["hidden_size"] == 64
    again = load_critic(ModelSpec(str(out)), get_backend("npu-emulated"))
    assert torch.equal(again.value_head.weight, critic.value_head.weight)
    sd, sd2 = critic.state_dict(), again.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    samples = _samples()
    with torch.no_grad():
        # fp32, same weights, two attention kernels (reference SDPA vs emulated npu_fusion): ~1e-7 apart.
        torch.testing.assert_close(torch.cat(packed_values(again, samples)), torch.cat(packed_values(critic, samples)),
                                   rtol=1e-5, atol=1e-5)
    # A policy checkpoint gives a fresh head, drawn from the generator.
    fresh = load_critic(ModelSpec(vl_path), generator=torch.Generator().manual_seed(5))
    ref = torch.nn.Linear(64, 1, bias=False)
    init_value_head(ref, torch.Generator().manual_seed(5))
    assert torch.equal(fresh.value_head.weight, ref.weight)
    assert torch.equal(Critic.from_pretrained(out).value_head.weight, critic.value_head.weight)


def test_critic_head_of_another_size_is_refused(text_path, tmp_path):
    from safetensors.torch import save_file

    critic = load_critic(ModelSpec(text_path))
    critic.save_pretrained(tmp_path)
    save_file({"weight": torch.zeros(1, 32)}, str(tmp_path / VALUE_HEAD_FILE))
    with pytest.raises(ValueError, match=r"expected a 'weight' tensor of shape \(1, 64\).*got \(1, 32\)"):
        load_critic(ModelSpec(str(tmp_path)))


def test_gradient_checkpointing_gives_the_same_gradients(text_path, rng_seed):
    samples = _samples(3)
    grads = []
    for ckpt in (False, True):
        policy = load_policy(ModelSpec(text_path, gradient_checkpointing=ckpt), get_backend("cpu"))
        assert policy.is_activation_checkpointing == ckpt
        calls = []
        policy.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
        torch.cat(packed_log_probs(policy, samples).log_probs).sum().backward()
        # A pre-hook: non-reentrant recomputation stops after the last saved tensor, so a post-hook may not fire.
        assert len(calls) == (2 if ckpt else 1)  # recomputed in backward only when checkpointing
        grads.append({n: p.grad for n, p in policy.named_parameters()})
    for n, g in grads[0].items():
        # Recomputation repeats the same fp32 ops in the same order: equal up to rounding noise.
        torch.testing.assert_close(grads[1][n], g, rtol=1e-6, atol=1e-7, msg=n)
    critic = load_critic(ModelSpec(text_path, gradient_checkpointing=True), get_backend("cpu"))
    torch.cat(packed_values(critic, samples)).sum().backward()
    assert critic.model.is_activation_checkpointing and critic.value_head.weight.grad is not None
