"""Assemble a run from its config: data and processors, rewards, and handles to the workers
(the training cluster and the rollout client). The models themselves are built inside the
ranks by workers/builders.py.

Every user-caused problem here (missing data, a model directory that does not exist)
raises SetupError with one line saying what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lmm_r1_ascend.backends import Backend
from lmm_r1_ascend.config import TrainConfig
from lmm_r1_ascend.config.errors import SetupError
from lmm_r1_ascend.distributed.cluster import TrainingCluster, start_cluster
from lmm_r1_ascend.distributed.rollout_client import RolloutClient
from lmm_r1_ascend.rewards.registry import RewardRouter
from lmm_r1_ascend.rewards.scoring import Scored, reward_metrics, score_samples
from lmm_r1_ascend.rollout.base import RolloutSample
from lmm_r1_ascend.workers.builders import resolve_actor_path, total_updates

__all__ = ["Components", "Scored", "SetupError", "build_components", "prepare_data", "reward_metrics"]

MATH_PROMPT_ALIASES = ("math",)


@dataclass
class Components:
    """What the controller holds: data, processors, rewards, and handles to the workers
    (a TrainingCluster of ranks and a RolloutClient), never the models themselves."""

    cfg: TrainConfig
    backend: Backend
    tokenizer: Any
    image_processor: Any
    dataset: Any
    cluster: TrainingCluster
    rollout: RolloutClient
    reward: RewardRouter

    def score_samples(self, samples: list[RolloutSample]) -> Scored:
        """The reward router's verdict on each sample, without metrics (rewards/scoring.py)."""
        return score_samples(samples, self.reward, self.tokenizer)

    def export_hf(self, path: Path) -> Path:
        """The actor in Hugging Face format (+ tokenizer, image processor, critic next to it if any)."""
        self.cluster.export_hf(path)
        self.tokenizer.save_pretrained(path)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(path)
        return path

    def close(self) -> None:
        for part in (self.reward, self.rollout, self.cluster):
            close = getattr(part, "close", None)
            if close is not None:
                close()


def reward_router(cfg: TrainConfig) -> RewardRouter:
    """The reward router cfg.reward describes (training and evaluation score alike)."""
    math_opts = {"format_weight": cfg.reward.format_weight, "use_format": cfg.reward.use_format,
                 "timeout_s": cfg.reward.timeout_s, "workers": cfg.reward.workers}
    return RewardRouter(cfg.reward.default, routes=cfg.reward.routes,
                        options={"math": math_opts, "custom": {"on_error": cfg.reward.on_error},
                                 "http": {"on_error": cfg.reward.on_error}})


def prepare_data(cfg: TrainConfig, *, shuffle: bool | None = None) -> tuple[str, Any, Any, Any]:
    """Check the data and model paths; return (actor path, tokenizer, image processor, PromptDataset)."""
    from lmm_r1_ascend.data import load_processors
    from lmm_r1_ascend.models.loading import resolve_model_path

    if not cfg.data.prompt_data:
        raise SetupError("data.prompt_data is empty: pass data.prompt_data=PATH.jsonl (or a list of paths)")
    for path in cfg.data.prompt_data:
        if not Path(path).exists():
            raise SetupError(f"data file not found: {path} (data.prompt_data)")
    actor_path = resolve_actor_path(cfg)
    if not Path(actor_path).exists() and not actor_path.startswith("tiny-"):
        raise SetupError(f"model not found: '{actor_path}' is not a local directory (hub downloads are not "
                         "attempted: download it first and pass model.pretrain=/path/to/model)")
    actor_path = str(resolve_model_path(actor_path))
    tokenizer, image_processor = load_processors(actor_path)
    dataset = prompt_dataset(cfg, cfg.data.prompt_data, tokenizer, image_processor,
                             shuffle=cfg.data.shuffle if shuffle is None else shuffle)
    return actor_path, tokenizer, image_processor, dataset


def prompt_dataset(cfg: TrainConfig, files: list[str], tokenizer: Any, image_processor: Any, *, shuffle: bool):
    """A PromptDataset of `files` with cfg.data's templating, image and bad-row settings."""
    from lmm_r1_ascend.data import MATH_SYSTEM_PROMPT, PromptDataset

    for path in files:
        if not Path(path).exists():
            raise SetupError(f"data file not found: {path}")
    system_prompt = MATH_SYSTEM_PROMPT if cfg.data.system_prompt in MATH_PROMPT_ALIASES else cfg.data.system_prompt
    return PromptDataset(files, tokenizer, image_processor, loader=cfg.data.loader,
                         system_prompt=system_prompt, min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels,
                         max_prompt_len=cfg.data.max_prompt_len, on_bad_line=cfg.data.on_bad_line, seed=cfg.seed,
                         shuffle=shuffle, response_key=cfg.data.response_key if cfg.stage == "sft" else None)


def build_components(cfg: TrainConfig, backend: Backend, *, log: Callable[[str], None] = print) -> Components:
    # what was built is printed once by the CLI's run header (trainer/console.py), not here
    actor_path, tokenizer, image_processor, dataset = prepare_data(cfg)
    cluster, rollout = start_cluster(cfg, backend, actor_path, total_updates(cfg, len(dataset)), log=log)
    return Components(cfg, backend, tokenizer, image_processor, dataset, cluster, rollout, reward_router(cfg))
