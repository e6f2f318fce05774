"""MLflow tracking: a local SQLite store by default, any tracking URI when configured.

MLflow is imported lazily (it is slow to import) and only on the main process. Telemetry is
switched off, since this tool often runs where nothing may leave the machine. A resumed run
continues the same MLflow run (its id is kept in the checkpoint).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

from dermalab.core.config import TrackingConfig
from dermalab.core.settings import quiet_mlflow, settings


def store_uri(cfg: TrackingConfig, folder: Path) -> str:
    """``tracking.uri``, else ``sqlite:///<folder>/mlflow.db``: a run uses its parent folder,
    so all runs in one folder share a store; a study or comparison uses its output folder."""
    return cfg.uri or f"sqlite:///{(folder.resolve() / 'mlflow.db')}"


def experiment_id(cfg: TrackingConfig, uri: str) -> str:
    """The id of ``cfg.experiment`` in the store at ``uri``, created when missing (artifacts
    under ``cfg.artifact_location``, else ``mlartifacts/`` beside a SQLite store), with MLflow's
    S3 endpoint set when the artifacts live in S3."""
    quiet_mlflow()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is None:
        artifacts = cfg.artifact_location
        if artifacts is None and uri.startswith("sqlite:///"):
            artifacts = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
        exp = client.get_experiment(client.create_experiment(cfg.experiment,
                                                             artifact_location=artifacts))
    if str(exp.artifact_location).startswith("s3://"):
        quiet_mlflow(settings().s3_endpoint)  # MLflow's S3 store reads its own variable
    return str(exp.experiment_id)


def start_parent_run(cfg: TrackingConfig, uri: str, name: str, tags: dict[str, str]) -> str:
    """Create a run that groups child runs (a study, a comparison); returns its id. It stays
    open; the caller ends it with ``MlflowClient.set_terminated``."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    return str(client.create_run(experiment_id(cfg, uri), run_name=name,
                                 tags=tags).info.run_id)


def elect_parent_run(cfg: TrackingConfig, uri: str, name: str, tags: dict[str, str],
                     key: str, settle_s: float = 2.0, window_s: float = 600.0) -> str:
    """One parent run for ``key`` even when several workers start together.

    Every worker creates a candidate run tagged ``dermalab.parent_key`` (a digest of ``key``),
    waits ``settle_s`` (so that every candidate stamped earlier has been committed), then lists
    the running candidates of the last ``window_s`` seconds: the earliest (start time, then run
    id) wins, and the others delete their own. All workers see the same candidates once
    settled, so they agree without a lock, which neither MLflow nor Optuna's study attributes
    offer.
    """
    import time

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = experiment_id(cfg, uri)
    # A digest: the tag goes into a filter string, where quotes in a name would need escaping.
    tag = hashlib.sha256(key.encode()).hexdigest()[:24]
    own = client.create_run(exp, run_name=name, tags={**tags, "dermalab.parent_key": tag})
    time.sleep(settle_s)
    since = own.info.start_time - int(window_s * 1000)
    found = client.search_runs(
        [exp], filter_string=(f"tags.`dermalab.parent_key` = '{tag}' "
                              f"and attributes.status = 'RUNNING' "
                              f"and attributes.start_time >= {since}"),
        max_results=1000)
    runs = {r.info.run_id: r.info.start_time for r in found}
    runs[own.info.run_id] = own.info.start_time
    winner = min(runs, key=lambda rid: (runs[rid], rid))
    if winner != own.info.run_id:
        client.delete_run(own.info.run_id)
    return winner


def child_tracking(cfg: TrackingConfig, uri: str, parent_id: str,
                   tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Config values (for ``config.with_values``) that make a ``fit()`` run log to ``uri`` as
    a child of ``parent_id``."""
    return {"tracking.uri": uri, "tracking.tags": {**cfg.tags, "mlflow.parentRunId": parent_id,
                                                   **(tags or {})}}


class Tracker:
    """Thin wrapper: start/resume a run, log params/metrics/artifacts, end it."""

    def __init__(self, cfg: TrackingConfig, run_dir: Path, *, active: bool = True) -> None:
        self.enabled = cfg.enabled and active
        self.cfg = cfg
        self.run_dir = run_dir
        self.run_id: str | None = None
        self._mlflow: Any = None

    def start(self, run_name: str, resume_id: str | None = None) -> str | None:
        """Start (or resume) the MLflow run; returns its id."""
        if not self.enabled:
            return None
        quiet_mlflow()
        import mlflow

        self._mlflow = mlflow
        uri = store_uri(self.cfg, self.run_dir.resolve().parent)
        mlflow.set_tracking_uri(uri)
        exp_id = experiment_id(self.cfg, uri)
        run = mlflow.start_run(run_id=resume_id, experiment_id=exp_id,
                               run_name=None if resume_id else run_name,
                               tags=None if resume_id else dict(self.cfg.tags) or None)
        self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        """Log parameters (values truncated to MLflow's limit)."""
        if self._mlflow is None:
            return
        existing = self._mlflow.get_run(self.run_id).data.params
        new = {k: str(v)[:500] for k, v in params.items() if k not in existing}
        if new:
            self._mlflow.log_params(new)

    def log_metrics(self, metrics: dict[str, float | None], step: int | None = None) -> None:
        """Log finite numeric metrics."""
        if self._mlflow is None:
            return
        clean = {k: float(v) for k, v in metrics.items()
                 if isinstance(v, int | float) and math.isfinite(float(v))}
        if clean:
            self._mlflow.log_metrics(clean, step=step)

    def backfill(self, rows: list[dict[str, Any]], probe: str = "val_loss") -> int:
        """Log epochs of ``rows`` that the run lacks (a kill can land between the checkpoint and
        the MLflow call); returns how many were logged."""
        if self._mlflow is None:
            return 0
        client = self._mlflow.MlflowClient()
        have = {m.step for m in client.get_metric_history(self.run_id, probe)}
        missing = [r for r in rows if int(r["epoch"]) not in have]
        for r in missing:
            self.log_metrics({k: v for k, v in r.items() if k not in ("epoch", "frozen_body")},
                             step=int(r["epoch"]))
        return len(missing)

    def log_dict(self, obj: dict[str, Any], name: str) -> None:
        """Store a JSON artifact (e.g. a table keyed by free-text names)."""
        if self._mlflow is not None:
            self._mlflow.log_dict(obj, name)

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        """Upload one file to the run's artifact store."""
        if self._mlflow is not None and path.is_file():
            self._mlflow.log_artifact(str(path), artifact_path=subdir)

    def end(self, status: str = "FINISHED") -> None:
        """End the run (``FINISHED``, ``FAILED`` or ``KILLED``)."""
        if self._mlflow is not None:
            self._mlflow.end_run(status=status)
            self._mlflow = None
