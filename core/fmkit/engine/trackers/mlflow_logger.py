"""MLflow (``trainer.loggers: [{name: mlflow, tracking_uri: ..., experiment: ...}]``): one MLflow run
per fmkit run, through :class:`mlflow.tracking.MlflowClient` (no process-wide active run)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fmkit.engine.logger_contract import LoggerRun
from fmkit.engine.trackers import require
from fmkit.errors import TrackerError

#: MLflow's limits on one logged parameter's value and on a batch's count
_PARAM_CHARS, _BATCH = 500, 100


class MlflowLogger:
    """Scalars as metrics, the resolved recipe as parameters (flattened: ``trainer.lr``) and, with the
    provenance, as JSON artefacts (``fmkit/``), and sample files as artefacts (``samples/<writer>``). A
    resume continues the MLflow run whose id ``RUN/trackers.json`` keeps.

    Args:
        tracking_uri: where runs are kept (``file:./mlruns``, ``http://host:5000``, ``sqlite:///mlflow.db``);
            None: ``MLFLOW_TRACKING_URI``, else a file store in ``RUN/mlruns``.
        experiment: the experiment's name (made when missing; default: the recipe's name).
        run_name, tags: the run's name (default: the run folder's name) and tags.
    """

    name = "mlflow"

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None, run_name: str | None = None,
                 tags: Mapping[str, str] | None = None) -> None:
        require("mlflow", "mlflow", "mlflow-skinny")
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.client: Any = None
        self.run_id: str | None = None

    def _uri(self, run: LoggerRun) -> str:
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (run.run_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:  # a file store: MLflow 3 refuses it unless asked for
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return uri

    def start(self, run: LoggerRun) -> None:
        from mlflow.tracking import MlflowClient

        uri = self._uri(run)
        stored = run.stored(self.name) or {}
        try:
            _reachable(uri)  # MLflow's own client retries an unreachable server for minutes
            self.client = client = MlflowClient(tracking_uri=uri)
            if stored.get("run_id") and stored.get("tracking_uri") == uri:
                self.run_id = stored["run_id"]
                client.update_run(self.run_id, status="RUNNING")
            else:
                self.run_id = self._new_run(client, run)
        except Exception as exc:
            raise TrackerError(f"MLflow cannot open a run at {uri!r}: {type(exc).__name__}: {str(exc)[:200]}",
                               where="trainer.loggers (mlflow tracking_uri)",
                               fix="pass a tracking_uri MLflow serves (file:./mlruns, http://HOST:5000 with "
                                   "`mlflow server` running, sqlite:///mlflow.db with the full mlflow package), or "
                                   "remove mlflow from trainer.loggers") from None
        run.store(self.name, {"run_id": self.run_id, "tracking_uri": uri})

    def _new_run(self, client: Any, run: LoggerRun) -> str:
        from mlflow.entities import Param

        name = self.experiment or str(run.config.get("name") or "fmkit")
        found = client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found is not None else client.create_experiment(name)
        made = client.create_run(experiment_id, run_name=self.run_name or run.run_dir.name, tags=self.tags)
        run_id = made.info.run_id
        params = [Param(k, v[:_PARAM_CHARS]) for k, v in flatten(run.config).items()]
        for i in range(0, len(params), _BATCH):
            client.log_batch(run_id, params=params[i:i + _BATCH])
        client.log_dict(run_id, dict(run.config), "fmkit/recipe.json")
        client.log_dict(run_id, dict(run.provenance), "fmkit/provenance.json")
        return run_id

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in scalars.items()])

    def log_media(self, step: int, name: str, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), name)

    def finish(self) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id)
        self.client = self.run_id = None


def _reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise ConnectionError when an http(s) tracking server does not accept a connection within ``timeout`` s."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and parts.hostname:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
        except OSError as exc:
            raise ConnectionError(f"nothing answers at {parts.hostname}:{port} ({exc.strerror or exc})") from None


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"trainer": {"lr": 0.001}}`` -> ``{"trainer.lr": "0.001"}`` (lists and None as text)."""
    out: dict[str, str] = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out
