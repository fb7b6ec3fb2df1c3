"""The model behind a registered version, as serving uses it, for either model family.

Pure (no MLflow): the registry (``resources.model_registry``) says which run registered a
version and which sha256 it was tagged with; the model itself is the row of the family's
model table (``lgbm_model`` or ``seq_model``) written by that run (``mlflow_run_id``): the
exact LightGBM string or GRU weights, their sha256, the feature columns and the training
window (the drift reference). The sha256 is checked against the run's tag, so a row and a
registry entry cannot silently disagree.

``ServedModel.score`` scores feature rows exactly as the family's out-of-sample predictions
do (``models.monthly``: LightGBM row by row, the GRU over each instrument's last
``seq_len`` rows), so a day scored here equals that day's out-of-sample prediction by the
same model.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import polars as pl

from quant_assets.models.monthly import FAMILIES, LGBM, ModelFamily


class ServedModelError(LookupError):
    pass


@dataclass(frozen=True)
class ServedModel:
    """A registered version and the model behind it."""

    version: int
    run_id: str
    model: Any  # models.lgbm.TrainedModel | models.seq.TrainedSeqModel
    record: dict[str, Any]
    family: ModelFamily = LGBM

    @property
    def history_rows(self) -> int:
        """Feature rows before a scored day that scoring it reads (per instrument)."""
        return getattr(self.model, "history_rows", 0)

    def score(self, features: pl.DataFrame, dates: Iterable[dt.date] | None = None) -> pl.DataFrame:
        """(date, instrument_id, score) of the feature rows on ``dates`` (all when None),
        sorted by the keys. For the GRU, ``features`` also holds each instrument's rows
        before those days (``history_rows`` of them)."""
        wanted = None if dates is None else pl.Series("date", list(dates), dtype=pl.Date)
        if self.family.name == LGBM.name:
            rows = features if wanted is None else features.filter(pl.col("date").is_in(wanted.implode()))
            rows = rows.sort("date", "instrument_id")
            return rows.select("date", "instrument_id").with_columns(
                score=pl.Series(self.model.predict(rows), dtype=pl.Float64)
            )
        return self.model.predict(features, wanted)


def model_record(
    model_rows: pl.DataFrame,
    run_id: str,
    table: str = "lgbm_model",
    history: Iterable[pl.DataFrame] = (),
) -> dict[str, Any]:
    """The row of the family's model table written by MLflow run ``run_id``.

    A month retrained since the version was registered (a restated bar of its window, which
    the automation rebuilds) replaced that row in the current table; it is then the row of
    the newest earlier version of the table (``history``: the table's earlier Delta versions,
    newest first, read lazily), so the promoted champion keeps serving, bytes still checked
    against its registered sha256, until a person promotes another version."""
    for rows in _chain(model_rows, history):
        found = rows.filter(pl.col("mlflow_run_id") == run_id) if rows.height else rows
        if found.height > 1:
            raise ServedModelError(f"{table} has {found.height} rows for MLflow run {run_id}")
        if found.height == 1:
            return found.row(0, named=True)
    raise ServedModelError(
        f"{table} has no row for MLflow run {run_id} in any version read: the month was "
        "retrained and the earlier versions are gone (vacuumed); promote a current version"
    )


def _chain(first: pl.DataFrame, rest: Iterable[pl.DataFrame]) -> Iterable[pl.DataFrame]:
    yield first
    yield from rest


def table_history(warehouse: Any, table: str) -> Iterable[pl.DataFrame]:
    """The earlier Delta versions of ``table`` (a ``warehouse.Warehouse``), newest first,
    read one at a time (time travel); stops at a version whose files were vacuumed."""
    current = warehouse.version([table])
    for version in range((current or 0) - 1, -1, -1):
        try:
            yield warehouse.read([table], version=version).frame
        except Exception:  # noqa: BLE001 - a vacuumed version: nothing older can be read
            return


def served_model(
    version: int,
    run_id: str,
    tagged_sha256: str | None,
    model_rows: pl.DataFrame,
    family: str = LGBM.name,
    history: Iterable[pl.DataFrame] = (),
) -> ServedModel:
    """The model of a registered version (its run ``run_id``, tagged ``tagged_sha256``)
    from the family's model table (or the rows of it that may hold the version), or from its
    earlier versions (``history``, see ``model_record``)."""
    fam = FAMILIES[family]
    record = model_record(model_rows, run_id, fam.asset, history)
    model = fam.model_type.from_record(record)  # verifies the model against its sha256
    if tagged_sha256 is not None and tagged_sha256 != model.sha256:
        raise ServedModelError(
            f"version {version}: {fam.asset} sha256 {model.sha256} != run tag {tagged_sha256}"
        )
    return ServedModel(int(version), run_id, model, record, fam)
