from __future__ import annotations

import datetime as dt
import json

from quant_assets import lineage as lin
from quant_assets.lineage import collect_lineage, config_hash, lineage_tags

KEYS = {
    "asset_key",
    "partition_keys",
    "input_versions",
    "git_commit",
    "git_dirty",
    "feature_versions",
    "config",
    "config_hash",
    "seeds",
    "python",
    "platform",
    "packages",
    "dagster_run_id",
    "created_at",
}


def _record(**overrides):
    kwargs = dict(
        asset_key="lgbm_model",
        partition_keys=["2023-01"],
        input_versions={"pit_features": 7, "labels": 3},
        config={"lgbm": {"num_leaves": 15, "learning_rate": 0.05}, "embargo_days": 5},
        seeds={"model": 11},
        feature_versions={"mom_20": "v1"},
        dagster_run_id="abc-123",
    )
    return collect_lineage(**(kwargs | overrides))


def test_lineage_has_all_keys_and_is_json():
    rec = _record()
    assert KEYS <= set(rec)
    assert rec["input_versions"] == {"labels": 3, "pit_features": 7}
    assert set(rec["packages"]) >= {
        "dagster",
        "polars",
        "deltalake",
        "lightgbm",
        "numpy",
        "numba",
        "mlflow",
        "torch",
        "pyarrow",
    }
    assert rec["packages"]["polars"] is not None
    assert dt.datetime.fromisoformat(rec["created_at"]).utcoffset() == dt.timedelta(0)
    assert rec["git_dirty"] in (True, False, None)
    json.dumps(rec, default=str)


def test_config_hash_ignores_key_order():
    a = {"b": 1, "a": {"y": [1, 2], "x": dt.date(2023, 1, 1)}}
    b = {"a": {"x": dt.date(2023, 1, 1), "y": [1, 2]}, "b": 1}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "b": 2})
    assert _record()["config_hash"] == config_hash(
        {"embargo_days": 5, "lgbm": {"learning_rate": 0.05, "num_leaves": 15}}
    )


def test_git_state_never_crashes(monkeypatch, tmp_path):
    # git_state is read once per process: clear the cache around each case
    state = lin.git_state.__wrapped__
    monkeypatch.setattr(lin, "_REPO_DIR", tmp_path)  # not a git checkout
    monkeypatch.setenv(lin.GIT_COMMIT_ENV, "deadbeef")
    assert state() == ("deadbeef", None)
    monkeypatch.delenv(lin.GIT_COMMIT_ENV)
    assert state() == (None, None)
    monkeypatch.setenv("PATH", str(tmp_path))  # no git binary at all
    assert state() == (None, None)


def test_lineage_tags_are_flat_strings():
    tags = lineage_tags(_record(input_versions={"features/pit_features": 2}))
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())
    assert tags["quant.partitions"] == "2023-01"
    assert tags["quant.input_version.features.pit_features"] == "2"
    assert tags["quant.seed.model"] == "11"
    assert tags["quant.dagster_run_id"] == "abc-123"
    assert tags["quant.config_hash"] == _record()["config_hash"]
    assert "quant.git_commit" in tags and "quant.git_dirty" in tags


def test_lineage_tags_summarise_features_and_packages():
    """A tag per feature and per package made 173 columns in MLflow's runs table (issue 18):
    the versions live in lineage.json, the tags carry one hash of each set."""
    many = {f"f{i:02d}": f"v{i}" for i in range(82)}
    tags = lineage_tags(_record(feature_versions=many))
    assert not any(k.startswith(("quant.feature_version.", "quant.pkg.")) for k in tags)
    assert tags["quant.n_features"] == "82" and len(tags["quant.feature_set"]) == 12
    assert len(tags) < 20
    changed = lineage_tags(_record(feature_versions={**many, "f00": "v-new"}))
    assert changed["quant.feature_set"] != tags["quant.feature_set"]
    assert changed["quant.packages"] == tags["quant.packages"]
    assert lin.set_hash(dict(reversed(list(many.items())))) == tags["quant.feature_set"]  # order-free
