"""The HF export writes a tied output head once (workers/builders.save_hf_model with a gathered state dict)."""

from __future__ import annotations

import torch
from safetensors import safe_open

from lmm_r1_ascend.workers.builders import save_hf_model, without_tied_copies


def _tiny(tie: bool):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, tie_word_embeddings=tie)
    return Qwen2ForCausalLM(cfg).eval()


def test_a_gathered_state_dict_saves_the_tied_head_once_and_loads_back_tied(tmp_path):
    from transformers import Qwen2ForCausalLM

    model = _tiny(tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    state = {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()}
    state["lm_head.weight"] = model.lm_head.weight.detach().clone()  # what a rank's full-state gather returns
    save_hf_model(model, tmp_path, state_dict=state)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    loaded = Qwen2ForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_untied_heads_and_absent_state_dicts_are_left_alone():
    model = _tiny(tie=False)
    state = dict(model.state_dict())
    assert without_tied_copies(model, state) is state and "lm_head.weight" in state
    assert without_tied_copies(_tiny(tie=True), None) is None
