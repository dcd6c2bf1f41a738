"""Training engines behind one interface: `torch` (single process) now, `deepspeed` (ZeRO) later."""
from lmm_r1_ascend.engines.torch_engine import TorchEngine

__all__ = ["TorchEngine"]
