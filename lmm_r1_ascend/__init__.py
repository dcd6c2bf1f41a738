"""lmm-r1-ascend: hardware-portable two-stage rule-based RL for multimodal reasoning."""
__version__ = "0.1.0"
