"""Lineage record of a materialisation: everything needed to rebuild the same result.

Pure (no Dagster, no MLflow): assets build the record with `collect_lineage`, attach it as
Dagster metadata, and hand it to `resources.tracking.MlflowTracking.run`, which logs
`lineage_tags(record)` as run tags and the whole record as `lineage.json`. The tags are the
few facts one filters runs by; the long lists (a version per feature, per package) are in
`lineage.json` only, summarised by one hash each, so the runs table stays readable.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "quant-assets",
    "dagster",
    "polars",
    "deltalake",
    "lightgbm",
    "numpy",
    "numba",
    "mlflow",
    "torch",
    "pyarrow",
)

# Images built without .git carry the commit in the environment instead.
GIT_COMMIT_ENV = "QUANT_GIT_COMMIT"

_REPO_DIR = Path(__file__).resolve().parent
# The packages whose code decides a result: their .py files are the lineage's code hash.
CODE_PACKAGES = ("quant_assets", "resources", "sensors")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of `config` (key order does not matter)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (an input read from outside the warehouse, e.g. a borrow file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(_REPO_DIR), *args],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.cache
def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout this package runs from; (None, None) if unknown.
    Read once per process: the code a process runs is the code it imported."""
    head = _git("rev-parse", "--verify", "HEAD")
    if head is None:
        return (os.environ.get(GIT_COMMIT_ENV) or None), None
    status = _git("status", "--porcelain")
    return head.strip(), (None if status is None else bool(status.strip()))


@functools.cache
def code_sha256(root: Path | None = None) -> str:
    """sha256 over the path and bytes of every .py file of ``CODE_PACKAGES``, as they are on
    disk. Two runs with the same hash ran the same code, whatever git says (a dirty tree, an
    image without .git, a commit that changed only docs); cached because a process's code
    does not change while it runs."""
    root = root or _REPO_DIR.parent
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def collect_lineage(
    *,
    asset_key: str,
    partition_keys: list[str],
    input_versions: dict[str, int],
    config: dict,
    seeds: dict[str, int],
    feature_versions: dict[str, str] | None = None,
    dagster_run_id: str | None = None,
    extra: dict | None = None,
    input_tables: dict[str, int] | None = None,
    dagster_job: str | None = None,
) -> dict[str, Any]:
    """The lineage record of one materialisation (JSON-serialisable with default=str).

    ``input_versions`` are the Delta versions by input name; ``input_tables`` the version of
    every warehouse table the step read, by table key (what ``reproduce`` pins when it rebuilds;
    defaults to ``input_versions`` when the input names are the tables)."""
    commit, dirty = git_state()
    tables = input_versions if input_tables is None else input_tables
    return {
        "asset_key": asset_key,
        "partition_keys": list(partition_keys),
        "input_versions": {k: int(v) for k, v in sorted(input_versions.items())},
        "input_tables": {k: int(v) for k, v in sorted(tables.items())},
        "git_commit": commit,
        "git_dirty": dirty,
        "code_sha256": code_sha256(),
        "feature_versions": dict(sorted((feature_versions or {}).items())),
        "config": config,
        "config_hash": config_hash(config),
        "seeds": {k: int(v) for k, v in sorted(seeds.items())},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "dagster_run_id": dagster_run_id,
        "dagster_job": dagster_job,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "extra": extra or {},
    }


_TAG_KEY_BAD = re.compile(r"[^A-Za-z0-9_.\-]")


def _tag_key(*parts: str) -> str:
    return ".".join(_TAG_KEY_BAD.sub("_", p.replace("/", ".")) for p in parts)


def set_hash(versions: dict[str, Any] | None) -> str:
    """Short hash of a name -> version map (the feature set, the package set): equal hashes,
    equal sets; ``explain`` lists the differences from ``lineage.json``."""
    return config_hash(dict(sorted((versions or {}).items())))[:12]


def lineage_tags(lineage: dict[str, Any]) -> dict[str, str]:
    """Flat `quant.*` string tags of a lineage record (for MLflow run tags / Dagster).

    Feature and package versions are summarised (`quant.feature_set`, `quant.packages`,
    `quant.n_features`); the versions themselves are in `lineage.json`."""
    tags = {
        "quant.asset_key": str(lineage.get("asset_key", "")),
        "quant.partitions": ",".join(lineage.get("partition_keys") or []),
        "quant.git_commit": str(lineage.get("git_commit") or "unknown"),
        "quant.git_dirty": str(lineage.get("git_dirty")).lower()
        if lineage.get("git_dirty") is not None
        else "unknown",
        "quant.config_hash": str(lineage.get("config_hash", "")),
        "quant.code_sha256": str(lineage.get("code_sha256") or "unknown"),
        "quant.dagster_run_id": str(lineage.get("dagster_run_id") or ""),
        "quant.python": str(lineage.get("python", "")),
        "quant.created_at": str(lineage.get("created_at", "")),
    }
    for table, version in (lineage.get("input_versions") or {}).items():
        tags[_tag_key("quant.input_version", table)] = str(version)
    for name, seed in (lineage.get("seeds") or {}).items():
        tags[_tag_key("quant.seed", name)] = str(seed)
    features = lineage.get("feature_versions") or {}
    if features:
        tags["quant.feature_set"] = set_hash(features)
        tags["quant.n_features"] = str(len(features))
    if lineage.get("packages"):
        tags["quant.packages"] = set_hash(lineage["packages"])
    return tags
