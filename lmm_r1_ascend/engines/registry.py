"""Training engines by name (distributed.train_engine): the one place that maps the name to a class.

Every engine class offers the same class-level facts, read without building an engine:
``name``, ``data_parallel``, ``require()``, ``describe(dist)``, ``shards_weights(dist)``,
``resumes_on_any_world_size(dist)``, ``checkpoint_bytes_per_param(dtype_bytes)``, the planner's
``model_states(...)``, ``moments_share(b)`` and ``library_estimate(...)``, and
``from_config(module, optim, dist, lr=, total_steps=)``.
Importing this module imports neither deepspeed nor transformers.
"""

from __future__ import annotations

from lmm_r1_ascend.engines.deepspeed_engine import DeepSpeedEngine
from lmm_r1_ascend.engines.torch_engine import TorchEngine

TRAIN_ENGINES: dict[str, type] = {cls.name: cls for cls in (TorchEngine, DeepSpeedEngine)}
DATA_PARALLEL_ENGINE = DeepSpeedEngine.name  # what a run of several ranks trains with


def train_engine_class(name: str) -> type:
    """The engine class of distributed.train_engine `name` (the loader has checked the name)."""
    try:
        return TRAIN_ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown train engine {name!r}: one of {', '.join(TRAIN_ENGINES)}") from None
