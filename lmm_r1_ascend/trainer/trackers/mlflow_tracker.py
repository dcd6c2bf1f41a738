"""MLflow: one run per training run, in the experiment trainer.project.

The store is MLFLOW_TRACKING_URI when set (a server, or any store URI), else a SQLite store
in <output_dir>/mlflow.db with artifacts in <output_dir>/mlartifacts/ (MLflow 3.x keeps its
file store in maintenance mode and refuses it without MLFLOW_ALLOW_FILE_STORE=true). MLflow
metric names may not hold '@': `eval/all/pass@8` is logged as `eval/all/pass_at_8`. The config
goes in once as params (`trainer.max_steps`, ...); a resumed run reopens the same run_id.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

from lmm_r1_ascend.trainer.trackers import RunInfo, Tracker, flatten

OFFLINE_HINT = "unset MLFLOW_TRACKING_URI to log to a local SQLite store in output_dir"
PARAM_VALUE_LIMIT = 6000  # MLflow's longest param value
BATCH = 100  # MLflow's most params (and a safe number of metrics) per log_batch call


def metric_name(key: str) -> str:
    """A metrics.jsonl key as MLflow accepts it: '@' -> '_at_', any other character outside
    MLflow's set (alphanumerics, _ - . space : /) -> '_'. MLflow also refuses a name that is
    not its own normalised path (an empty, '.' or '..' segment) or that starts with '..'
    (`mlflow.utils.validation.path_not_unique`): such a segment becomes underscores, and a
    leading '..' becomes '_.'."""
    text = re.sub(r"[^\w\-. :/]", "_", key.replace("@", "_at_"))
    segments = [part if part.strip(".") else "_" * max(len(part), 1) for part in text.split("/")]
    text = "/".join(segments)
    return "_" + text[1:] if text.startswith("..") else text


def _param(value: Any) -> str:
    text = str(value)
    return text if len(text) <= PARAM_VALUE_LIMIT else text[:PARAM_VALUE_LIMIT - 3] + "..."


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, info: RunInfo):
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{info.out.resolve() / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri)
        if info.run_id:
            self.run_id = info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(info.project)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            local = None if os.environ.get("MLFLOW_TRACKING_URI") else (info.out.resolve() / "mlartifacts").as_uri()
            experiment_id = self.client.create_experiment(info.project, artifact_location=local)
        run = self.client.create_run(experiment_id, run_name=info.name, tags={t: "" for t in info.tags})
        self.run_id = run.info.run_id
        params = [Param(k, _param(v)) for k, v in flatten(info.config).items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + BATCH])
        self.client.log_batch(self.run_id, tags=[RunTag("project", info.project)])

    def log(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(metric_name(k), float(v), now, step) for k, v in scalars.items()]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + BATCH])

    def upload(self, paths: Sequence[Path]) -> None:
        for path in paths:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            else:
                self.client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def open_run(info: RunInfo) -> Tracker:
    return MlflowTracker(info)
