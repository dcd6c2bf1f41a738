"""Multi-turn rollout with an environment (issue 34), over any rollout engine.

Per trajectory (n per prompt, each with its own environment):

    context = the row's prompt without its generation prompt + the first observation as a user turn
    repeat:  the policy samples a turn (engine.generate on the token ids so far: token in, token out)
             the environment steps on the turn's decoded text -> reward, done, next observation
             the observation becomes the next user turn (turn_template.TurnTemplate ids)
    until:   done | max_turns turns | the response token budget | the image budget

The sample's prompt is the context; its response is every turn and observation after it,
concatenated. The trained ids are exactly the sampled ids plus the template's ids for the
observations (nothing the policy sampled is ever re-tokenised). action_mask is True only on
sampled tokens; log-probs are 0 on observation tokens. The images of the whole sequence
(prompt, first observation, later observations, in order) ride on the sample
(`Trajectory.pixel_values` / `image_grid_thw`), so the trainer's packed forward sees them all.

Engines: a turn is `engine.generate([PromptItem], n=1)` whose prompt_ids are the whole
sequence so far with image pads expanded (the hf engine's ordinary input) and whose meta
says TOKEN_IN (the vLLM engine then sends the ids, one pad per image, with the images as
multi_modal_data, instead of re-tokenising prompt_text). `MultiTurnEngine` wraps an engine so
that every placement (in-process, Ray engine actors, async draws) runs whole trajectories in
the engine's own process, with one weight version per trajectory.

Ends (Trajectory.end_reason): "done" (the env said so), "max_turns", "token_budget" (the next
observation would leave no room for a turn), "image_budget" (more than max_images images in
the sequence), "vision_token" (the policy sampled an image pad token: as text it is trained on,
but no engine can be fed it back), "env_error" (the guard's terminal result, or a failed reset).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lmm_r1_ascend.data.types import PromptItem
from lmm_r1_ascend.envs.base import Environment
from lmm_r1_ascend.envs.guard import EnvError, GuardedEnv, error_metrics
from lmm_r1_ascend.envs.registry import make_env
from lmm_r1_ascend.rollout.base import TOKEN_IN, RolloutEngine, RolloutSample, SamplingConfig
from lmm_r1_ascend.rollout.turn_template import TurnTemplate

END_REASONS = ("done", "max_turns", "token_budget", "image_budget", "vision_token", "env_error")


@dataclass(frozen=True)
class MultiTurnLimits:
    """max_turns: policy turns per trajectory (>= 1). max_images: images in the whole sequence
    (prompt + observations, >= 1). max_image_pixels: pixels (w x h) of one observation image,
    before resizing. max_response_tokens: the response (turns + observations) budget (>= 1).
    timeout_s: longest env reset / step (the guard's)."""

    max_turns: int = 5
    max_images: int = 8
    max_image_pixels: int = 1024 * 1024
    max_response_tokens: int = 4096
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for key, lo in (("max_turns", 1), ("max_images", 1), ("max_image_pixels", 1), ("max_response_tokens", 1)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"env.{key} must be an int >= {lo}, got {v!r}")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) or not self.timeout_s > 0:
            raise ValueError(f"env.timeout_s must be a number > 0, got {self.timeout_s!r}")


@dataclass
class Trajectory:
    """The multi-turn facts of one sample (RolloutSample.trajectory).

    turn_ends: response index of each turn's last sampled token. turn_rewards: the env's reward
    for each turn. actions: each turn's decoded text, as the env got it. infos: each step's info.
    pixel_values float32 (patches, D) / image_grid_thw int64 (n, 3): every image of the sequence
    in order (None without images); images: the same as resized PIL images. end_reason: see
    END_REASONS. env_error: the guard's line when the episode ended on an env error, env_error_kind
    its kind (envs/guard.py ERROR_KINDS; the trainer logs env/errors/<kind> from it).
    """

    turn_ends: list[int] = field(default_factory=list)
    turn_rewards: list[float] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    infos: list[dict] = field(default_factory=list)
    images: list = field(default_factory=list)
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    end_reason: str = ""
    env_error: str = ""
    env_error_kind: str = ""
    env_seed: int = 0

    @property
    def total_reward(self) -> float:
        """The trajectory's return: the sum of its per-turn rewards (what outcome estimators credit)."""
        return float(sum(self.turn_rewards))

    @property
    def success(self) -> bool:
        """The last step's info says solved (Sokoban) or success."""
        last = self.infos[-1] if self.infos else {}
        return bool(last.get("solved", last.get("success", False)))


@dataclass
class _Open:
    """A trajectory being played."""

    prompt_index: int
    sample_index: int
    prompt: PromptItem
    env: Environment
    context: list[int]
    traj: Trajectory
    pixel_values: list[torch.Tensor] = field(default_factory=list)
    grids: list[torch.Tensor] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[bool] = field(default_factory=list)
    finish_reason: str = "stop"
    done: bool = False

    def item(self) -> PromptItem:
        pv = torch.cat(self.pixel_values) if self.pixel_values else None
        grid = torch.cat(self.grids) if self.grids else None
        return PromptItem(prompt_ids=self.context + self.ids, prompt_text="", images=list(self.traj.images),
                          pixel_values=pv, image_grid_thw=grid, label=self.prompt.label,
                          datasource=self.prompt.datasource, meta={**self.prompt.meta, TOKEN_IN: True})

    def add_images(self, images: list, pixel_values, grid) -> None:
        if images:
            self.traj.images.extend(images)
            self.pixel_values.append(pixel_values)
            self.grids.append(grid)

    def end(self, reason: str) -> None:
        self.done, self.traj.end_reason = True, reason


def env_seed(seed: int | None, prompt_index: int, sample_index: int, n: int) -> int:
    """The reset seed of trajectory (prompt_index, sample_index): distinct per trajectory of a call."""
    return ((0 if seed is None else seed) * 1_000_003 + prompt_index * n + sample_index) % (2**31)


class MultiTurnRollout:
    """Plays trajectories (module docstring). generate: an engine's generate(prompts, cfg).
    new_env(): a fresh environment per trajectory (GuardedEnv-wrapped by `guarded_env_factory`).
    vision_ids: token ids that may not be fed back as text (image / video pads)."""

    def __init__(self, generate: Callable[[list[PromptItem], SamplingConfig], list[RolloutSample]],
                 new_env: Callable[[], Environment], template: TurnTemplate, limits: MultiTurnLimits,
                 vision_ids: Iterable[int] = ()):
        self.generate, self.new_env, self.template, self.limits = generate, new_env, template, limits
        self.vision_ids = {int(t) for t in vision_ids}

    def _open(self, i: int, j: int, p: PromptItem, cfg: SamplingConfig) -> _Open:
        gp = self.template.generation_prompt_ids()
        if list(p.prompt_ids[-len(gp):]) != gp:
            raise ValueError(f"prompts[{i}] does not end with the chat template's generation prompt "
                             f"{self.template.tokenizer.decode(gp)!r}: multi-turn rows must be chat-templated")
        if p.num_images > self.limits.max_images:
            raise ValueError(f"prompts[{i}] has {p.num_images} images, over env.max_images={self.limits.max_images}")
        seed = env_seed(cfg.seed, i, j, cfg.n)
        env = self.new_env()
        task = {**p.meta, "label": p.label, "datasource": p.datasource}
        t = _Open(i, j, p, env, [], Trajectory(env_seed=seed))
        t.add_images(list(p.images), p.pixel_values, p.image_grid_thw)
        try:
            obs = env.reset(seed, task)
        except EnvError as e:  # the sample is kept: its first turn is sampled from the row alone, reward 0
            t.context = list(p.prompt_ids)
            t.traj.env_error, t.traj.env_error_kind = str(e), e.kind
            return t
        turn = self.template.observation(obs, None, f"prompts[{i}] first observation")
        if len(t.traj.images) + len(turn.images) > self.limits.max_images:
            raise ValueError(f"prompts[{i}]: the prompt and the first observation have "
                             f"{len(t.traj.images) + len(turn.images)} images, over env.max_images="
                             f"{self.limits.max_images}")
        t.context = list(p.prompt_ids[:-len(gp)]) + turn.ids
        t.add_images(turn.images, turn.pixel_values, turn.image_grid_thw)
        return t

    def run(self, prompts: Sequence[PromptItem], cfg: SamplingConfig) -> list[RolloutSample]:
        """len(prompts) * cfg.n trajectories as samples, prompt-major."""
        open_ = [self._open(i, j, p, cfg) for i, p in enumerate(prompts) for j in range(cfg.n)]
        try:
            for turn in range(self.limits.max_turns):
                live = [t for t in open_ if not t.done]
                if not live:
                    break
                by_budget: dict[int, list[_Open]] = {}
                for t in live:
                    room = min(cfg.max_new_tokens, self.limits.max_response_tokens - len(t.ids))
                    by_budget.setdefault(room, []).append(t)
                for room, group in by_budget.items():
                    seed = None if cfg.seed is None else cfg.seed + 7919 * (turn + 1) + room
                    turn_cfg = dataclasses.replace(cfg, n=1, max_new_tokens=room,
                                                   min_new_tokens=min(cfg.min_new_tokens, room), seed=seed)
                    outs = self.generate([t.item() for t in group], turn_cfg)
                    if len(outs) != len(group):
                        raise RuntimeError(f"the engine returned {len(outs)} samples for {len(group)} turns")
                    for t, s in zip(group, outs):
                        self._after_turn(t, s, last_turn=turn + 1 == self.limits.max_turns)
        finally:
            for t in open_:
                t.env.close()
        return [self._sample(t) for t in open_]

    def _after_turn(self, t: _Open, s: RolloutSample, last_turn: bool) -> None:
        ids = s.response_ids.tolist()
        t.ids += ids
        t.logprobs += s.logprobs.tolist()
        t.mask += [True] * len(ids)
        t.finish_reason = s.finish_reason
        t.traj.turn_ends.append(len(t.ids) - 1)
        text = self.template.tokenizer.decode(ids, skip_special_tokens=True)
        t.traj.actions.append(text)
        if t.traj.env_error:  # the reset failed: one turn, no reward
            t.traj.turn_rewards.append(0.0)
            t.traj.infos.append({"env_error": t.traj.env_error})
            return t.end("env_error")
        result = t.env.step(text)
        t.traj.turn_rewards.append(result.reward)
        t.traj.infos.append(dict(result.info))
        if result.info.get("env_error"):
            t.traj.env_error = str(result.info["env_error"])
            t.traj.env_error_kind = str(result.info.get("env_error_kind", "env_error"))
            return t.end("env_error")
        if result.done:
            return t.end("done")
        if last_turn:
            return t.end("max_turns")
        if self.vision_ids.intersection(ids):
            return t.end("vision_token")
        obs = self.template.observation(result.observation, ids[-1], f"turn {len(t.traj.turn_ends)} observation")
        if len(t.traj.images) + len(obs.images) > self.limits.max_images:
            return t.end("image_budget")
        if len(t.ids) + len(obs.ids) >= self.limits.max_response_tokens:
            return t.end("token_budget")
        t.ids += obs.ids
        t.logprobs += [0.0] * len(obs.ids)
        t.mask += [False] * len(obs.ids)
        t.add_images(obs.images, obs.pixel_values, obs.image_grid_thw)

    @staticmethod
    def _sample(t: _Open) -> RolloutSample:
        t.traj.pixel_values = torch.cat(t.pixel_values) if t.pixel_values else None
        t.traj.image_grid_thw = torch.cat(t.grids) if t.grids else None
        return RolloutSample(
            prompt_index=t.prompt_index, sample_index=t.sample_index,
            prompt_ids=torch.tensor(t.context, dtype=torch.int64), response_ids=torch.tensor(t.ids, dtype=torch.int64),
            logprobs=torch.tensor(t.logprobs, dtype=torch.float32), action_mask=torch.tensor(t.mask, dtype=torch.bool),
            finish_reason=t.finish_reason, prompt=t.prompt, trajectory=t.traj)


def guarded_env_factory(name: str, kwargs: dict[str, Any], limits: MultiTurnLimits) -> Callable[[], Environment]:
    """new_env() for MultiTurnRollout: make_env(name, **kwargs) inside a GuardedEnv with the limits."""
    make_env(name, **kwargs).close()  # bad names / kwargs fail here, once, before any rollout

    def new_env() -> Environment:
        return GuardedEnv(make_env(name, **kwargs), timeout_s=limits.timeout_s, max_images=limits.max_images,
                          max_image_pixels=limits.max_image_pixels)

    return new_env


def env_error_metrics(samples: Sequence[RolloutSample]) -> dict[str, float]:
    """env/errors/<kind>: how many of these samples' episodes ended on an environment error of each kind
    (counted from the samples, so it holds wherever the trajectories were played); {} when none did."""
    kinds = Counter(s.trajectory.env_error_kind or "env_error" for s in samples
                    if s.trajectory is not None and s.trajectory.env_error)
    return error_metrics(kinds)


class MultiTurnEngine(RolloutEngine):
    """A rollout engine whose generate() plays whole trajectories with `engine` (any RolloutEngine)
    in this process. Weights, sleep and close go to the wrapped engine."""

    def __init__(self, engine: RolloutEngine, rollout: MultiTurnRollout):
        self.engine, self.rollout = engine, rollout

    @property
    def device(self):
        return self.engine.device

    def generate(self, prompts: list[PromptItem], cfg: SamplingConfig) -> list[RolloutSample]:
        return self.rollout.run(prompts, cfg)

    def update_weights(self, named_tensors, *, meta=None) -> int:
        return self.engine.update_weights(named_tensors, meta=meta)

    def join_weight_sync(self, *args, **kwargs) -> None:
        self.engine.join_weight_sync(*args, **kwargs)

    def receive_weights(self, *args, **kwargs) -> int:
        return self.engine.receive_weights(*args, **kwargs)

    def sleep(self) -> None:
        self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()

    def close(self) -> None:
        self.engine.close()

    @classmethod
    def from_config(cls, rollout, run, model_path, device, dtype) -> MultiTurnEngine:
        raise TypeError("MultiTurnEngine wraps a built engine: use workers.builders.build_rollout_engine "
                        "with an env section")


def wrap_multi_turn(engine: RolloutEngine, env_cfg, data_cfg, model_path: str) -> MultiTurnEngine:
    """`engine` playing env_cfg's environment (config.schema.EnvConfig; env_cfg.file is loaded first,
    so engine actors and eval find a user's env); observation images are resized within data_cfg's
    min_pixels / max_pixels like prompt images."""
    from lmm_r1_ascend.data import load_processors
    from lmm_r1_ascend.envs.registry import load_env_file

    if env_cfg.file:  # every process that plays the env imports the user's file (RUNS ITS CODE) itself
        load_env_file(env_cfg.file)
    tokenizer, image_processor = load_processors(model_path)
    limits = MultiTurnLimits(env_cfg.max_turns, env_cfg.max_images, env_cfg.max_image_pixels,
                             env_cfg.max_response_tokens, env_cfg.timeout_s)
    template = TurnTemplate(tokenizer, image_processor, data_cfg.min_pixels, data_cfg.max_pixels)
    vision = [template.image_token_id, tokenizer.convert_tokens_to_ids("<|video_pad|>")]
    vision = [t for t in vision if t is not None and t != tokenizer.unk_token_id]
    rollout = MultiTurnRollout(engine.generate, guarded_env_factory(env_cfg.name, dict(env_cfg.kwargs), limits),
                               template, limits, vision_ids=vision)
    return MultiTurnEngine(engine, rollout)
