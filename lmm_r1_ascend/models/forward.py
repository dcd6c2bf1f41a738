"""Packed forwards of actor, reference and critic: one row, no padding, no cross-sample attention.

    kernels = backend.select_kernels()                       # once (models.loading does it)
    enable_packed_forward(model, kernels.attention.fn, logprobs_fn=kernels.logprobs.fn)
    out = packed_log_probs(policy, samples, temperature=1.0, return_entropy=True)
    values = packed_values(critic, samples)

A ``Sample`` is prompt + response token ids with the response as the last R tokens. The
samples are concatenated into one row (``pack_samples``): input_ids (1, T), positions that
restart per sample ((1, T) for text; (4, 1, T) for Qwen2(.5)-VL: plain restarted positions
then the three mRoPE rows, see kernels.mrope), cu_seqlens, and for VL models the images'
pixel_values and image_grid_thw concatenated in sample order plus mm_token_type_ids.

Alignment: response token j of a sample (absolute position p = L - R + j) is scored from
the hidden state at p - 1, the position that predicts it; its log-prob and entropy come
from there, and so does the critic's value of the state before emitting it (as in the
original code). Only those positions reach the LM head, through the backend's log-prob
kernel (its KernelSet.logprobs, recorded for the model by enable_packed_forward; the
chunked kernels.logprobs everywhere today): full (T, V) fp32 logits never exist.

Shared prompts (kernels.shared_prompts; on for models loaded with ModelSpec.share_prompts, the
config's model.share_prompts): samples that share a prompt, the n samples of a GRPO group, are
packed with one copy of it, their responses after it; decoder work shrinks by the repeated
prompt tokens, and attention runs on the samples whole (packed_attention gathers around the
kernel). Text models without sequence parallelism; the others pack every sample whole.

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

import operator
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import torch

from lmm_r1_ascend.kernels.mrope import mm_token_type_ids_from_input_ids, mrope_position_ids
from lmm_r1_ascend.kernels.packing import cu_seqlens_from_lengths, position_ids_from_lengths
from lmm_r1_ascend.kernels.sequence_split import split_packed
from lmm_r1_ascend.kernels.shared_prompts import SharedPrompts, shared_prompt_layout
from lmm_r1_ascend.models.packed_attention import SP_KWARG, packed_kwargs, use_packed_attention
from lmm_r1_ascend.models.sequence_parallel import gather_scored, scored_rows, sequence_parallel_of
from lmm_r1_ascend.models.vision_inputs import blank_image, check_sample_images, image_features

_PACKED_NAMES: set[str] = set()  # attention names registered through enable_packed_forward
# model -> the log-prob kernel (kernels/logprobs.py contract) its backend chose
_LOGPROBS: weakref.WeakKeyDictionary[torch.nn.Module, Callable] = weakref.WeakKeyDictionary()
# models whose packed forwards run each distinct prompt once (enable_packed_forward(share_prompts=True))
_SHARE_PROMPTS: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


@dataclass
class Sample:
    """One sequence of a packed forward.

    input_ids: int (L,) prompt + response tokens. response_length: R, 1 <= R < L; the last
    R tokens are scored. pixel_values: float (N, C * temporal_patch * patch^2) rows of this
    sample's images, in order; image_grid_thw: int (n_images, 3). Both None without images.
    action_mask: bool (R,) or None (all True): True on response tokens the policy sampled.
    Image pads are images in the prompt and at response tokens the policy did NOT sample
    (a multi-turn sample's observations); a sampled pad id is plain text.
    """

    input_ids: torch.Tensor
    response_length: int
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    action_mask: torch.Tensor | None = None


@dataclass
class PackedInputs:
    """A packed micro-batch (see the module docstring for the layout).

    input_ids: int64 (1, T). position_ids: int64 (1, T) or (4, 1, T). cu_seqlens: int32 (B+1,).
    cu_seqlens_host: the same as ints. lengths / response_lengths: per sample.
    score_index: int64 (sum R,) hidden-state positions that predict the response tokens.
    score_labels: int64 (sum R,) the response tokens. pixel_values (N, D), image_grid_thw
    (n, 3) int64, mm_token_type_ids int32 (1, T): VL only, None otherwise.
    shared: with shared prompts (kernels.shared_prompts) the row holds T_s < T tokens, one copy
    of each distinct prompt: input_ids / position_ids are (.., T_s), score_index points into
    them, while cu_seqlens / lengths still describe the samples whole (attention's layout).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    cu_seqlens_host: list[int]
    lengths: list[int]
    response_lengths: list[int]
    score_index: torch.Tensor
    score_labels: torch.Tensor
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    mm_token_type_ids: torch.Tensor | None = None
    shared: SharedPrompts | None = None

    @property
    def num_tokens(self) -> int:
        """Tokens of the samples whole (attention's layout), shared prompts counted once per sample."""
        return self.cu_seqlens_host[-1]

    def to(self, device: torch.device | str) -> PackedInputs:
        moved = {k: (v.to(device) if isinstance(v, (torch.Tensor, SharedPrompts)) else v) for k, v in vars(self).items()}
        return PackedInputs(**moved)


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
    in this model's packed forwards from lists of ``Sample``s; text models without sequence
    parallelism only (the others pack every sample whole). None keeps the earlier choice (off).
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


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _check_packed_attention(backbone: torch.nn.Module) -> None:
    impl = getattr(_text_config(backbone.config), "_attn_implementation", None)
    if impl not in _PACKED_NAMES:
        raise ValueError(
            f"the model's text attention is '{impl}', which ignores packing: packed samples would attend to each "
            "other. Load it with models.loading (given a backend) or call enable_packed_forward(model, "
            "kernels.attention.fn, logprobs_fn=kernels.logprobs.fn) first"
        )


def _as_int(value, what: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {value!r}") from None


def _share_prompt_rows(packed: PackedInputs, ids: list[torch.Tensor]) -> None:
    """Re-lay a text row built whole (``ids``: its samples' (L_i,) ids) with one copy of each shared
    prompt: ids, positions and score rows move to the shared rows; cu_seqlens stays attention's."""
    shared = shared_prompt_layout(ids, [n - r for n, r in zip(packed.lengths, packed.response_lengths)])
    if shared is None:
        return
    packed.shared = shared
    packed.input_ids = packed.input_ids[:, shared.virtual_of_row]
    packed.position_ids = packed.position_ids[:, shared.virtual_of_row]
    packed.score_index = shared.row_of_virtual[packed.score_index]


def pack_samples(samples: Sequence[Sample], config, device: torch.device | str | None = None, *,
                 share_prompts: bool = False) -> PackedInputs:
    """Validate ``samples`` against the model ``config`` and build one packed row on ``device``.

    share_prompts: one copy of each prompt samples share (kernels.shared_prompts); text models only.
    """
    if not samples:
        raise ValueError("pack_samples got no samples: a packed micro-batch needs at least one")
    text_cfg = _text_config(config)
    vision = getattr(config, "vision_config", None)
    max_pos = getattr(text_cfg, "max_position_embeddings", None)
    vocab = int(text_cfg.vocab_size)
    ids, lengths, resp, pixels, grids, sampled_masks = [], [], [], [], [], []
    for i, s in enumerate(samples):
        if not isinstance(s, Sample):
            raise TypeError(f"samples[{i}] is a {type(s).__name__}, expected models.forward.Sample")
        t = s.input_ids
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"samples[{i}].input_ids must be a 1-D integer tensor, got {getattr(t, 'shape', t)!r}")
        n, r = int(t.numel()), _as_int(s.response_length, f"samples[{i}].response_length")
        if not 1 <= r < n:
            raise ValueError(f"samples[{i}]: response_length {r} must be in [1, {n - 1}] for {n} tokens "
                             "(at least one prompt token precedes the response)")
        if max_pos is not None and n > max_pos:
            raise ValueError(f"samples[{i}] has {n} tokens, over the model's max_position_embeddings={max_pos}: "
                             "lower the prompt / generation max length")
        t = t.cpu().long()  # packing metadata is built on the host, then moved once
        if bool(((t < 0) | (t >= vocab)).any()):
            raise ValueError(f"samples[{i}] holds token ids outside the model's vocabulary [0, {vocab})")
        if (s.pixel_values is None) != (s.image_grid_thw is None):
            raise ValueError(f"samples[{i}]: pixel_values and image_grid_thw must be given together (or neither)")
        sampled = torch.zeros(n, dtype=torch.bool)  # a sampled pad token is plain text; other pads are images
        if s.action_mask is None:
            sampled[n - r:] = True
        else:
            m = s.action_mask
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or tuple(m.shape) != (r,):
                raise ValueError(f"samples[{i}].action_mask must be a bool ({r},) tensor like its response, "
                                 f"got {getattr(m, 'dtype', type(m).__name__)} {tuple(getattr(m, 'shape', ()))}")
            sampled[n - r:] = m.cpu()
        prompt = t[~sampled]  # the tokens images may sit at: the prompt and the observation turns
        if s.pixel_values is not None:
            if vision is None:
                raise ValueError(f"samples[{i}] has images but the model ({type(config).__name__}) has no vision tower")
            pixels.append(check_sample_images(i, s.pixel_values, s.image_grid_thw, prompt, config))
            grids.append(s.image_grid_thw.long().cpu())
        elif vision is not None and bool((prompt == config.image_token_id).any()):
            raise ValueError(f"samples[{i}] has {int((prompt == config.image_token_id).sum())} image pad tokens "
                             "but no pixel_values / image_grid_thw")
        ids.append(t)
        lengths.append(n)
        resp.append(r)
        sampled_masks.append(sampled)

    input_ids = torch.cat(ids)[None]
    cu = cu_seqlens_from_lengths(lengths)
    ends = cu[1:].tolist()
    # Response token j of sample i sits at ends[i] - R_i + j and is predicted from one position earlier.
    labels_at = torch.cat([torch.arange(e - r, e) for e, r in zip(ends, resp)])
    packed = PackedInputs(
        input_ids=input_ids, position_ids=position_ids_from_lengths(lengths)[None], cu_seqlens=cu,
        cu_seqlens_host=cu.tolist(), lengths=lengths, response_lengths=resp,
        score_index=labels_at - 1, score_labels=input_ids[0, labels_at],
    )
    if share_prompts and vision is None:
        _share_prompt_rows(packed, ids)
    if vision is not None:
        types = mm_token_type_ids_from_input_ids(input_ids, config.image_token_id, config.video_token_id)
        types[0, torch.cat(sampled_masks)] = 0  # sampled tokens are text, whatever ids were sampled
        if bool((types == 2).any()):
            raise ValueError("video pad tokens found: packed forwards take images only")
        grid = torch.cat(grids) if grids else None
        packed.mm_token_type_ids = types
        packed.position_ids = mrope_position_ids(types, lengths, grid, spatial_merge_size=vision.spatial_merge_size,
                                                 with_text_positions=True)
        packed.image_grid_thw = grid
        packed.pixel_values = torch.cat([p.to(pixels[0].device) for p in pixels]) if pixels else None
    return packed if device is None else packed.to(device)


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
    layer_types = getattr(_text_config(config), "layer_types", None) or ["full_attention"]
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
