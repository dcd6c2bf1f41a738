"""Training engines behind one interface (engines/base.py): `torch` (single process) and
`deepspeed` (ZeRO 0-3 under data parallelism; deepspeed is imported only when one is built)."""
from lmm_r1_ascend.engines.base import TrainingEngine
from lmm_r1_ascend.engines.deepspeed_engine import DeepSpeedEngine, deepspeed_config, disable_shm_comm_build
from lmm_r1_ascend.engines.torch_engine import TorchEngine, build_optimizer

__all__ = ["DeepSpeedEngine", "TorchEngine", "TrainingEngine", "build_optimizer", "deepspeed_config",
           "disable_shm_comm_build"]
