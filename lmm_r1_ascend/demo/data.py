"""Built-in demo data: `data.prompt_data` entries `demo:arithmetic` / `demo:arithmetic-images`
are generated into <output_dir>/data on first use and replaced by the written jsonl paths."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lmm_r1_ascend.config import TrainConfig

DEMO_SOURCES = {"demo:arithmetic": "train", "demo:arithmetic-images": "train_images"}
# the held-out split: problems the demo never trains on (demo/arithmetic.py splits by a hash)
DEMO_EVAL_SOURCES = {"demo:arithmetic-eval": "eval", "demo:arithmetic-images-eval": "eval_images"}


def _materialise(entries: list[str], out_dir: Path, names: dict[str, str]) -> list[str]:
    if not any(e in names for e in entries):
        return entries
    from lmm_r1_ascend.demo.arithmetic import write_demo_dataset

    images = any("-images" in e for e in entries if e in names)
    marker = out_dir / (".complete_images" if images else ".complete")
    if not marker.exists():
        write_demo_dataset(out_dir, images=images)
        marker.touch()
    return [str(out_dir / f"{names[e]}.jsonl") if e in names else e for e in entries]


def materialise_eval(entries: list[str], out_dir: Path) -> list[str]:
    """Eval data entries with `demo:arithmetic-eval` (/ `-images-eval`) replaced by the written
    held-out split under out_dir (other entries untouched)."""
    return _materialise(entries, Path(out_dir), DEMO_EVAL_SOURCES)


def prepare_demo_data(cfg: TrainConfig) -> TrainConfig:
    """Return cfg with demo data entries (training and eval) replaced by generated files (other
    entries untouched)."""
    out = Path(cfg.output_dir) / "data"
    data = dataclasses.replace(cfg.data, prompt_data=_materialise(list(cfg.data.prompt_data), out, DEMO_SOURCES),
                               eval_data=materialise_eval(list(cfg.data.eval_data), out))
    return dataclasses.replace(cfg, data=data)
