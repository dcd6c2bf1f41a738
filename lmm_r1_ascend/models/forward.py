"""Packed forwards of actor, reference and critic: one row, no padding, no cross-sample attention.

    kernels = backend.select_kernels()                       # once (models.loading does it)
    enable_packed_forward(model, kernels.attention.fn, logprobs_fn=kernels.logprobs.fn)
    out = packed_log_probs(policy, samples, temperature=1.0, return_entropy=True)
    values = packed_values(critic, samples)

A ``Sample`` is prompt + response token ids with the response as the last R tokens. The
samples are concatenated into one row (``pack_samples``, models.packed_inputs, which gives the
layout).

Alignment: response token j of a sample (absolute position p = L - R + j) is scored from
the hidden state at p - 1, the position that predicts it; its log-prob and entropy come
from there, and so does the critic's value of the state before emitting it (as in the
original code). Only those positions reach the LM head, through the backend's log-prob
kernel (its KernelSet.logprobs, recorded for the model by enable_packed_forward; the
chunked kernels.logprobs everywhere today): full (T, V) fp32 logits never exist.

Shared prompts (kernels.shared_prompts; on for models loaded with ModelSpec.share_prompts, the
config's model.share_prompts): samples that share a prompt, the n samples of a GRPO group, are
packed with one copy of it (its images included: the tower runs once per prompt image), their
responses after it; decoder work shrinks by the repeated prompt tokens, and attention runs on
the samples whole (packed_attention gathers around the kernel). Not under sequence parallelism,
which packs every sample whole.

Sequence parallelism (models.sequence_parallel): the row, its positions and its image
embeddings are built whole, then each rank of the SP group runs the decoder on its zigzag
share and the scored results are all-gathered, so callers see the same per-sample tensors.

VL models run their vision tower here (outside the packed decoder call, so the packing
kwargs never reach it) and scatter its output into the image-pad embeddings. A micro-batch
without images still runs the tower on a tiny blank image and adds 0 x its sum to the
embeddings (RECIPE.md): every rank then touches every vision parameter in forward and
backward, which ZeRO-3 needs (its parameter all-gathers are collectives), and the vision
parameters get zero gradients instead of none.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import torch

from lmm_r1_ascend.kernels.sequence_split import split_packed
from lmm_r1_ascend.models.packed_attention import SP_KWARG, packed_kwargs, use_packed_attention
from lmm_r1_ascend.models.packed_inputs import PackedInputs, Sample, pack_samples, text_config_of
from lmm_r1_ascend.models.sequence_parallel import gather_scored, scored_rows, sequence_parallel_of
from lmm_r1_ascend.models.vision_inputs import blank_image, image_features

_PACKED_NAMES: set[str] = set()  # attention names registered through enable_packed_forward
# model -> the log-prob kernel (kernels/logprobs.py contract) its backend chose
_LOGPROBS: weakref.WeakKeyDictionary[torch.nn.Module, Callable] = weakref.WeakKeyDictionary()
# models whose packed forwards run each distinct prompt once (enable_packed_forward(share_prompts=True))
_SHARE_PROMPTS: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


@dataclass
class LogProbOutput:
    """Per-sample float32 (R_i,) log-probs of the response tokens, and entropies if asked."""

    log_probs: list[torch.Tensor]
    entropy: list[torch.Tensor] | None = None


def enable_packed_forward(model: torch.nn.Module, attention_fn: Callable, name: str = "lmm_r1_varlen", *,
                          logprobs_fn: Callable | None = None, share_prompts: bool | None = None) -> str:
    """Register ``attention_fn`` (kernels/attention contract) and select it for the text decoder.

    logprobs_fn: the backend's log-prob kernel (``KernelSet.logprobs.fn``, kernels/logprobs
    contract) that ``packed_log_probs(model, ...)`` will call; None keeps the one recorded
    before (e.g. a parity plant that swaps only the attention).
    share_prompts: pack samples that share a prompt with one copy of it (kernels.shared_prompts)
    in this model's packed forwards from lists of ``Sample``s; not under sequence parallelism
    (which packs every sample whole). None keeps the earlier choice (off).
    """
    use_packed_attention(model, attention_fn, name)
    _PACKED_NAMES.add(name)
    if logprobs_fn is not None:
        _LOGPROBS[model] = logprobs_fn
    if share_prompts is not None:
        (_SHARE_PROMPTS.add if share_prompts else _SHARE_PROMPTS.discard)(model)
    return name


def logprobs_kernel(model: torch.nn.Module) -> Callable:
    """The log-prob kernel recorded for ``model`` by enable_packed_forward (models.loading does it)."""
    fn = _LOGPROBS.get(model)
    if fn is None:
        raise ValueError(
            f"no log-prob kernel is recorded for this {type(model).__name__}: load it with models.loading (given a "
            "backend) or call enable_packed_forward(model, kernels.attention.fn, logprobs_fn=kernels.logprobs.fn) "
            "with kernels = backend.select_kernels()"
        )
    return fn


def _check_packed_attention(backbone: torch.nn.Module) -> None:
    impl = getattr(text_config_of(backbone.config), "_attn_implementation", None)
    if impl not in _PACKED_NAMES:
        raise ValueError(
            f"the model's text attention is '{impl}', which ignores packing: packed samples would attend to each "
            "other. Load it with models.loading (given a backend) or call enable_packed_forward(model, "
            "kernels.attention.fn, logprobs_fn=kernels.logprobs.fn) first"
        )


def packed_hidden_states(backbone: torch.nn.Module, packed: PackedInputs, *,
                         keep_vision_in_graph: bool = True) -> torch.Tensor:
    """Last hidden states (T, H) of the packed row, in the backbone's dtype.

    backbone: the base model (``policy.base_model``, ``critic.model``) with packed attention selected.
    keep_vision_in_graph: for VL models, run the tower on a blank image when there are no images.
    Under sequence parallelism (models.sequence_parallel) the rows are this rank's zigzag share
    (T_local, H), in ``kernels.sequence_split.split_packed(packed.lengths, sp.size, sp.rank)`` order.
    """
    return _hidden_states(backbone, packed, keep_vision_in_graph)[0]


def _hidden_states(backbone, packed: PackedInputs, keep_vision_in_graph: bool):
    """(hidden, sp): hidden of the whole row, or of this rank's share when sp is not None."""
    _check_packed_attention(backbone)
    config = backbone.config
    sp = sequence_parallel_of(backbone)
    # Precomputed (empty) masks: the packed kernel masks by cu_seqlens, and HF would otherwise
    # build a (T, T) block mask from the restarted positions for nothing.
    layer_types = getattr(text_config_of(config), "layer_types", None) or ["full_attention"]
    masks = {t: None for t in layer_types}
    if sp is None:
        kwargs = dict(position_ids=packed.position_ids, attention_mask=masks,
                      **packed_kwargs(packed.cu_seqlens, packed.cu_seqlens_host, packed.shared))
    elif packed.shared is not None:
        raise ValueError("a shared-prompt packed row cannot be split for sequence parallelism: "
                         "pack_samples(..., share_prompts=False) under SP")
    else:  # positions were computed for the whole row (pack_samples); each rank keeps its share
        shard = split_packed(packed.lengths, sp.size, sp.rank)
        index = shard.index.to(packed.input_ids.device)
        kwargs = dict(position_ids=packed.position_ids.index_select(-1, index), attention_mask=masks,
                      **packed_kwargs(shard.local_cu_seqlens(packed.cu_seqlens.device), shard.local_cu_seqlens_host),
                      **{SP_KWARG: (sp, shard)})
    if getattr(config, "vision_config", None) is None:
        ids = packed.input_ids if sp is None else packed.input_ids.index_select(1, index)
        return backbone(input_ids=ids, **kwargs).last_hidden_state[0], sp
    embeds = backbone.get_input_embeddings()(packed.input_ids)
    vision_dtype = next(backbone.visual.parameters()).dtype
    if packed.pixel_values is not None:  # the tower runs once, on every image of the row
        feats = image_features(backbone, packed.pixel_values.to(vision_dtype), packed.image_grid_thw)
        mask = (packed.mm_token_type_ids == 1).unsqueeze(-1)
        embeds = embeds.masked_scatter(mask, feats.to(embeds.dtype))
    elif keep_vision_in_graph:
        blank = image_features(backbone, *blank_image(config, embeds.device, vision_dtype))
        embeds = embeds + 0.0 * blank.sum().to(embeds.dtype)
    if sp is not None:  # scattered into the whole row first, then split with the tokens
        embeds = embeds.index_select(1, index)
    return backbone(inputs_embeds=embeds, **kwargs).last_hidden_state[0], sp


def _scored(hidden: torch.Tensor, packed: PackedInputs, sp) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(hidden rows to score, their labels, owner ranks or None): the whole row's scored positions,
    or those this rank holds under sequence parallelism (then gathered with ``gather_scored``)."""
    index = packed.score_index.to(hidden.device)
    labels = packed.score_labels.to(hidden.device)
    if sp is None:
        return hidden[index], labels, None
    owner, rows = scored_rows(packed.lengths, packed.score_index, sp)
    return hidden[rows.to(hidden.device)], labels[(owner == sp.rank).to(hidden.device)], owner


def _packed(model, backbone, samples: Sequence[Sample] | PackedInputs) -> PackedInputs:
    if isinstance(samples, PackedInputs):
        return samples
    device = next(model.parameters()).device
    share = (model in _SHARE_PROMPTS or backbone in _SHARE_PROMPTS) and sequence_parallel_of(backbone) is None
    return pack_samples(samples, model.config, device=device, share_prompts=share)


def packed_log_probs(policy: torch.nn.Module, samples: Sequence[Sample] | PackedInputs, *,
                     temperature: float = 1.0, return_entropy: bool = False, chunk_size: int = 1024,
                     keep_vision_in_graph: bool = True) -> LogProbOutput:
    """Log-probs (and entropies) of each sample's response tokens under ``policy``.

    policy: a causal / image-text LM (actor or reference) with packed attention selected and
    a log-prob kernel recorded (both done by models.loading given a backend).
    temperature: logits are divided by it in fp32 (RECIPE.md), as the rollout sampled.
    Returns per-sample float32 (R_i,) tensors, differentiable when grad is enabled.
    """
    _check_packed_attention(policy.base_model)
    logprobs_fn = logprobs_kernel(policy)
    packed = _packed(policy, policy.base_model, samples)
    hidden, sp = _hidden_states(policy.base_model, packed, keep_vision_in_graph)
    head = policy.get_output_embeddings()
    rows, labels, owner = _scored(hidden, packed, sp)
    out = logprobs_fn(rows, head.weight, labels, temperature=temperature,
                      bias=getattr(head, "bias", None), chunk_size=chunk_size, return_entropy=return_entropy)
    if owner is not None:  # per-rank results -> the whole row's, on every rank of the SP group
        out = gather_scored(torch.stack(out, -1) if return_entropy else out, owner, sp)
        out = out.unbind(-1) if return_entropy else out
    if return_entropy:
        logp, ent = out
        return LogProbOutput(list(logp.split(packed.response_lengths)), list(ent.split(packed.response_lengths)))
    return LogProbOutput(list(out.split(packed.response_lengths)))


def packed_values(critic: torch.nn.Module, samples: Sequence[Sample] | PackedInputs, *,
                  keep_vision_in_graph: bool = True) -> list[torch.Tensor]:
    """The critic's float32 (R_i,) values of the states before each response token, per sample."""
    packed = _packed(critic, critic.model, samples)
    hidden, sp = _hidden_states(critic.model, packed, keep_vision_in_graph)
    rows, _, owner = _scored(hidden, packed, sp)
    values = critic.values(rows)
    if owner is not None:
        values = gather_scored(values, owner, sp)
    return list(values.split(packed.response_lengths))


def samples_from_experience(batch) -> list[Sample]:
    """``Sample``s (prompt + response) of an ``experience.ExperienceBatch``, images (and, through
    the action mask, images inside multi-turn responses) included."""
    mm = batch.multimodal or [{}] * len(batch)
    return [Sample(torch.cat((p, r)), int(r.numel()), m.get("pixel_values"), m.get("image_grid_thw"), a.cpu())
            for p, r, m, a in zip(batch.prompt_ids, batch.response_ids, mm, batch.action_mask)]


__all__ = [
    "LogProbOutput", "PackedInputs", "Sample", "enable_packed_forward", "logprobs_kernel", "pack_samples",
    "packed_hidden_states",
    "packed_log_probs", "packed_values", "samples_from_experience",
]
