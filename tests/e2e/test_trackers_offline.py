"""trainer.loggers end to end, offline: a 2-step tiny run (interrupted after step 1 and resumed)
logs to TensorBoard, wandb (WANDB_MODE=offline), SwanLab (SWANLAB_MODE=offline) and MLflow (a
local SQLite store), and each tracker's own local files are read back with that tracker's
own reader: every number of every metrics.jsonl row, the run's name / project / tags, the
full config, one tracker run across the resume, and the artifacts asked for."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from lmm_r1_ascend.config import load_config
from lmm_r1_ascend.demo.data import prepare_demo_data
from lmm_r1_ascend.trainer.ppo import PPOTrainer

TINY = [
    "stage=fre", "device=cpu", "model.pretrain=tiny-qwen2", "data.prompt_data=[demo:arithmetic]",
    "data.max_prompt_len=512", "rollout.rollout_batch_size=2", "rollout.max_new_tokens=8", "reward.workers=1",
    "algorithm.advantage_estimator=rloo", "algorithm.n_samples_per_prompt=2", "trainer.train_batch_size=4",
    "trainer.max_steps=2", "trainer.save_steps=1", "trainer.max_tokens_per_micro_batch=256",
    "data.eval_data=[demo:arithmetic-eval]", "eval.limit=2", "trainer.eval_before_train=true", "trainer.eval_steps=2",
    "trainer.loggers=[tensorboard,wandb,swanlab,mlflow]", "trainer.project=proj-x", "trainer.run_name=run-y",
    "trainer.tags=[t1,t2]", "trainer.log_artifacts=true",
]


def _wandb_records(path: Path):
    """The protobuf records of a wandb transaction log (.wandb): a 7-byte header (':W&B', magic,
    version), then LevelDB log blocks of 32 KiB whose records carry a 7-byte header (crc32,
    length, type: 1 full, 2 first, 3 middle, 4 last); wandb ships no Python reader since 0.2x."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, pos, block, buf = path.read_bytes(), 7, 32768, b""
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        buf += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record
            buf = b""


def read_wandb(out: Path) -> dict:
    runs = sorted((out / "wandb").glob("offline-run-*"))
    got = {"ids": set(), "scalars": {}, "config": {}, "artifacts": 0}
    for run in runs:
        for rec in _wandb_records(next(run.glob("run-*.wandb"))):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                got["ids"].add(rec.run.run_id)
                got.update(name=rec.run.display_name, project=rec.run.project, tags=list(rec.run.tags))
                got["config"].update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                step = items.pop("_step")
                got["scalars"].update({(step, k): v for k, v in items.items() if not k.startswith("_")})
            elif kind == "artifact":
                got["artifacts"] += 1
    return got


def read_swanlab(out: Path) -> dict:
    import yaml
    from swanlab.proto.swanlab.record.v1 import record_pb2
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    got = {"ids": set(), "scalars": {}, "saved": set()}
    for run in sorted((out / "swanlog").glob("run-*")):
        reader = DataStoreReader()
        reader.open(next(run.glob("run-*.swanlab")))
        for data in reader:
            rec = record_pb2.Record()
            rec.ParseFromString(data)
            kind = rec.WhichOneof("record_type")
            if kind == "start":
                got["ids"].add(rec.start.id)
                got.update(name=rec.start.name, project=rec.start.project, tags=list(rec.start.tags))
            elif kind == "scalar":
                got["scalars"][(rec.scalar.step, rec.scalar.key)] = rec.scalar.value.number
            elif kind == "save":
                got["saved"].add(Path(rec.save.source_path).name)
        reader.close()
        if (run / "files" / "config.yaml").exists():
            got["config"] = yaml.safe_load((run / "files" / "config.yaml").read_text())
    return got


def read_mlflow(out: Path) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("proj-x")
    runs = client.search_runs([experiment.experiment_id])
    got = {"ids": {r.info.run_id for r in runs}, "scalars": {}}
    run = runs[0]
    got.update(name=run.info.run_name, params=run.data.params, tags=run.data.tags)
    for key in run.data.metrics:
        for m in client.get_metric_history(run.info.run_id, key):
            got["scalars"][(m.step, key)] = m.value
    got["artifacts"] = {a.path for a in client.list_artifacts(run.info.run_id)}
    return got


def read_tensorboard(out: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = {(e.step, tag): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}
    return {"scalars": scalars, "texts": acc.Tags()["tensors"]}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    for var, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "SWANLAB_MODE": "offline",
                       "WANDB_CONFIG_DIR": tmp_path / "home/wandb", "WANDB_CACHE_DIR": tmp_path / "home/wandb-cache",
                       "WANDB_DATA_DIR": tmp_path / "home/wandb-data", "SWANLAB_ROOT": tmp_path / "home/swanlab"}.items():
        monkeypatch.setenv(var, str(value))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for lib in ("wandb", "swanlab", "mlflow"):
        pytest.importorskip(lib, reason=f"pip install 'lmm-r1-ascend[{lib}]' (scripts/setup_cpu.sh installs it)")
    import wandb

    wandb.teardown()  # wandb keeps the settings of its first set-up in a process: start from these variables
    yield tmp_path / "run"
    wandb.teardown()


def test_every_tracker_holds_the_runs_metrics_and_config_across_a_resume(offline):
    out = offline
    cfg = prepare_demo_data(load_config(overrides=[*TINY, f"output_dir={out}"]))
    PPOTrainer(cfg, log=lambda s: None).fit(progress=False, stop_after=1)  # step 1, a checkpoint, the trackers closed
    first_ids = json.loads((out / "trackers.json").read_text())
    PPOTrainer(cfg, log=lambda s: None).fit(progress=False)  # resumes: step 2, the final eval, artifacts
    assert json.loads((out / "trackers.json").read_text()) == first_ids  # the same tracker runs continued
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    want = {(r["step"], k): v for r in rows for k, v in r.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert any(k.startswith("eval/") for _, k in want) and any(k.startswith("timing/") for _, k in want)
    assert any(k.startswith("throughput/") for _, k in want) and (2, "loss/policy") in want

    from lmm_r1_ascend.trainer.trackers.mlflow_tracker import metric_name

    wb, sl, ml, tb = read_wandb(out), read_swanlab(out), read_mlflow(out), read_tensorboard(out)
    # JSON carries doubles exactly (wandb, MLflow); SwanLab's protobuf number is a double; TensorBoard
    # stores float32: relative 2^-24 ~ 6e-8, so 1e-6 covers it
    for name, got, rename in (("wandb", wb, str), ("swanlab", sl, str), ("mlflow", ml, metric_name),
                              ("tensorboard", tb, str)):
        expected = {(s, rename(k)): v for (s, k), v in want.items()}
        assert expected.keys() <= got["scalars"].keys(), (name, sorted(expected.keys() - got["scalars"].keys())[:5])
        for key, value in expected.items():
            assert got["scalars"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (name, key)
    assert metric_name("eval/all/pass@2") == "eval/all/pass_at_2" and (0, "eval/all/pass_at_1") in ml["scalars"]

    for got in (wb, sl):
        assert got["ids"] == {first_ids["wandb" if got is wb else "swanlab"]}  # two local runs, one run id
        assert (got["name"], got["project"], got["tags"]) == ("run-y", "proj-x", ["t1", "t2"])
    assert wb["config"]["trainer"]["loggers"] == ["tensorboard", "wandb", "swanlab", "mlflow"]
    assert wb["config"]["model"]["pretrain"] == "tiny-qwen2" and wb["config"]["seed"] == cfg.seed
    assert sl["config"]["trainer"]["value"]["run_name"] == "run-y"
    assert ml["ids"] == {first_ids["mlflow"]} and ml["name"] == "run-y"
    assert {"t1", "t2"} <= ml["tags"].keys() and ml["params"]["trainer.max_steps"] == "2"
    assert ml["params"]["model.pretrain"] == "tiny-qwen2"
    assert {"config/text_summary", "run/text_summary"} <= set(tb["texts"])
    # trainer.log_artifacts=true: config.yaml, metrics.jsonl, eval/ and hf/ were handed to each tracker
    assert {"config.yaml", "metrics.jsonl", "eval", "hf"} <= ml["artifacts"]
    assert wb["artifacts"] == 1 and {"config.yaml", "metrics.jsonl", "config.json"} <= sl["saved"]


def test_no_artifacts_unless_asked(offline):
    out = offline
    cfg = prepare_demo_data(load_config(overrides=[
        *TINY, f"output_dir={out}", "trainer.max_steps=1", "trainer.eval_before_train=false", "trainer.eval_steps=0",
        "trainer.loggers=[wandb,mlflow]", "trainer.log_artifacts=false", "trainer.save_hf=false"]))
    PPOTrainer(cfg, log=lambda s: None).fit(progress=False)
    assert read_mlflow(out)["artifacts"] == set() and read_wandb(out)["artifacts"] == 0
    assert not (out / "tensorboard").exists() and not (out / "swanlog").exists()
