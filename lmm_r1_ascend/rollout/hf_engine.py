"""`hf` rollout engine: batched transformers generate() with a KV cache, text and images.

Works on any device torch and transformers run on (the default engine on CPU). Prompts
are repeated n times (prompt-major), left-padded into batches of at most
`max_batch_rows` rows, and sampled with the model's KV cache. Text prompts repeated in a
batch are prefilled once each and their KV cache copied to every sample (_shared_prefix_cache:
n x fewer prefill rows, the same numbers as prefilling the full batch; text models only). For Qwen2-VL-style models
the batch carries pixel_values / image_grid_thw (concatenated in row order) and
mm_token_type_ids (0 text, 1 image, 2 video), which transformers 5.x needs to build the
3-D mRoPE positions; generate() extends mm_token_type_ids with zeros as tokens are added.

Log-probs: generate(output_logits=True) keeps the RAW fp32 logits of every step, before
temperature, top-p, top-k and the min-new-tokens EOS suppression; the engine reports
log_softmax(raw / temperature) of the sampled token, exactly what the trainer computes.
Memory: those logits are held for the whole batch, (rows x steps x vocab) fp32: keep
max_batch_rows modest for long responses with a large vocabulary.

The checkpoint's own generation_config (e.g. Qwen's top_k=1, repetition_penalty=1.05) is
replaced by a neutral one: sampling is governed by SamplingConfig alone.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from lmm_r1_ascend.config.schema import RolloutConfig
from lmm_r1_ascend.data.types import PromptItem
from lmm_r1_ascend.rollout.base import (
    EngineRun,
    RolloutEngine,
    RolloutSample,
    SamplingConfig,
    check_generate_args,
    eos_token_ids,
    make_sample,
    weights_to_load,
)


def load_generation_model(path: str | os.PathLike, dtype: torch.dtype | None = None,
                          attn_implementation: str | None = "sdpa"):
    """A causal LM (text) or image-text-to-text model (config with a vision_config) from a local HF directory."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(path)
    auto = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    return auto.from_pretrained(path, **kwargs)


class HFRolloutEngine(RolloutEngine):
    """Rollout with transformers generate().

    Args:
        model: a local HF checkpoint directory, or an already built model (the engine then
            owns it: it replaces its generation_config and moves it on sleep()).
        device: where to generate; None keeps the model where it is (a path loads on the CPU).
        dtype: weights dtype when loading from a path (None: the checkpoint's).
        tokenizer: used only for EOS / pad ids; loaded from the path when None.
        max_batch_rows: most sequences per generate() call.
        decode_attention: the backend's decode-step attention (``KernelSet.decode_attention.fn``,
            kernels/decode_attention.py) for the text decoder's one-token steps; None keeps the
            model's own attention (from_config passes the run's backend's choice).
    """

    def __init__(self, model, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 tokenizer=None, max_batch_rows: int = 64, decode_attention: Callable | None = None):
        from transformers import GenerationConfig

        if isinstance(max_batch_rows, bool) or not isinstance(max_batch_rows, int) or max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be an int >= 1, got {max_batch_rows!r}")
        if isinstance(model, (str, os.PathLike)):
            if not os.path.isdir(model):
                raise ValueError(f"model path {str(model)!r} is not a directory holding a Hugging Face checkpoint")
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(model)
            model = load_generation_model(model, dtype)
        elif not isinstance(model, torch.nn.Module) or not hasattr(model, "generate"):
            raise TypeError(f"model must be a checkpoint path or a transformers generation model, got "
                            f"{type(model).__name__}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        if decode_attention is not None:
            from lmm_r1_ascend.models.packed_attention import use_decode_attention

            use_decode_attention(self.model, decode_attention)
        config = model.config
        gen = getattr(model, "generation_config", None)
        self.eos_ids = eos_token_ids(config, gen, tokenizer)
        if not self.eos_ids:
            raise ValueError("no EOS token id found in the model's config, generation_config or tokenizer; "
                             "pass a tokenizer whose eos_token is set")
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        for source in (gen, config, getattr(config, "text_config", None)):
            if pad is None and source is not None:
                pad = getattr(source, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else self.eos_ids[0]
        self.model.generation_config = GenerationConfig(eos_token_id=self.eos_ids, pad_token_id=self.pad_id)
        self.image_token_id = getattr(config, "image_token_id", None)
        self.video_token_id = getattr(config, "video_token_id", None)
        vision = getattr(config, "vision_config", None)
        self.merge_size = getattr(vision, "spatial_merge_size", 2) if vision is not None else None
        self.max_batch_rows = max_batch_rows
        # the shared prefill's model facts, decided once here rather than per generate call: the forward's
        # parameter names for a text model whose forward takes logits_to_keep; None (no sharing) for VL
        # models and the rest (why: _shared_prefix_cache)
        forward = inspect.signature(self.model.forward).parameters
        self._prefix_forward_args = (frozenset(forward) if vision is None and "logits_to_keep" in forward
                                     else None)

    @classmethod
    def from_config(cls, rollout: RolloutConfig, run: EngineRun, model_path: str, device: torch.device,
                    dtype: torch.dtype) -> HFRolloutEngine:
        """rollout.micro_rollout_batch_size prompts (x n samples each) per generate() call; decode
        steps through the run's backend's decode-attention kernel."""
        from lmm_r1_ascend.backends import get_backend
        from lmm_r1_ascend.data import load_processors

        tokenizer, _ = load_processors(model_path)
        rows = rollout.micro_rollout_batch_size * run.n_samples_per_prompt
        decode = get_backend(run.device).select_kernels(dtype=dtype).decode_attention
        return cls(model_path, device=device, dtype=dtype, tokenizer=tokenizer, max_batch_rows=rows,
                   decode_attention=decode.fn)

    # ----------------------------------------------------------------------------- generate
    def generate(self, prompts: list[PromptItem], cfg: SamplingConfig) -> list[RolloutSample]:
        self._check_state(awake=True)
        check_generate_args(prompts, cfg)
        for i, p in enumerate(prompts):
            self._check_images(i, p)
        rows = [(i, j) for i in range(len(prompts)) for j in range(cfg.n)]
        stop_ids = set(self.eos_ids) | set(cfg.stop_token_ids)
        samples: list[RolloutSample] = []
        with self._rng(cfg.seed), torch.inference_mode():
            for s in range(0, len(rows), self.max_batch_rows):
                chunk = rows[s:s + self.max_batch_rows]
                resp, logp = self._generate_rows([prompts[i] for i, _ in chunk], cfg, sorted(stop_ids))
                for r, (i, j) in enumerate(chunk):
                    samples.append(make_sample(i, j, prompts[i], resp[r], logp[r], stop_ids))
        return samples

    def _generate_rows(self, rows: list[PromptItem], cfg: SamplingConfig,
                       stop_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample one left-padded batch. Returns response ids (B, L) int64 and log-probs (B, L) float32."""
        from transformers import GenerationConfig

        sampling = (dict(do_sample=False, temperature=None, top_p=None, top_k=None) if cfg.greedy else
                    dict(do_sample=True, temperature=float(cfg.temperature), top_p=float(cfg.top_p),
                         top_k=0 if cfg.top_k == -1 else cfg.top_k))
        gen_cfg = GenerationConfig(
            **sampling, max_new_tokens=cfg.max_new_tokens,
            min_new_tokens=cfg.min_new_tokens or None, eos_token_id=stop_ids, pad_token_id=self.pad_id,
            repetition_penalty=1.0, use_cache=True, return_dict_in_generate=True, output_logits=True,
        )
        shared = self._shared_prefix_cache(rows)
        if shared is not None:
            inputs, cache = shared
            out = self.model.generate(**inputs, past_key_values=cache, generation_config=gen_cfg)
        else:
            inputs = self._collate(rows)
            out = self.model.generate(**inputs, generation_config=gen_cfg)
        resp = out.sequences[:, inputs["input_ids"].shape[1]:]
        if resp.shape[1] != len(out.logits):
            raise RuntimeError(f"generate() returned {resp.shape[1]} new tokens but {len(out.logits)} logit steps")
        logp = torch.empty(resp.shape, dtype=torch.float32, device=resp.device)
        for t, step_logits in enumerate(out.logits):  # one (B, V) fp32 buffer at a time
            lsm = F.log_softmax(step_logits.float() / cfg.logprob_temperature, dim=-1)
            logp[:, t] = lsm.gather(1, resp[:, t:t + 1]).squeeze(1)
        return resp.cpu(), logp.cpu()

    def _shared_prefix_cache(self, rows: list[PromptItem]):
        """Prefill each distinct prompt once, not once per sample: (inputs, cache) for generate(), or None.

        rows repeat each prompt n times (the same PromptItem object). The distinct prompts, left-padded
        to width W, run one forward over their first W - 1 columns into a DynamicCache, whose rows are
        then copied out to every sample (cache.batch_select_indices); generate() then computes only the
        last prompt column before sampling. The positions are generate()'s own (attention-mask cumsum,
        pads at 0), and causal attention makes columns < W - 1 independent of the last one, so this is
        the computation generate() would do on the full batch, with n x fewer prefill rows. Text models
        only: a VL model (Qwen2.5-VL) places mRoPE positions in its own prefill and keeps their offsets
        (rope_deltas) for the decode steps, so a prefix forward of another batch shape would leave them
        stale (a crash once an image batch ran before). None for those, when no prompt repeats,
        W < 2, or the model's forward takes no logits_to_keep (the prefix's logits are not needed):
        the model facts are decided once at load (_prefix_forward_args).
        inputs: input_ids / attention_mask (B, W) int64 on the engine's device, B = len(rows).
        """
        params = self._prefix_forward_args
        if params is None:
            return None
        firsts: dict[int, PromptItem] = {}  # id -> the prompt, in order of first appearance
        for p in rows:
            firsts.setdefault(id(p), p)
        if len(firsts) == len(rows):
            return None
        position = {key: u for u, key in enumerate(firsts)}
        index = [position[id(p)] for p in rows]
        unique = self._collate(list(firsts.values()))
        ids, mask = unique["input_ids"], unique["attention_mask"]
        if ids.shape[1] < 2:
            return None
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        prefix = {"input_ids": ids[:, :-1], "attention_mask": mask[:, :-1]}
        if "position_ids" in params:
            prefix["position_ids"] = (mask[:, :-1].cumsum(-1) - 1).masked_fill(mask[:, :-1] == 0, 0)
        self.model(**prefix, past_key_values=cache, use_cache=True, logits_to_keep=1)
        select = torch.tensor(index, device=ids.device)
        cache.batch_select_indices(select)
        return {"input_ids": ids[select], "attention_mask": mask[select]}, cache

    def _collate(self, rows: list[PromptItem]) -> dict[str, torch.Tensor]:
        """Left-pad prompt ids; add pixel_values, image_grid_thw and mm_token_type_ids when images are present."""
        width = max(len(p.prompt_ids) for p in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(rows), width), dtype=torch.int64)
        for r, p in enumerate(rows):
            ids[r, width - len(p.prompt_ids):] = torch.as_tensor(p.prompt_ids, dtype=torch.int64)
            mask[r, width - len(p.prompt_ids):] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        with_images = [p for p in rows if p.pixel_values is not None]
        if with_images:
            types = torch.zeros_like(ids)
            types[(ids == self.image_token_id) & (mask == 1)] = 1
            if self.video_token_id is not None:
                types[(ids == self.video_token_id) & (mask == 1)] = 2
            batch["mm_token_type_ids"] = types
            batch["pixel_values"] = torch.cat([p.pixel_values for p in with_images])
            batch["image_grid_thw"] = torch.cat([torch.as_tensor(p.image_grid_thw) for p in with_images])
        return {k: v.to(self.device) for k, v in batch.items()}

    def _check_images(self, i: int, p: PromptItem) -> None:
        n_pads = sum(1 for t in p.prompt_ids if t == self.image_token_id) if self.image_token_id is not None else 0
        if p.pixel_values is None:
            if n_pads:
                raise ValueError(f"prompts[{i}] has {n_pads} image pad tokens but no pixel_values")
            return
        if self.merge_size is None:
            raise ValueError(f"prompts[{i}] has images but the model has no vision tower; use a VL checkpoint")
        if p.image_grid_thw is None:
            raise ValueError(f"prompts[{i}] has pixel_values but no image_grid_thw")
        want = int(torch.as_tensor(p.image_grid_thw).prod(-1).sum()) // self.merge_size**2
        if n_pads != want:
            raise ValueError(f"prompts[{i}] has {n_pads} image pad tokens but its image_grid_thw needs {want} "
                             f"(sum of t*h*w // merge_size**2); expand <|image_pad|> per image")

    def _rng(self, seed: int | None):
        if seed is None:
            return contextlib.nullcontext()
        # torch's API, not a device fact: fork_rng saves the host generator itself and takes only
        # accelerator devices in `devices` (torch.cpu has no per-device generator state)
        devices = [] if self.device.type == "cpu" else [self.device]
        fork = torch.random.fork_rng(devices=devices, device_type=self.device.type)

        @contextlib.contextmanager
        def seeded():
            with fork:
                torch.manual_seed(seed)  # seeds the host and every accelerator generator
                yield

        return seeded()

    # ----------------------------------------------------------------------------- weights
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], *,
                       meta: Sequence[tuple[str, tuple[int, ...]]] | None = None) -> int:
        """Copy tensors into the model's parameters/buffers in place (dtype and device converted).

        All pairs are checked first (names, shapes, types), so a bad update leaves the model
        untouched; the pairs are held until then. meta: the (name, shape) of every tensor, in
        order, known beforehand (a ZeRO-3 gather stream): checked first instead, and each tensor
        is then copied as it arrives (none held); a stream that departs from its meta raises
        mid-way, after the tensors before it were copied.
        """
        self._check_state(awake=True)
        targets = dict(self.model.named_parameters(remove_duplicate=False))
        targets.update(self.model.named_buffers(remove_duplicate=False))
        items, meta = weights_to_load(named_tensors, meta)
        self._check_names(targets, meta)
        count = 0
        with torch.no_grad():
            for name, t in items:
                targets[name].copy_(t)
                count += 1
        return count

    @staticmethod
    def _check_names(targets: dict, meta: list[tuple[str, tuple[int, ...]]]) -> None:
        unknown = [n for n, _ in meta if n not in targets]
        if unknown:
            example = next(iter(targets))
            raise ValueError(f"update_weights: {len(unknown)} unknown parameter name(s), e.g. {unknown[:3]}; names "
                             f"must be the model's own (like {example!r}): strip wrapper prefixes such as "
                             "'module.' or '_orig_mod.'. Nothing was loaded.")
        mismatched = [f"{n}: got {shape}, model has {tuple(targets[n].shape)}" for n, shape in meta
                      if shape != tuple(targets[n].shape)]
        if mismatched:
            raise ValueError(f"update_weights: shape mismatch for {len(mismatched)} tensor(s): {mismatched[:3]}. "
                             "Nothing was loaded.")

    # ----------------------------------------------------------------------------- lifecycle
    def sleep(self) -> None:
        """Move the model to host memory. On a CPU engine only the state flag changes (nothing to free:
        Module.to of a tensor already on the device returns it as it is).

        Idempotent, like wake_up().
        """
        self._check_state(awake=False)
        if not self._asleep:
            self.model.to("cpu")
        self._asleep = True

    def wake_up(self) -> None:
        self._check_state(awake=False)
        if self._asleep:
            self.model.to(self.device)
        self._asleep = False

    def close(self) -> None:
        self.model = None
        self._closed = True


