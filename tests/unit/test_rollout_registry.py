"""Rollout engines chosen by name from a registry; each builds itself from the run config and
owns its end of the broadcast weight sync (rollout/registry.py, RolloutEngine hooks)."""

from __future__ import annotations

import threading

import pytest
import torch

from lmm_r1_ascend.config import load_config
from lmm_r1_ascend.distributed.net import free_port
from lmm_r1_ascend.kernels.weight_sync import send_buckets
from lmm_r1_ascend.models.tiny import ensure_tiny_model
from lmm_r1_ascend.rollout import registry
from lmm_r1_ascend.rollout.base import EngineRun, RolloutEngine
from lmm_r1_ascend.rollout.hf_engine import HFRolloutEngine
from lmm_r1_ascend.workers.builders import build_rollout_engine


class RecordingEngine(RolloutEngine):
    """Builds from config and remembers what it was given; generates nothing."""

    built: list = []

    def __init__(self, rollout, run, path, device, dtype):
        self.args = (rollout, run, path, device, dtype)

    @classmethod
    def from_config(cls, rollout, run, model_path, device, dtype):
        engine = cls(rollout, run, model_path, device, dtype)
        cls.built.append(engine)
        return engine

    @classmethod
    def devices_per_engine(cls, rollout_cfg) -> int:
        return 3

    def generate(self, prompts, cfg):
        return []

    def update_weights(self, named_tensors, *, meta=None):
        return 0

    def sleep(self):
        pass

    def wake_up(self):
        pass

    def close(self):
        pass


@pytest.fixture
def recording_registered():
    registry.register_engine("recording", f"{__name__}:RecordingEngine")
    yield
    registry._ENGINES.pop("recording", None)
    RecordingEngine.built.clear()


def test_a_registered_engine_is_selectable_from_config(recording_registered):
    cfg = load_config(overrides=["rollout.engine=recording", "data.prompt_data=[x.jsonl]"])
    engine = build_rollout_engine(cfg, "/some/model", torch.device("cpu"), torch.float32)
    assert isinstance(engine, RecordingEngine) and RecordingEngine.built == [engine]
    # the engine gets its rollout section and the run facts it may need, never the whole TrainConfig
    assert engine.args == (cfg.rollout, EngineRun(seed=cfg.seed, device=cfg.device,
                                                  n_samples_per_prompt=cfg.algorithm.n_samples_per_prompt),
                           "/some/model", torch.device("cpu"), torch.float32)
    assert registry.engine_class("recording").devices_per_engine(cfg.rollout) == 3
    # its config-level facts reach the config checks: 3 devices per engine cannot sit in rank 0
    from lmm_r1_ascend.config import ConfigError

    with pytest.raises(ConfigError, match="engine actors of their own"):
        load_config(overrides=["rollout.engine=recording", "distributed.mode=ray", "distributed.rollout_engines=0",
                               "distributed.train_engine=deepspeed"])


def test_registry_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown rollout engine 'sglang'; choose one of \['hf', 'vllm'\]"):
        registry.engine_class("sglang")
    with pytest.raises(ValueError, match="module:Class"):
        registry.register_engine("bad", "no_colon_here")
    with pytest.raises(TypeError, match="RolloutEngine subclass"):
        registry.register_engine("bad", dict)
    with pytest.raises(ValueError, match="non-empty string"):
        registry.register_engine("", HFRolloutEngine)
    registry.register_engine("not_an_engine", "collections:OrderedDict")
    try:
        with pytest.raises(TypeError, match="not a RolloutEngine subclass"):
            registry.engine_class("not_an_engine")
    finally:
        registry._ENGINES.pop("not_an_engine")
    from lmm_r1_ascend.config import ConfigError

    with pytest.raises(ConfigError, match="rollout.engine: must be one of hf, vllm, got 'sglang'"):
        load_config(overrides=["rollout.engine=sglang"])


def test_vllm_config_facts_need_no_vllm_install():
    cls = registry.engine_class("vllm")  # importing the engine module does not import vllm
    cfg = load_config(overrides=["rollout.engine=vllm", "rollout.vllm_tensor_parallel_size=2",
                                 "rollout.vllm_enable_sleep=false"])
    assert cls.devices_per_engine(cfg.rollout) == 2 and not cls.sleeps_between_phases(cfg.rollout)
    assert registry.engine_class("hf").devices_per_engine(cfg.rollout) == 1


@pytest.mark.parametrize("prompts_per_call", [1, 3])
def test_hf_engine_takes_micro_rollout_batch_size_prompts_per_call(tmp_path, prompts_per_call):
    path = ensure_tiny_model("tiny-qwen2", cache_dir=tmp_path)
    cfg = load_config(overrides=[f"rollout.micro_rollout_batch_size={prompts_per_call}",
                                 "algorithm.n_samples_per_prompt=4"])
    engine = build_rollout_engine(cfg, str(path), torch.device("cpu"), torch.float32)
    assert isinstance(engine, HFRolloutEngine) and engine.max_batch_rows == prompts_per_call * 4


def test_hf_engine_receives_a_broadcast_through_its_own_hooks(tmp_path):
    path = ensure_tiny_model("tiny-qwen2", cache_dir=tmp_path)
    engine = HFRolloutEngine(str(path))
    new = [(n, torch.randn_like(p)) for n, p in engine.model.named_parameters()]
    meta = [(n, tuple(t.shape), t.dtype) for n, t in new]
    port, out, errors = free_port(), {}, []

    def sender():
        try:
            group = HFRolloutEngine.sender_group("127.0.0.1", port, 2, "gloo", 60)
            out["sent"] = send_buckets(group, meta, iter(new), bucket_bytes=4096)
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=sender)
    thread.start()
    with pytest.raises(RuntimeError, match="join_weight_sync first"):
        engine.receive_weights(meta, 4096)
    engine.join_weight_sync("127.0.0.1", port, 1, 2, "gloo", 60)
    out["received"] = engine.receive_weights(meta, 4096)
    thread.join(timeout=120)
    assert not errors and out["sent"] == out["received"] == len(new)
    for (name, want), (_, got) in zip(new, engine.model.named_parameters()):
        assert torch.equal(got, want), name  # bytes travel: exact
