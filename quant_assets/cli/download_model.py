"""``python -m quant_assets download-model``: fetch a registered model version, audited.

    python -m quant_assets download-model --alias champion --reason "risk review Q3" --dest ./m
    python -m quant_assets download-model --name quant-assets-seq --version 4 --reason "..."

Downloads the version's MLflow model (the flavour's files) and, for LightGBM, the exact
model string of its run (``model_str.txt``), whose sha256 is checked against the run's
``quant.model_sha256`` tag. Each download is a ``download`` row of the audit trail (actor,
time, model version, reason; ``python -m quant_assets audit --action download`` lists them).
``--reason`` is required when ``QUANT_REQUIRE_REASON=1``.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path


def download_model(name: str, version: int | None, alias: str | None, dest: Path, reason: str) -> dict:
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    from quant_assets.settings import Settings
    from resources import build_resources, model_registry
    from resources.tracking import registry_of

    settings = Settings.from_env()
    client = build_resources(settings)["tracking"].client()
    if version is None:
        version = model_registry.alias_version(client, alias, name)
        if version is None:
            raise model_registry.RegistryError(f"{name} has no '{alias}' alias")
    info = model_registry.version_info(client, int(version), name)
    dest.mkdir(parents=True, exist_ok=True)
    # recorded before the bytes leave the registry: an interrupted download is still a read
    model_registry.record_read(name, info.version, via="download-model", reason=reason,
                               run_id=info.run_id, root=settings.warehouse_uri,
                               extra={"dest": str(dest.resolve()), **({"alias": alias} if alias else {})})
    # the registry for this call only (resources.tracking.registry_of): download_artifacts'
    # own registry_uri does not reach the resolution of models:/ URIs (MLflow 3.17), and
    # a global left set sent every later registration of the process to this store
    try:
        with registry_of(settings.mlflow_uri):
            model_dir = download_artifacts(artifact_uri=f"models:/{name}/{info.version}",
                                           dst_path=str(dest / "model"), tracking_uri=settings.mlflow_uri)
    except MlflowException as exc:
        raise model_registry.RegistryError(f"{name} v{info.version}: {exc.message}") from exc
    out = {"name": name, "version": info.version, "run_id": info.run_id, "model_dir": model_dir,
           "model_sha256": info.model_sha256}
    try:
        text = client.download_artifacts(info.run_id, "model_str.txt", str(dest))
    except MlflowException:
        return out  # not a LightGBM model (the GRU's weights are in its flavour's files)
    digest = hashlib.sha256(Path(text).read_text().encode()).hexdigest()
    if info.model_sha256 and digest != info.model_sha256:
        raise model_registry.RegistryError(
            f"{name} v{info.version}: model_str.txt hashes to {digest}, the run logged {info.model_sha256}"
        )
    out["model_str"] = text
    return out


def main(argv: list[str] | None = None) -> int:
    from resources.model_registry import MODEL_NAME, RegistryError, require_reason

    parser = argparse.ArgumentParser(prog="quant_assets download-model", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=MODEL_NAME, help=f"registered model (default {MODEL_NAME})")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", type=int, help="the version to download")
    which.add_argument("--alias", help="the alias whose version to download (e.g. champion)")
    parser.add_argument("--dest", type=Path, default=Path("downloaded-model"), help="target folder")
    parser.add_argument("--reason", default="", help="why (audit trail; required when QUANT_REQUIRE_REASON=1)")
    args = parser.parse_args(argv)
    try:
        reason = require_reason(args.reason, "download-model")
        out = download_model(args.name, args.version, args.alias, args.dest, reason)
    except RegistryError as exc:
        print(f"download-model: {exc}")
        return 2
    print(f"{out['name']} v{out['version']} (MLflow run {out['run_id']}) -> {out['model_dir']}")
    if out.get("model_str"):
        print(f"model string {out['model_str']}: sha256 {out['model_sha256']} (checked)")
    return 0
