"""Built-in demo data: `data.prompt_data` entries `demo:arithmetic` / `demo:arithmetic-images`
are generated into <output_dir>/data on first use and replaced by the written jsonl paths."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lmm_r1_ascend.config import TrainConfig

DEMO_SOURCES = {"demo:arithmetic": "train", "demo:arithmetic-images": "train_images"}


def _materialise(entries: list[str], out_dir: Path, names: dict[str, str]) -> list[str]:
    if not any(e in names for e in entries):
        return entries
    from lmm_r1_ascend.demo.arithmetic import write_demo_dataset

    images = any(e.endswith("-images") for e in entries)
    marker = out_dir / (".complete_images" if images else ".complete")
    if not marker.exists():
        write_demo_dataset(out_dir, images=images)
        marker.touch()
    return [str(out_dir / f"{names[e]}.jsonl") if e in names else e for e in entries]


def prepare_demo_data(cfg: TrainConfig) -> TrainConfig:
    """Return cfg with demo data entries replaced by generated files (other entries untouched)."""
    out = Path(cfg.output_dir) / "data"
    data = dataclasses.replace(cfg.data, prompt_data=_materialise(list(cfg.data.prompt_data), out, DEMO_SOURCES))
    return dataclasses.replace(cfg, data=data)
