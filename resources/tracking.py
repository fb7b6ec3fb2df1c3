"""MLflow tracking resource: the one place that talks to MLflow.

Every model, backtest and report materialisation opens one run with `MlflowTracking.run`,
which records the lineage (see `quant_assets.lineage`) as `quant.*` tags and as the
`lineage.json` artifact. Only aggregate metrics and report artifacts are logged; raw
predictions and positions stay in Delta.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import mlflow
import mlflow.lightgbm
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, Schema
from pydantic import Field

from quant_assets.instance import relax_local_sqlite
from quant_assets.lineage import lineage_tags

# MLflow limits (mlflow.utils.validation)
MAX_KEY_LENGTH = 250
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000

LINEAGE_ARTIFACT = "lineage.json"
MODEL_ARTIFACT = "model"


def _truncate(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts -> dotted keys; values stringified and truncated to MLflow's limits."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
            continue
        if isinstance(value, list | tuple):
            text = json.dumps(list(value), default=str)
        else:
            text = str(value)
        out[_truncate(name, MAX_KEY_LENGTH)] = _truncate(text, MAX_PARAM_VAL_LENGTH)
    return out


def finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The entries of `metrics` that are finite real numbers, as floats."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[_truncate(str(key), MAX_KEY_LENGTH)] = number
    return out


def ensure_sqlite_store(tracking_uri: str, artifact_root: str = "") -> None:
    """Create a local SQLite MLflow store all at once, if it does not exist yet.

    MLflow builds its schema lazily, on first use, as a chain of Alembic migrations each
    committed on its own: a process killed in the middle (SIGKILL, OOM, a pod eviction)
    leaves a half-migrated file on which every later run fails ("table datasets already
    exists"). So the schema is built in a private temporary file next to the store and
    only a complete store is put in place, with ``os.link`` (atomic, never replaces a
    file: a concurrent creator's equal store wins). A kill leaves at most a stray
    ``.mlflow.db.init-*`` file, never a broken store.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    if path.exists():
        return
    import uuid

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.init-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        # the tracking store's schema includes the model registry's tables
        store = SqlAlchemyStore(f"sqlite:///{tmp}", _artifact_root(artifact_root) or str(path.parent / "mlruns"))
        store.engine.dispose()
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)


# MLflow's quiet settings (explicit environment settings still win): no telemetry calls
# (deployments have no outside network), no progress bars, no run URLs on stdout, no
# environment variable names recorded with models. MLflow reads them when it acts, so they
# are set when this resource is first used, not when the module is imported.
_QUIET_MLFLOW = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_RECORD_ENV_VARS_IN_MODEL_LOGGING": "false",
}


def _prepare_process(tracking_uri: str) -> None:
    for name, value in _QUIET_MLFLOW.items():
        os.environ.setdefault(name, value)
    if tracking_uri.startswith("sqlite:///"):
        # a local store: one fsync per MLflow write is not worth it (see quant_assets.instance)
        relax_local_sqlite(Path(tracking_uri.removeprefix("sqlite:///")).parent)


def _artifact_root(location: str) -> str | None:
    if not location:
        return None
    if "://" in location or location.startswith("file:"):
        return location
    return Path(location).expanduser().resolve().as_uri()


class MlflowTracking(dg.ConfigurableResource):
    """MLflow runs, metrics, artifacts and registered LightGBM models for the pipeline."""

    tracking_uri: str = Field(description="MLflow tracking URI (sqlite:///..., http://...)")
    artifact_location: str = Field(
        default="",
        description="Artifact root for experiments this resource creates ('' = MLflow default)",
    )
    experiment: str = Field(default="quant-assets", description="MLflow experiment name")

    def client(self) -> MlflowClient:
        """A fresh client bound to this resource's tracking URI (a local SQLite store is
        created complete or not at all, see `ensure_sqlite_store`)."""
        _prepare_process(self.tracking_uri)
        ensure_sqlite_store(self.tracking_uri, self.artifact_location)
        return MlflowClient(tracking_uri=self.tracking_uri)

    def experiment_id(self) -> str:
        """Id of `experiment`, created (with `artifact_location`) if missing."""
        client = self.client()
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return client.create_experiment(
                self.experiment, artifact_location=_artifact_root(self.artifact_location)
            )
        except MlflowException:
            # another process created it between our lookup and create
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    @contextmanager
    def run(
        self,
        name: str,
        lineage: dict[str, Any],
        params: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        parent_run_id: str | None = None,
    ) -> Iterator[mlflow.ActiveRun]:
        """An active MLflow run carrying `lineage` as tags and as `lineage.json`.

        The run ends FINISHED when the block exits normally and FAILED on an exception.
        `parent_run_id` makes it a child run (sweeps: parent trial registry, child trials).
        """
        _prepare_process(self.tracking_uri)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.lightgbm.autolog(disable=True)  # we log models explicitly, once
        experiment_id = self.experiment_id()
        run_tags = {**lineage_tags(lineage), **{str(k): str(v) for k, v in (tags or {}).items()}}
        run_tags = {
            _truncate(k, MAX_KEY_LENGTH): _truncate(v, MAX_TAG_VAL_LENGTH)
            for k, v in run_tags.items()
        }
        with mlflow.start_run(
            experiment_id=experiment_id,
            run_name=name,
            tags=run_tags,
            parent_run_id=parent_run_id,
            nested=mlflow.active_run() is not None,
            log_system_metrics=False,
        ) as active:
            mlflow.log_text(
                json.dumps(lineage, sort_keys=True, indent=2, default=str), LINEAGE_ARTIFACT
            )
            if params:
                mlflow.log_params(flatten_params(params))
            yield active

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> dict[str, float]:
        """Log the finite numeric entries of `metrics` to the active run; returns them."""
        clean = finite_metrics(metrics)
        if clean:
            mlflow.log_metrics(clean, step=step)
        return clean

    def log_text(self, text: str, artifact_file: str) -> None:
        mlflow.log_text(text, artifact_file)

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        """Log a JSON (or .yaml/.yml) artifact; values JSON-encoded with default=str."""
        if artifact_file.endswith((".yaml", ".yml")):
            mlflow.log_dict(json.loads(json.dumps(data, default=str)), artifact_file)
        else:
            mlflow.log_text(json.dumps(data, sort_keys=True, indent=2, default=str), artifact_file)

    def log_lgbm_model(
        self, trained: Any, registered_model_name: str | None = None
    ) -> tuple[str, int | None]:
        """Log `trained` with the MLflow LightGBM flavour to the active run.

        Returns (model_uri, registered version or None). The exact model string is also
        stored as `model_str.txt` with its sha256 as a run tag.
        """
        import lightgbm

        booster = trained.booster()
        signature = ModelSignature(
            inputs=Schema([ColSpec("double", c) for c in trained.feature_cols]),
            outputs=Schema([ColSpec("double")]),
        )
        info = mlflow.lightgbm.log_model(
            booster,
            name=MODEL_ARTIFACT,
            registered_model_name=registered_model_name,
            signature=signature,
            pip_requirements=[f"lightgbm=={lightgbm.__version__}"],
            tags={"quant.model_sha256": trained.sha256},
        )
        mlflow.log_text(trained.model_str, "model_str.txt")
        mlflow.set_tags(
            {
                "quant.model_sha256": trained.sha256,
                "quant.best_iteration": str(trained.best_iteration),
            }
        )
        version = info.registered_model_version
        return info.model_uri, (int(version) if version is not None else None)

    def log_seq_model(
        self, trained, registered_model_name: str | None = None
    ) -> tuple[str, int | None]:
        """Log a ``TrainedSeqModel`` with the MLflow PyTorch flavour to the active run.

        Returns (model_uri, registered version or None). The exact weights (``torch.save``
        bytes of the state dict, what ``TrainedSeqModel.sha256`` hashes) are also stored as
        ``state.pt`` and the sha256 is the run tag ``quant.model_sha256``, as for LightGBM.
        """
        import mlflow.pytorch  # torch is heavy: only when a sequence model is logged
        import torch

        if mlflow.active_run() is None:
            raise RuntimeError("log_seq_model must be called inside an active run(...) block")
        info = mlflow.pytorch.log_model(
            trained.module(),
            name=MODEL_ARTIFACT,
            registered_model_name=registered_model_name,
            # explicit requirements: inferring them imports the model in a subprocess (slow)
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            tags={"quant.model_sha256": trained.sha256},
            # pickle, not MLflow's default pt2: pt2 is a torch.export trace tied to an
            # example input's shapes; the pickled SeqNet class is importable wherever this
            # package is installed
            serialization_format="pickle",
        )
        mlflow.log_dict(
            {
                "feature_cols": list(trained.feature_cols),
                "feature_mean": list(trained.feature_mean),
                "feature_std": list(trained.feature_std),
                "config": trained.config.to_dict(),
            },
            "scaler.json",
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "state.pt"
            path.write_bytes(trained.state_bytes)
            mlflow.log_artifact(str(path))
        mlflow.set_tags({"quant.model_sha256": trained.sha256})
        version = info.registered_model_version
        return info.model_uri, (int(version) if version is not None else None)

    def load_lineage(self, run_id: str) -> dict[str, Any]:
        """The `lineage.json` of a run."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client().download_artifacts(run_id, LINEAGE_ARTIFACT, tmp)
            return json.loads(Path(path).read_text())
