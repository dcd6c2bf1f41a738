"""Run fingerprints: does a checkpoint in output_dir belong to the run being started?

A checkpoint stores `run_fingerprint(cfg, model_info(cfg))` in its state.pt. On resume the
trainer compares it with the current run's (`compare_fingerprints`) and refuses, in one line,
to load weights or data positions that belong to another run (docs/resume.md).

The fingerprint holds what fixes tensor shapes or the data order:
  model.actor (the configured actor: model.pretrain, or model.init_from for stage mgt) and
  model.actor_config.* (model_type, hidden_size, num_hidden_layers, num_attention_heads,
  num_key_value_heads, intermediate_size, vocab_size of its config.json), tokenizer.vocab_size
  and tokenizer.sha256 (of tokenizer.json, when it is at most 64 MiB), stage, every
  algorithm.* key, data.prompt_data, data.shuffle, data.max_prompt_len, seed,
  rollout.rollout_batch_size, trainer.train_batch_size, trainer.max_epochs,
  distributed.train_engine, distributed.zero_stage,
  model.critic_pretrain, model.freeze_prefixes, model.dtype.

ALLOWED: keys that may change between the first run and a resume. They are not part of the
fingerprint (and compare_fingerprints ignores them should an older fingerprint hold them):
trainer.max_steps (the LR schedule's length follows it), trainer.num_episodes,
trainer.save_steps, trainer.keep_checkpoints, trainer.save_hf, trainer.tensorboard,
trainer.resume, trainer.eval_steps, trainer.eval_before_train, trainer.best_metric, eval.*,
data.eval_data, device, output_dir, recipe, distributed.world_size (ZeRO 1-3 checkpoints are
re-partitioned for another world size; ZeRO-0 refuses it at resume: docs/resume.md), and
throughput-only settings not in the list above (micro-batch sizes, rollout engine placement, Ray
addresses, timeouts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

ALLOWED = frozenset({
    "trainer.max_steps", "trainer.num_episodes", "trainer.save_steps", "trainer.keep_checkpoints",
    "trainer.save_hf", "trainer.tensorboard", "trainer.resume", "trainer.eval_steps",
    "trainer.eval_before_train", "trainer.best_metric", "eval.*", "data.eval_data", "device",
    "output_dir", "recipe", "distributed.world_size",
})

MODEL_SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "intermediate_size", "vocab_size")
RUN_KEYS = ("stage", "seed", "data.prompt_data", "data.shuffle", "data.max_prompt_len",
            "rollout.rollout_batch_size", "trainer.train_batch_size", "trainer.max_epochs",
            "distributed.train_engine", "distributed.zero_stage",
            "model.critic_pretrain", "model.freeze_prefixes", "model.dtype")
_HASH_LIMIT = 64 << 20


def is_allowed(key: str) -> bool:
    return key in ALLOWED or any(a.endswith(".*") and key.startswith(a[:-1]) for a in ALLOWED)


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _plain(value: Any) -> Any:
    """JSON-like values, so a fingerprint compares equal after a torch.save round trip."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def model_info(cfg) -> dict[str, Any]:
    """The actor's identity as the run resolves it: its configured name, its local directory,
    the shape fields of its config.json and its tokenizer's size and hash."""
    from lmm_r1_ascend.models.loading import resolve_model_path
    from lmm_r1_ascend.workers.builders import resolve_actor_path

    name = cfg.model.init_from if cfg.stage == "mgt" and cfg.model.init_from not in (None, "pretrain") \
        else cfg.model.pretrain
    path = Path(resolve_model_path(resolve_actor_path(cfg)))
    info: dict[str, Any] = {"name": name, "path": str(path)}
    config = json.loads((path / "config.json").read_text())
    text = config.get("text_config") or config  # vision-language configs keep the LM's fields there
    info["config"] = {k: text.get(k, config.get(k)) for k in MODEL_SHAPE_KEYS}
    tok = path / "tokenizer.json"
    if tok.is_file() and tok.stat().st_size <= _HASH_LIMIT:
        raw = tok.read_bytes()
        spec = json.loads(raw)
        info["tokenizer_vocab_size"] = len(spec.get("model", {}).get("vocab", {})) + len(spec.get("added_tokens", []))
        info["tokenizer_sha256"] = hashlib.sha256(raw).hexdigest()
    return info


def run_fingerprint(cfg, info: dict[str, Any]) -> dict[str, Any]:
    """A flat {dotted key: value} of everything a checkpoint's tensors and data position depend on."""
    fp: dict[str, Any] = {"model.actor": info["name"]}
    fp.update({f"model.actor_config.{k}": v for k, v in info.get("config", {}).items()})
    for key in ("tokenizer_vocab_size", "tokenizer_sha256"):
        if key in info:
            fp[key.replace("_", ".", 1)] = info[key]
    for key in RUN_KEYS:
        fp[key] = _plain(_get(cfg, key))
    fp["data.prompt_data"] = [str(Path(p).resolve()) if Path(p).exists() else p for p in cfg.data.prompt_data]
    for f in dataclasses.fields(cfg.algorithm):
        fp[f"algorithm.{f.name}"] = _plain(getattr(cfg.algorithm, f.name))
    return fp


def compare_fingerprints(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ (or that only one side has), ALLOWED keys excepted, sorted."""
    keys = set(saved) | set(current)
    return sorted(k for k in keys if not is_allowed(k) and _plain(saved.get(k)) != _plain(current.get(k)))


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:28] + "..." + text[-28:]


def mismatch_message(path, saved: dict[str, Any], current: dict[str, Any], keys: list[str]) -> str:
    """One line naming each differing key with its saved and current value."""
    parts = ", ".join(f"{k} (saved {_short(saved.get(k))}, now {_short(current.get(k))})" for k in keys)
    return (f"checkpoint {path} belongs to another run: {parts}; use a new output_dir, "
            "or trainer.resume=false to start over")
