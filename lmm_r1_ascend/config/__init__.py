"""Training configuration: dataclasses, YAML recipes, key=value overrides."""
from lmm_r1_ascend.config.loader import ConfigError, list_recipes, load_config, to_dict
from lmm_r1_ascend.config.schema import TrainConfig

__all__ = ["ConfigError", "TrainConfig", "list_recipes", "load_config", "to_dict"]
