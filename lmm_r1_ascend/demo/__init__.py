"""The built-in CPU demo: generated arithmetic problems and a warm-up model.

``arithmetic`` generates the problems (LMM-R1 jsonl rows, images); the starting policy of the
FRE demo ships in ``assets/fre-warmup`` (built by scripts/build_demo_model.py).
"""

from __future__ import annotations

from pathlib import Path

WARMUP_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "fre-warmup"


def warmup_model_path() -> Path:
    """The shipped warm-up checkpoint's folder (a Hugging Face checkpoint transformers loads).

    Raises FileNotFoundError, saying how to rebuild it, when the folder is incomplete.
    """
    if not (WARMUP_MODEL_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the demo warm-up model is missing from {WARMUP_MODEL_DIR}; "
            "rebuild it with: python scripts/build_demo_model.py"
        )
    return WARMUP_MODEL_DIR
