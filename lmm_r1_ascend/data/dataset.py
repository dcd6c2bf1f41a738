"""``PromptDataset``: prompt rows indexed once, shuffled per epoch from a seed, resumable.

Construction reads every row, checks it, templates and tokenises it and reads image sizes
from file headers (no pixel decoding), so over-length prompts are filtered, and bad rows
raised or skipped, before training starts. Images are decoded when an item is taken.

    ds = PromptDataset("train.jsonl", tokenizer, image_processor, max_prompt_len=4096, seed=42)
    for item in ds:            # one epoch, in the seeded order of ds.epoch
        ...
    ckpt = ds.state_dict()     # {"epoch", "index", ...}: the next item to hand out
    ds2.load_state_dict(ckpt)  # ds2 continues exactly where ds stopped
    metrics.update(ds.counts)  # {"data/rows": ..., "data/kept": ..., ...}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from lmm_r1_ascend.data.errors import DataError
from lmm_r1_ascend.data.readers import FieldMap, open_rows, parse_row
from lmm_r1_ascend.data.templating import PromptPlan, PromptTemplate
from lmm_r1_ascend.data.types import PromptItem

logger = logging.getLogger(__name__)
BAD_LINE_POLICIES = ("raise", "skip")


class PromptDataset:
    """Templated prompts from one or more data sources (see ``readers`` for formats).

    on_bad_line: "raise" (a bad row stops with a DataError naming file:line) or "skip" (the
        row is dropped and counted under ``counts``; its message is kept in ``bad_rows``).
    max_prompt_len: prompts longer than this many tokens (after image-pad expansion) are
        dropped and counted; None keeps all.
    seed, shuffle: epoch e visits every prompt once, in the order of
        ``numpy.random.default_rng([seed, e]).permutation`` (storage order when not shuffling).
    image_root: folder for relative image paths; default: each data file's folder.
    response_key: when set (the SFT stage), the field every row must carry its reference
        response in, a non-empty string; a row without one is a bad row (reason "no_response").
    """

    def __init__(self, path: str | Path | Sequence[str | Path], tokenizer: Any, image_processor: Any | None = None,
                 *, fields: FieldMap | None = None, loader: str = "auto", split: str = "train",
                 image_root: str | Path | None = None, system_prompt: str | None = None,
                 min_pixels: int | None = None, max_pixels: int | None = None,
                 max_prompt_len: int | None = None, on_bad_line: str = "raise", seed: int = 42,
                 shuffle: bool = True, hf_cache_dir: str | None = None, response_key: str | None = None):
        if on_bad_line not in BAD_LINE_POLICIES:
            raise ValueError(f"on_bad_line must be one of {list(BAD_LINE_POLICIES)}, got {on_bad_line!r}")
        if max_prompt_len is not None and (not isinstance(max_prompt_len, int) or max_prompt_len < 1):
            raise ValueError(f"max_prompt_len must be a positive int or None, got {max_prompt_len!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.template = PromptTemplate(tokenizer, image_processor, system_prompt, min_pixels, max_pixels)
        self.on_bad_line, self.max_prompt_len = on_bad_line, max_prompt_len
        self.seed, self.shuffle = seed, shuffle
        self.response_key = response_key
        self.bad_rows: list[str] = []  # messages of skipped rows
        self.too_long: list[str] = []  # sources of filtered prompts
        self._counts = {"data/rows": 0, "data/kept": 0, "data/skipped_bad": 0, "data/filtered_too_long": 0}
        self._plans: list[PromptPlan] = []
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        if not paths:
            raise ValueError("no data path given")
        for p in paths:
            self._index_source(p, fields or FieldMap(), loader, split, image_root, hf_cache_dir)
        if not self._plans:
            raise DataError(", ".join(str(p) for p in paths), "no_prompts",
                            f"no prompts left in this data: {self._counts['data/rows']} rows read, "
                            f"{self._counts['data/skipped_bad']} bad, {self._counts['data/filtered_too_long']} "
                            f"over max_prompt_len={max_prompt_len}",
                            hint="check the data (the skipped rows' reasons are logged) and max_prompt_len")
        self._epoch, self._index = 0, 0
        logger.info("prompt data: %s", self._counts)

    def _index_source(self, path, fields, loader, split, image_root, hf_cache_dir) -> None:
        base_dir, rows = open_rows(path, loader, split, hf_cache_dir)
        root = Path(image_root).expanduser() if image_root is not None else base_dir
        for source, row in rows:
            self._counts["data/rows"] += 1
            try:
                if isinstance(row, DataError):
                    raise row
                raw = parse_row(row, fields, source)
                self._check_response(raw.meta, source)
                plan = self.template.plan(raw, root)
            except DataError as exc:
                self._bad(exc)
                continue
            if self.max_prompt_len is not None and plan.length > self.max_prompt_len:
                self._counts["data/filtered_too_long"] += 1
                self.too_long.append(source)
                continue
            self._plans.append(plan)
            self._counts["data/kept"] += 1

    def _check_response(self, meta: dict[str, Any], source: str) -> None:
        key = self.response_key
        if key is None:
            return
        value = meta.get(key)
        if not isinstance(value, str) or not value.strip():
            got = "no such field" if value is None else f"a {type(value).__name__}" if not isinstance(value, str) \
                else "an empty string"
            raise DataError(source, "no_response", f"field '{key}' must hold the reference response (a non-empty "
                            f"string) for SFT, got {got}", hint="add it, pick another field with data.response_key, "
                            "or drop such rows with data.on_bad_line=skip")

    def _bad(self, exc: DataError) -> None:
        if self.on_bad_line == "raise":
            raise exc
        self._counts["data/skipped_bad"] += 1
        key = f"data/skipped_bad/{exc.reason}"
        self._counts[key] = self._counts.get(key, 0) + 1
        self.bad_rows.append(str(exc))
        logger.warning("skipping bad data row: %s", exc)

    @property
    def counts(self) -> dict[str, int]:
        """Row counts for metrics: rows read, kept, skipped as bad (also per reason), too long."""
        return dict(self._counts)

    @property
    def lengths(self) -> list[int]:
        """Prompt lengths in tokens (image pads expanded), in storage order."""
        return [plan.length for plan in self._plans]

    def __len__(self) -> int:
        return len(self._plans)

    def __getitem__(self, i: int) -> PromptItem:
        """Prompt ``i`` in storage order, images decoded (a DataError if one cannot be)."""
        return self.template.materialize(self._plans[i])

    def source(self, i: int) -> str:
        return self._plans[i].raw.source

    # ---- epochs, order and resumption ----
    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def index(self) -> int:
        """How many prompts of the current epoch have been handed out."""
        return self._index

    def epoch_order(self, epoch: int) -> list[int]:
        """Storage indices in the order epoch ``epoch`` visits them (a permutation of range(len))."""
        if not self.shuffle:
            return list(range(len(self)))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self)).tolist()

    def set_epoch(self, epoch: int) -> None:
        self._epoch, self._index = int(epoch), 0

    def __iter__(self) -> Iterator[PromptItem]:
        """The rest of the current epoch; the state advances as each item is handed out, and
        moves to the next epoch at the end. With on_bad_line="skip", an image that fails to
        decode here is skipped and counted too."""
        if self._index >= len(self):
            self.set_epoch(self._epoch + 1)
        order = self.epoch_order(self._epoch)
        while self._index < len(order):
            position = self._index
            try:
                item = self[order[position]]
            except DataError as exc:
                self._bad(exc)
                self._index = position + 1
                continue
            self._index = position + 1
            yield item
        self.set_epoch(self._epoch + 1)

    def state_dict(self) -> dict[str, int | bool]:
        return {"epoch": self._epoch, "index": self._index, "seed": self.seed, "shuffle": self.shuffle,
                "num_items": len(self)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where the saved dataset stopped; the data, seed and shuffle must be the same."""
        mine = self.state_dict()
        for key in ("num_items", "seed", "shuffle"):
            if key in state and state[key] != mine[key]:
                raise DataError("the checkpoint's data position", "state_mismatch",
                                f"saved {key}={state[key]!r}, this dataset has {key}={mine[key]!r}",
                                hint="resume with the same data, filters, seed and shuffle")
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index <= len(self):
            raise ValueError(f"bad data state: epoch={epoch}, index={index} (dataset of {len(self)} prompts)")
        self._epoch, self._index = epoch, index
