"""Packed (varlen) forwards through transformers' AttentionInterface, no patched model code.

`use_packed_attention(model, attention_fn, name)` registers an attention function under
`name` and selects it for the model's text decoder. Called with the packing kwargs
(`cu_seq_lens_q`, `cu_seq_lens_k`, `max_length_q`, `max_length_k`, see `packed_kwargs`),
every decoder layer runs the backend's varlen kernel on one row of concatenated sequences,
so packed samples never attend to each other. Without those kwargs (generation, padded
batches) it defers to SDPA with the usual mask, so the same model object also generates;
a decode step (one query token per sequence) runs the backend's decode-attention kernel
instead when it has one (KernelSet.decode_attention, kernels/decode_attention.py).
The vision tower keeps its own attention (it is bidirectional per image).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

PACKED_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
# Extra keyword that carries the cumulative lengths as a host list, so kernels that need
# them on the host (the NPU fused kernel) never force a device-to-host sync.
HOST_CU_SEQLENS_KWARG = "lmm_cu_seqlens_host"
# Extra keyword carrying (SequenceParallel, SPShard) in a sequence-parallel forward: the row
# holds this rank's zigzag share and attention runs the SP kernel (ring / Ulysses) over the group.
SP_KWARG = "lmm_sequence_parallel"
# Extra keyword carrying a kernels.shared_prompts.SharedPrompts: the row keeps one copy of each
# distinct prompt, and attention runs on the samples' unshared layout that cu_seqlens describes.
SHARED_PROMPTS_KWARG = "lmm_shared_prompts"


def packed_kwargs(cu_seqlens: torch.Tensor, cu_seqlens_host: Sequence[int], shared=None) -> dict:
    """Forward kwargs that switch the registered attention to varlen mode.

    cu_seqlens: int32 (B+1,) with leading 0, on the model's device; cu_seqlens_host: the same as ints.
    shared: the row's kernels.shared_prompts.SharedPrompts (on the model's device), or None.
    """
    host = [int(x) for x in cu_seqlens_host]
    max_len = max(b - a for a, b in zip(host[:-1], host[1:]))
    kwargs = {
        "use_cache": False,  # a KV cache makes no sense for a packed row and would outlive the forward
        "cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens,
        "max_length_q": max_len, "max_length_k": max_len, HOST_CU_SEQLENS_KWARG: host,
    }
    if shared is not None:
        kwargs[SHARED_PROMPTS_KWARG] = shared
    return kwargs


# Keywords transformers' SDPA path honours that the decode kernel contract has no room for.
_SDPA_ONLY_KWARGS = ("softcap", "position_bias", "cache", "output_attentions")


def make_attention_forward(attention_fn: Callable | None, decode_fn: Callable | None = None) -> Callable:
    """Wrap a kernels/attention.py varlen function as a transformers attention forward.

    transformers calls it with query (B, Hq, T, D), key/value (B, Hkv, S, D) and expects
    (attn_output (B, T, Hq, D), attn_weights or None); packed calls have B == 1 and S == T.
    decode_fn: a kernels/decode_attention.py function for unpacked one-token queries, or None.
    attention_fn None: a generation-only model (use_decode_attention); packed calls are refused.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                **kwargs):
        cu = kwargs.get("cu_seq_lens_q")
        if cu is None:
            if decode_fn is not None and query.shape[2] == 1 and not dropout \
                    and all(kwargs.get(k) is None or kwargs.get(k) is False for k in _SDPA_ONLY_KWARGS):
                return decode_fn(query, key, value, attention_mask, scale=scaling), None
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, **kwargs)
        if attention_fn is None:
            raise ValueError("this model's attention serves generation only (use_decode_attention); a packed "
                             "forward needs the backend's varlen kernel: load it with models.loading")
        if query.shape[0] != 1:
            raise ValueError(f"packed attention expects one row of concatenated sequences (batch 1), got batch {query.shape[0]}")
        if dropout:
            raise ValueError("packed attention does not implement attention dropout; set attention_dropout=0")
        if kwargs.get("cu_seq_lens_k") is not None and kwargs["cu_seq_lens_k"] is not cu \
                and not torch.equal(kwargs["cu_seq_lens_k"], cu):
            raise ValueError("packed attention needs cu_seq_lens_k == cu_seq_lens_q (self-attention)")
        sp = kwargs.get(SP_KWARG)
        shared = kwargs.get(SHARED_PROMPTS_KWARG)
        if sp is not None:
            if shared is not None:
                raise ValueError("shared-prompt rows cannot be split for sequence parallelism: pack samples whole")
            ctx, shard = sp
            # the model's own varlen kernel (a forced attention= override included) runs inside the SP kernel
            out = ctx.attention(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), shard,
                                attention_fn=attention_fn, group=ctx.group, scale=scaling)
            return out.unsqueeze(0), None
        q, k, v = query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1)  # (T, H, D)
        if shared is not None:  # one copy per prompt -> every sample whole, as cu_seqlens describes them
            q, k, v = (x.index_select(0, shared.row_of_virtual) for x in (q, k, v))
        out = attention_fn(q, k, v, cu.to(torch.int32), int(kwargs["max_length_q"]), scale=scaling, causal=True,
                           cu_seqlens_host=kwargs.get(HOST_CU_SEQLENS_KWARG))
        if shared is not None:
            out = out.index_select(0, shared.virtual_of_row)
        return out.unsqueeze(0), None

    return forward


def register_packed_attention(attention_fn: Callable | None, name: str, decode_fn: Callable | None = None) -> str:
    """Register `attention_fn` (and `decode_fn`, see make_attention_forward) with transformers
    under `name` (idempotent) and return the name."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(name, make_attention_forward(attention_fn, decode_fn))
    # Unpacked calls defer to SDPA, so they need SDPA's masks.
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def use_packed_attention(model: torch.nn.Module, attention_fn: Callable | None, name: str = "lmm_r1_varlen",
                         decode_fn: Callable | None = None) -> str:
    """Select the registered varlen attention for the model's text decoder (vision tower untouched)."""
    register_packed_attention(attention_fn, name, decode_fn)
    config = model.config
    text_config = getattr(config, "text_config", None)
    if text_config is not None:
        vision_impl = getattr(getattr(config, "vision_config", None), "_attn_implementation", None) or "sdpa"
        model.set_attn_implementation({"text_config": name, "vision_config": vision_impl, "": name})
    else:
        model.set_attn_implementation(name)
    return name


def use_decode_attention(model: torch.nn.Module, decode_fn: Callable) -> str:
    """For a model that only generates (the hf rollout engine's): transformers' SDPA for the
    prefill and ``decode_fn`` (kernels/decode_attention.py) for each one-token decode step, in
    the text decoder. Returns the registered name (one per decode function)."""
    label = getattr(decode_fn, "__name__", type(decode_fn).__name__)
    return use_packed_attention(model, None, f"lmm_r1_sdpa_decode_{label}_{id(decode_fn):x}", decode_fn)
