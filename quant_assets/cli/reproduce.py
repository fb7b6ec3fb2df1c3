"""``python -m quant_assets reproduce <mlflow-run-id>``: rebuild a logged model month.

From the run's ``lineage.json`` (config, seeds, partition, the Delta version of every input)
the model is trained again on the inputs *as they were* -- Delta time travel through
``Warehouse.read(key, version=...)`` -- by the same functions the asset uses
(``quant_assets.models.monthly``), and its model sha256 and out-of-sample predictions hash
are compared with the run's tags ``quant.model_sha256`` and ``quant.predictions_sha256``.
Exit code 0 when both are equal, 1 when not (2 for a run that cannot be reproduced at all).

``--latest`` trains on the current version of every input instead: "would today's data
still give this model?" (a restated input shows up as a mismatch).
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from quant_assets.lineage import git_state
from quant_assets.settings import Settings

PREDICTIONS_TAG = "quant.predictions_sha256"
MODEL_TAG = "quant.model_sha256"
INPUTS = ("pit_features", "labels")
SUPPORTED = ("lgbm_model", "seq_model")


class ReproduceError(RuntimeError):
    """The run cannot be reproduced (unknown run, unsupported asset, missing lineage)."""


@dataclass
class Reproduction:
    run_id: str
    asset_key: str
    month: dt.date
    logged_versions: dict[str, int]
    read_versions: dict[str, int]
    current_versions: dict[str, int | None]
    logged_model_sha256: str
    model_sha256: str
    logged_predictions_sha256: str
    predictions_sha256: str
    logged_git_commit: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def model_matches(self) -> bool:
        return self.model_sha256 == self.logged_model_sha256

    @property
    def predictions_match(self) -> bool:
        return self.predictions_sha256 == self.logged_predictions_sha256

    @property
    def matches(self) -> bool:
        return self.model_matches and self.predictions_match

    def render(self) -> str:
        def mark(ok: bool) -> str:
            return "EQUAL" if ok else "DIFFERENT"

        lines = [
            f"reproduce MLflow run {self.run_id}: {self.asset_key} {self.month:%Y-%m}",
            "  inputs (Delta version logged -> read; current):",
        ]
        for name in sorted(self.logged_versions):
            lines.append(
                f"    {name:<14} v{self.logged_versions[name]} -> v{self.read_versions[name]}"
                f"  (current v{self.current_versions.get(name)})"
            )
        lines += [
            f"  model sha256       logged  {self.logged_model_sha256}",
            f"                     rebuilt {self.model_sha256}  {mark(self.model_matches)}",
            f"  predictions sha256 logged  {self.logged_predictions_sha256}",
            f"                     rebuilt {self.predictions_sha256}  "
            f"{mark(self.predictions_match)}",
            *(f"  note: {n}" for n in self.notes),
            "RESULT: REPRODUCED (bit-identical)" if self.matches else "RESULT: NOT REPRODUCED",
        ]
        return "\n".join(lines)


def _rebuild(
    asset_key: str, config: dict[str, Any], pit_features, labels, month: dt.date
) -> tuple[str, str, dict[str, Any]]:
    """(model sha256, predictions hash, model metrics) of `month` rebuilt from the inputs."""
    from quant_assets.models.assets import LgbmModelConfig, SeqModelConfig
    from quant_assets.models.monthly import LGBM, SEQ, month_predictions_hash
    from quant_assets.models.walkforward import (
        WalkForwardConfig,
        feature_columns,
        join_features_labels,
    )

    joined = join_features_labels(pit_features, labels)
    features = feature_columns(pit_features)
    family, config_type = (LGBM, LgbmModelConfig) if asset_key == "lgbm_model" else (SEQ, SeqModelConfig)
    cfg = config_type(**config)
    model = family.fit(joined, features, month, cfg.to(WalkForwardConfig), cfg.to(family.config_type))
    scores = family.predict(model, pit_features, month)
    return model.sha256, month_predictions_hash(scores), model.metrics


def reproduce_run(
    run_id: str, settings: Settings | None = None, latest_inputs: bool = False
) -> Reproduction:
    """Rebuild the model month of MLflow run `run_id` and compare hashes (see module doc)."""
    from mlflow.exceptions import MlflowException

    from quant_assets.warehouse import Warehouse
    from resources import build_resources

    settings = settings or Settings.from_env()
    tracking = build_resources(settings)["tracking"]
    try:
        run = tracking.client().get_run(run_id)
    except MlflowException as exc:
        raise ReproduceError(
            f"no MLflow run {run_id!r} in {settings.mlflow_uri}: {exc.message}"
        ) from exc
    tags = run.data.tags
    asset_key = tags.get("quant.asset_key", "")
    if asset_key not in SUPPORTED:
        raise ReproduceError(
            f"run {run_id} is a {asset_key or 'non-pipeline'} run; reproduce rebuilds "
            f"{', '.join(SUPPORTED)} runs"
        )
    for tag in (MODEL_TAG, PREDICTIONS_TAG):
        if tag not in tags:
            raise ReproduceError(f"run {run_id} has no {tag} tag to compare against")
    lineage = tracking.load_lineage(run_id)
    keys = lineage.get("partition_keys") or []
    if len(keys) != 1:
        raise ReproduceError(f"run {run_id}: expected one model month in lineage, got {keys}")
    month = dt.date.fromisoformat(keys[0])
    logged = {k: int(v) for k, v in (lineage.get("input_versions") or {}).items()}
    missing = [name for name in INPUTS if name not in logged]
    if missing:
        raise ReproduceError(f"run {run_id}: lineage has no Delta version of {missing}")

    warehouse = Warehouse(settings.warehouse_uri)
    current = {name: warehouse.version([name]) for name in INPUTS}
    frames, read = {}, {}
    for name in INPUTS:
        loaded = warehouse.read([name], version=None if latest_inputs else logged[name])
        frames[name], read[name] = loaded.frame, loaded.version
    model_sha, preds_sha, metrics = _rebuild(
        asset_key, lineage["config"], frames["pit_features"], frames["labels"], month
    )
    notes = []
    if latest_inputs:
        notes.append("--latest: trained on the current input versions, not the logged ones")
    commit = lineage.get("git_commit")
    now_commit, now_dirty = git_state()
    if commit and now_commit and commit != now_commit:
        notes.append(f"code differs: logged commit {commit[:12]}, running {now_commit[:12]}")
    if lineage.get("git_dirty") or now_dirty:
        notes.append("a working tree was dirty (logged or now): the code may differ")
    if asset_key == "seq_model" and metrics.get("device") != tags.get("quant.device", "cpu"):
        notes.append(
            f"trained on {metrics.get('device')} but logged on {tags.get('quant.device')}: "
            "bit-identity is only promised on the same device (CPU)"
        )
    return Reproduction(
        run_id=run_id,
        asset_key=asset_key,
        month=month,
        logged_versions=logged,
        read_versions=read,
        current_versions=current,
        logged_model_sha256=tags[MODEL_TAG],
        model_sha256=model_sha,
        logged_predictions_sha256=tags[PREDICTIONS_TAG],
        predictions_sha256=preds_sha,
        logged_git_commit=commit,
        notes=notes,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="quant_assets reproduce",
        description="Rebuild an lgbm_model/seq_model month from its MLflow run's lineage.",
    )
    parser.add_argument("run_id", help="MLflow run id of an lgbm_model or seq_model month")
    parser.add_argument(
        "--latest", action="store_true", help="train on the current input versions instead"
    )
    args = parser.parse_args(argv)
    try:
        result = reproduce_run(args.run_id, latest_inputs=args.latest)
    except ReproduceError as exc:
        print(f"reproduce: {exc}")
        return 2
    print(result.render())
    return 0 if result.matches else 1
