"""`--dry-run`: check the config, the device, the model paths, the reward functions, the trackers' libraries and every
data row, then exit. The real run makes the same reward check at start-up (check_rewards), so a
broken custom reward file fails in one line before any model loads, not at the first scoring."""

from __future__ import annotations

from lmm_r1_ascend.backends import get_backend
from lmm_r1_ascend.config import TrainConfig
from lmm_r1_ascend.config.errors import SetupError
from lmm_r1_ascend.trainer.setup import prepare_data
from lmm_r1_ascend.trainer.trackers import check_loggers


def reward_specs(cfg: TrainConfig) -> list[tuple[str, str]]:
    """(config key, spec) of every reward the run would build: reward.default and each route."""
    return [("reward.default", cfg.reward.default),
            *((f"reward.routes[{pattern!r}]", spec) for pattern, spec in (cfg.reward.routes or {}).items())]


def check_rewards(cfg: TrainConfig, probe_http: bool = False) -> list[str]:
    """Import every custom reward file and check it exposes reward_func; probe_http: also POST an
    empty batch to each HTTP endpoint (it must answer). Returns the specs checked; SetupError (one
    line naming the key, the file and the cause) on the first that fails."""
    from lmm_r1_ascend.rewards.custom import load_reward_file, probe_endpoint

    checked = []
    for key, spec in reward_specs(cfg):
        if not isinstance(spec, str):
            continue
        try:
            if spec.startswith("custom:") or spec.endswith(".py"):
                load_reward_file(spec.removeprefix("custom:"))
            elif spec.startswith(("http://", "https://")) and probe_http:
                probe_endpoint(spec, timeout_s=cfg.reward.timeout_s)
            else:
                continue
        except ValueError as err:
            raise SetupError(f"{key}: {err}") from None
        checked.append(spec)
    return checked


def dry_run(cfg: TrainConfig, log=print, probe_http: bool = False) -> dict:
    """Raises SetupError / DataError / BackendUnavailable on the first problem; returns a summary."""
    backend = get_backend(cfg.device)
    rewards = check_rewards(cfg, probe_http=probe_http)
    trackers = check_loggers(cfg.trainer)  # a missing tracker library fails here, as at start-up
    actor, _, _, dataset = prepare_data(cfg, shuffle=False)
    for _ in dataset:  # decode every row and image now, so a bad one fails here and not at step 300
        pass
    summary = {"device": backend.name, "actor": actor, "prompts": len(dataset), "rewards": len(rewards),
               "trackers": trackers, **dataset.counts}
    log(f"dry run ok: {summary}")
    return summary
