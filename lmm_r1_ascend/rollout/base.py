"""The rollout interface: sampling settings, one sample, the abstract engine (registry.py names them).

An engine turns prompts (`PromptItem`) into `RolloutSample`s: each prompt repeated `n`
times, sampled with temperature / top-p / top-k, each response carrying the log-prob of
every sampled token computed as the trainer computes it (RECIPE.md "The RL core"):
fp32 logits divided by the temperature, log-softmax over the FULL vocabulary (top-p and
top-k choose which tokens may be sampled; they do not renormalise the reported log-probs).

    engine = registry.engine_class("hf")(model_path, device=torch.device("cpu"))
    samples = engine.generate(prompts, SamplingConfig(n=4, temperature=1.0, max_new_tokens=256))
    engine.update_weights(actor.named_parameters())
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lmm_r1_ascend.config.schema import RolloutConfig
from lmm_r1_ascend.data.types import PromptItem

FINISH_REASONS = ("stop", "length")
# PromptItem.meta key: prompt_ids are the whole sequence so far (a multi-turn continuation,
# rollout/multi_turn.py) and the engine must take them as they are; prompt_text is not set.
TOKEN_IN = "token_in"


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample. Validated on construction (ValueError/TypeError naming the field).

    n: samples per prompt (>= 1).
    temperature: >= 0; 0 is greedy decoding (the argmax token; log-probs are then of the
        untempered logits, and n > 1 samples are identical). Training needs > 0.
    top_p: in (0, 1]; 1 disables nucleus sampling.
    top_k: -1 disables, else >= 1.
    max_new_tokens: >= 1, the longest response.
    min_new_tokens: stop tokens are suppressed for this many first steps (the recipe uses 1:
        a response is never just an EOS). The reported log-probs are NOT affected by this
        suppression, like the trainer's.
    stop_token_ids: extra tokens that end a response, on top of the model's EOS tokens;
        kept in the response like EOS.
    seed: makes generate() reproducible for the same prompts, batch layout and device;
        None draws from the process-wide RNG.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 1024
    min_new_tokens: int = 1
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        def integer(name: str, lo: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"SamplingConfig.{name} must be an int >= {lo}, got {v!r}")

        integer("n", 1)
        integer("max_new_tokens", 1)
        integer("min_new_tokens", 0)
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"SamplingConfig.min_new_tokens ({self.min_new_tokens}) exceeds max_new_tokens ({self.max_new_tokens})"
            )
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0:
            raise ValueError(
                f"SamplingConfig.temperature must be a number >= 0 (0: greedy), got {t!r}"
            )
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {p!r}")
        k = self.top_k
        if isinstance(k, bool) or not isinstance(k, int) or not (k == -1 or k >= 1):
            raise ValueError(f"SamplingConfig.top_k must be -1 (disabled) or an int >= 1, got {k!r}")
        ids = self.stop_token_ids
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids
        ):
            raise TypeError(f"SamplingConfig.stop_token_ids must be a sequence of token ids (ints >= 0), got {ids!r}")
        object.__setattr__(self, "stop_token_ids", tuple(ids))
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise TypeError(f"SamplingConfig.seed must be an int or None, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        """temperature 0: always the argmax token."""
        return self.temperature == 0

    @property
    def logprob_temperature(self) -> float:
        """What the logits are divided by for the reported log-probs (1 when greedy)."""
        return 1.0 if self.greedy else float(self.temperature)


@dataclass(frozen=True)
class EngineRun:
    """The few facts of a run an engine may need beyond its rollout section (from_config).

    seed: the run's seed (an engine that seeds its own sampler at start: vLLM).
    device: the run's backend name as configured (auto | cpu | cuda | npu | npu-emulated).
    n_samples_per_prompt: samples per prompt (the hf engine sizes its generate() calls by it).
    """

    seed: int
    device: str
    n_samples_per_prompt: int


@dataclass
class RolloutSample:
    """One sampled response to one prompt.

    prompt_index: index of the prompt in the list given to generate().
    sample_index: 0..n-1 among that prompt's samples.
    prompt_ids: (P,) int64, the prompt as the trainer feeds it (image pads expanded).
    response_ids: (R,) int64, 1 <= R <= max_new_tokens, unpadded: it ends right after the
        first stop token (kept) or at max_new_tokens.
    logprobs: (R,) float32, log-prob of each sampled token under
        log_softmax(fp32 logits / temperature) of the engine's model (untempered when greedy).
    action_mask: (R,) bool, True on the tokens the policy chose up to and including the
        first stop token. Responses are cut there, so it is all True; it is kept explicit
        because the experience batch carries it.
    finish_reason: "stop" (ended with a stop token) or "length" (hit max_new_tokens).
    prompt: the PromptItem itself (images, label, datasource, meta pass through).
    weight_version: the trainer weight version the engine sampled with (how many weight
        pushes it had received; the trainer's staleness of the sample is its own version
        minus this one). 0 for engines that are updated in place.
    trajectory: None for a single response; for a multi-turn sample (rollout/multi_turn.py) its
        Trajectory: prompt_ids is the first turn's context, response_ids every turn and
        observation after it, action_mask False on observation tokens (log-probs 0 there),
        and the images of the whole sequence ride on it (see `multimodal`).
    """

    prompt_index: int
    sample_index: int
    prompt_ids: torch.Tensor
    response_ids: torch.Tensor
    logprobs: torch.Tensor
    action_mask: torch.Tensor
    finish_reason: str
    prompt: PromptItem = field(repr=False)
    weight_version: int = 0
    trajectory: Any = None

    @property
    def multimodal(self) -> dict[str, torch.Tensor]:
        """{"pixel_values", "image_grid_thw"} of the sequence's images (the prompt's; for a multi-turn
        sample every image of prompt and response, in order), or {} for text."""
        if self.trajectory is not None:
            t = self.trajectory
            return {} if t.pixel_values is None else {"pixel_values": t.pixel_values, "image_grid_thw": t.image_grid_thw}
        if self.prompt.pixel_values is None:
            return {}
        return {"pixel_values": self.prompt.pixel_values, "image_grid_thw": self.prompt.image_grid_thw}


def make_sample(prompt_index: int, sample_index: int, prompt: PromptItem, response_ids: Sequence[int] | torch.Tensor,
                logprobs: Sequence[float] | torch.Tensor, stop_ids: Iterable[int]) -> RolloutSample:
    """Cut a raw response after its first stop token and build the sample (shared by engines).

    response_ids / logprobs: (L,) as the engine produced them (possibly padded after the
    stop). Returns tensors on the CPU.
    """
    ids = torch.as_tensor(response_ids, dtype=torch.int64).reshape(-1).cpu()
    lp = torch.as_tensor(logprobs, dtype=torch.float32).reshape(-1).cpu()
    if ids.numel() == 0 or ids.numel() != lp.numel():
        raise RuntimeError(f"engine returned {ids.numel()} response tokens and {lp.numel()} log-probs for prompt "
                           f"{prompt_index}; expected the same number, at least 1")
    hits = torch.isin(ids, torch.tensor(sorted(set(stop_ids)), dtype=torch.int64)).nonzero()
    if hits.numel():
        end, reason = int(hits[0]) + 1, "stop"
    else:
        end, reason = ids.numel(), "length"
    return RolloutSample(
        prompt_index=prompt_index, sample_index=sample_index,
        prompt_ids=torch.as_tensor(prompt.prompt_ids, dtype=torch.int64), response_ids=ids[:end].clone(),
        logprobs=lp[:end].clone(), action_mask=torch.ones(end, dtype=torch.bool), finish_reason=reason, prompt=prompt,
    )


def eos_token_ids(config: Any, generation_config: Any = None, tokenizer: Any = None) -> list[int]:
    """Every EOS id the checkpoint declares (generation_config, config, text_config, tokenizer), in that order."""
    ids: list[int] = []
    for source in (generation_config, config, getattr(config, "text_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if v is not None and int(v) not in ids:
                ids.append(int(v))
    return ids


def check_generate_args(prompts: object, cfg: object) -> None:
    """Clear errors for what generate() is given."""
    if not isinstance(cfg, SamplingConfig):
        raise TypeError(f"cfg must be a SamplingConfig, got {type(cfg).__name__}")
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty list of PromptItem")
    for i, p in enumerate(prompts):
        if not isinstance(p, PromptItem):
            raise TypeError(f"prompts[{i}] must be a PromptItem, got {type(p).__name__}")
        if len(p.prompt_ids) == 0:
            raise ValueError(f"prompts[{i}] has no prompt_ids")


class RolloutEngine(abc.ABC):
    """Generates samples with log-probs and takes new weights. One engine owns one model.

    Lifecycle: generate / update_weights while awake; sleep() frees accelerator memory
    for training, wake_up() brings the model back; close() releases everything. Calling
    generate or update_weights while asleep, or anything after close, is a RuntimeError.
    Subclasses keep `_asleep` and `_closed` up to date and call `_check_state`.
    """

    _asleep: bool = False
    _closed: bool = False

    def _check_state(self, awake: bool) -> None:
        """awake=True: the operation needs the model awake; any operation needs the engine open."""
        if self._closed:
            raise RuntimeError("the rollout engine is closed; build a new one")
        if awake and self._asleep:
            raise RuntimeError("the rollout engine is asleep; call wake_up() first")

    @abc.abstractmethod
    def generate(self, prompts: list[PromptItem], cfg: SamplingConfig) -> list[RolloutSample]:
        """len(prompts) * cfg.n samples, prompt-major: samples of prompt i are at [i*n, (i+1)*n)."""

    @abc.abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], *,
                       meta: Sequence[tuple[str, tuple[int, ...]]] | None = None) -> int:
        """Load (name, tensor) pairs, named as the model's own parameters; returns how many were loaded.

        Unknown names and shape mismatches are ValueErrors raised before anything is loaded.
        meta: every tensor's (name, shape) in order, when known beforehand: checked first, then
        the pairs are consumed as they come (not held), see `follow_meta`.
        """

    @abc.abstractmethod
    def sleep(self) -> None:
        """Free the accelerator memory the model holds (weights and caches)."""

    @abc.abstractmethod
    def wake_up(self) -> None:
        """Undo sleep()."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the model; the engine is unusable afterwards."""

    # ---- what a run config needs of an engine kind (the trainer never names an engine) ------
    @classmethod
    @abc.abstractmethod
    def from_config(cls, rollout: RolloutConfig, run: EngineRun, model_path: str, device: torch.device,
                    dtype: torch.dtype) -> RolloutEngine:
        """The engine the run's rollout section asks for (plus the run facts it needs), serving the
        checkpoint at model_path on `device` in `dtype`."""

    @classmethod
    def devices_per_engine(cls, rollout_cfg: RolloutConfig) -> int:
        """Accelerators one engine occupies (tensor parallelism) under this rollout config."""
        return 1

    @classmethod
    def sleeps_between_phases(cls, rollout_cfg: RolloutConfig) -> bool:
        """Whether a colocated engine should sleep() while the trainer trains."""
        return False

    # ---- broadcast weight sync: trainer rank 0 sends, every engine process receives ----------
    @classmethod
    def sender_group(cls, host: str, port: int, world_size: int, backend: str, timeout_s: float) -> Any:
        """Trainer rank 0's end (rank 0, the sender) of the side group this engine kind joins;
        kernels.weight_sync.send_buckets streams the weights through it."""
        from lmm_r1_ascend.kernels.weight_sync import stateless_group

        return stateless_group(backend, host, port, 0, world_size, timeout_s=timeout_s)

    def join_weight_sync(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                         timeout_s: float) -> None:
        """Join the sender's group as ranks rank_offset.. (blocks until every member joins)."""
        from lmm_r1_ascend.kernels.weight_sync import stateless_group

        self._sync_group = stateless_group(backend, host, port, rank_offset, world_size, timeout_s=timeout_s)

    def receive_weights(self, meta: list[tuple[str, tuple[int, ...], torch.dtype]], bucket_bytes: int) -> int:
        """Receive one broadcast of the weights `meta` announces (the sender runs concurrently); returns the count."""
        from lmm_r1_ascend.kernels.weight_sync import receive_buckets

        group = getattr(self, "_sync_group", None)
        if group is None:
            raise RuntimeError("no weight-sync group: call join_weight_sync first")
        return self.update_weights(receive_buckets(group, meta, bucket_bytes=bucket_bytes, device=self.device))

    def __enter__(self) -> RolloutEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_weight_pair(k: int, item) -> None:
    """update_weights' input check for item k: a (name: str, tensor) pair."""
    if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
            and isinstance(item[1], torch.Tensor)):
        raise TypeError(f"update_weights expects (name: str, tensor) pairs; item {k} is {item!r:.80}")


def follow_meta(named_tensors: Iterable, meta: list[tuple[str, tuple[int, ...]]]):
    """Yield the pairs, checking each against its announced (name, shape) and the count."""
    k = -1
    for k, item in enumerate(named_tensors):
        check_weight_pair(k, item)
        if k >= len(meta) or (item[0], tuple(item[1].shape)) != meta[k]:
            want = meta[k] if k < len(meta) else "nothing more"
            raise ValueError(f"update_weights: tensor {k} is {item[0]!r} {tuple(item[1].shape)}, announced {want}")
        yield item
    if k + 1 != len(meta):
        raise ValueError(f"update_weights: got {k + 1} tensors, announced {len(meta)}")


def weights_to_load(named_tensors: Iterable, meta: Sequence | None) -> tuple[Iterable, list[tuple[str, tuple[int, ...]]]]:
    """update_weights' input as (pairs, their [(name, shape)]): with `meta`, the lazy checked stream
    (`follow_meta`) and the meta; without, every pair checked and held, and its names and shapes."""
    if meta is not None:
        meta = [(n, tuple(shape)) for n, shape, *_ in meta]
        return follow_meta(named_tensors, meta), meta
    items = []
    for k, item in enumerate(named_tensors):
        check_weight_pair(k, item)
        items.append(item)
    return items, [(n, tuple(t.shape)) for n, t in items]
