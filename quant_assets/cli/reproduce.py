"""``python -m quant_assets reproduce <mlflow-run-id>``: rebuild any logged run and compare.

Every run kind the platform logs is rebuilt from its lineage (``quant_assets.cli.rebuild``:
the asset's own step executed again on the Delta versions it read, with its config, seeds
and partitions): both model families' months (with the month's out-of-sample predictions),
backtests (a month or a range), the strategy grid, the validation report, sweep trials and
daily scores. Compared with what the run logged:

- its hash tags: ``quant.model_sha256`` (model file), ``quant.predictions_sha256``
  (out-of-sample scores), ``quant.output_sha256`` (the rows the asset wrote: returns, grid,
  report statistics, scores);
- every logged metric, exactly;
- the rows its Dagster run committed to Delta, read back at that version.

The code matters as much as the data: the lineage holds the code hash and git commit. When
today's code differs, the difference is reported (files and commits) and the run is rebuilt
with today's code; ``--at-commit`` rebuilds it with the logged commit's code instead, in a
temporary git worktree. Exit 0: identical; 1: different (what differed is printed); 2: cannot
reproduce (why: an unknown run, a run that is not a result, a vacuumed Delta version...).

``--latest`` rebuilds from the current version of every input instead: "would today's
data still give this result?". Reading a registered model's run is audited (``--reason``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quant_assets.cli.rebuild import (
    KINDS,
    CodeState,
    LoggedRun,
    ReproduceError,
    code_state,
    committed_version,
    load_run,
    partition_filter,
    rebuild,
    repo_root,
    rows_hash,
    same_number,
)
from quant_assets.settings import Settings

JSON_MARKER = "REPRODUCTION_JSON "
__all__ = ["ReproduceError", "Reproduction", "main", "reproduce_run"]


@dataclass
class Check:
    """One thing compared: what the run logged against what the rebuild gave."""

    what: str
    logged: Any
    rebuilt: Any

    @property
    def equal(self) -> bool:
        if isinstance(self.logged, float) or isinstance(self.rebuilt, float):
            return same_number(self.logged, self.rebuilt)
        return self.logged == self.rebuilt


@dataclass
class Reproduction:
    run_id: str
    run: str  # asset and partitions
    hashes: list[Check]
    outputs: list[Check]
    metrics: list[Check]
    logged_tables: dict[str, int]
    reads: dict[str, list]  # table -> [version read, how it was chosen]
    current_tables: dict[str, int | None]
    code: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    rebuilt_at_commit: str | None = None

    @property
    def checks(self) -> list[Check]:
        return [*self.hashes, *self.outputs, *self.metrics]

    @property
    def matches(self) -> bool:
        return bool(self.checks) and all(c.equal for c in self.checks)

    def differences(self) -> list[str]:
        return [c.what for c in self.checks if not c.equal]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> Reproduction:
        data = json.loads(text)
        for name in ("hashes", "outputs", "metrics"):
            data[name] = [Check(**c) for c in data[name]]
        return cls(**data)

    def render(self) -> str:
        def mark(ok: bool) -> str:
            return "EQUAL" if ok else "DIFFERENT"

        code = CodeState(**{k: (tuple(v) if k == "changed_files" else v) for k, v in self.code.items()})
        lines = [f"reproduce MLflow run {self.run_id}: {self.run}",
                 f"  code: {code.describe()}"]
        if self.rebuilt_at_commit:
            lines.append(f"  rebuilt with the code of commit {self.rebuilt_at_commit[:12]} "
                         "(a temporary git worktree)")
        lines.append("  inputs (Delta version logged -> read [how]; current):")
        for table in sorted(set(self.logged_tables) | set(self.reads)):
            logged = self.logged_tables.get(table)
            read, how = self.reads.get(table, [None, "not read"])
            lines.append(f"    {table:<18} {_v(logged)} -> {_v(read)} [{how}]; current "
                         f"{_v(self.current_tables.get(table))}")
        for check in self.hashes:
            lines += [f"  {check.what:<26} logged  {check.logged}",
                      f"  {'':<26} rebuilt {check.rebuilt}  {mark(check.equal)}"]
        for check in self.outputs:
            lines.append(f"  {check.what}: {mark(check.equal)}")
        if self.metrics:
            bad = [c for c in self.metrics if not c.equal]
            lines.append(f"  metrics: {len(self.metrics)} logged, {len(self.metrics) - len(bad)} equal")
            lines += [f"    {c.what:<26} logged {c.logged!r:<24} rebuilt {c.rebuilt!r}  DIFFERENT"
                      for c in bad]
        lines += [f"  note: {n}" for n in self.notes]
        if self.matches:
            lines.append("RESULT: REPRODUCED (bit-identical)")
        else:
            lines.append("RESULT: NOT REPRODUCED: " + ", ".join(self.differences()))
        return "\n".join(lines)


def _v(version: int | None) -> str:
    return "-" if version is None else f"v{version}"


def audit_model_reads(client, run: LoggedRun, *, via: str, reason: str, root: str) -> list[tuple[str, int]]:
    """A ``download`` audit row for each registered model version the run registered or
    served (what a rebuild reads)."""
    from resources import model_registry

    versions = set(model_registry.versions_of_run(client, run.run_id))
    served = (run.lineage.get("extra") or {}).get("served_model") or {}
    if served:
        versions.add((served["name"], int(served["version"])))
    for name, version in sorted(versions):
        model_registry.record_read(name, version, via=via, reason=reason or f"{via} {run.run_id}",
                                   run_id=run.run_id, root=root)
    return sorted(versions)


def reproduce_run(
    run_id: str,
    settings: Settings | None = None,
    latest_inputs: bool = False,
    *,
    reason: str = "",
    at_commit: bool = False,
) -> Reproduction:
    """Rebuild MLflow run `run_id` and compare (module docstring)."""
    from quant_assets.warehouse import Warehouse
    from resources import build_resources

    settings = settings or Settings.from_env()
    tracking = build_resources(settings)["tracking"]
    run = load_run(tracking, run_id)
    if run.asset_key not in KINDS:
        raise ReproduceError(
            f"run {run_id} is a {run.asset_key} run; reproduce rebuilds {', '.join(sorted(KINDS))} runs"
        )
    code = code_state(run.lineage)
    if at_commit and not code.same:
        return reproduce_at_commit(run, settings, latest_inputs, reason)
    audit_model_reads(tracking.client(), run, via="reproduce", reason=reason, root=settings.warehouse_uri)
    rebuilt = rebuild(run, settings, latest=latest_inputs)

    notes = []
    hashes = []
    for tag in dict.fromkeys([*KINDS[run.asset_key].hashes, *run.logged_hashes()]):
        if tag not in run.tags:
            notes.append(f"the run logged no {tag} (logged before it was recorded): not compared")
            continue
        hashes.append(Check(tag, run.tags[tag], rebuilt.tags.get(tag)))
    warehouse = Warehouse(settings.warehouse_uri)
    outputs = []
    for table in KINDS[run.asset_key].selection:
        check, note = _committed_rows(warehouse, table, run, rebuilt.outputs.get(table))
        outputs += [check] if check else []
        notes += [note] if note else []
    metrics = [Check(f"metric {name}", value, rebuilt.metrics.get(name))
               for name, value in sorted(run.metrics.items())]
    if not (hashes or outputs or metrics):
        raise ReproduceError(f"run {run_id} logged nothing to compare a rebuild with")
    logged = run.input_tables()
    if latest_inputs:
        notes.append("--latest: rebuilt on the current version of every input, not the logged ones")
    unpinned = sorted(t for t, (_, how) in rebuilt.reads.items() if how != "logged")
    if unpinned and not latest_inputs:
        notes.append(f"not in the run's lineage, read as they were at the run's time: {', '.join(unpinned)}")
    if not code.same:
        notes.append("code differs from the run's: rebuilt with today's code; --at-commit rebuilds "
                     "with the logged commit's")
    notes += _environment_notes(run, rebuilt)
    current = {t: warehouse.version(t.split("/")) for t in set(logged) | set(rebuilt.reads)}
    return Reproduction(
        run_id=run_id, run=run.describe(), hashes=hashes, outputs=outputs, metrics=metrics,
        logged_tables=logged, reads={t: list(v) for t, v in rebuilt.reads.items()},
        current_tables=current, code=asdict(code), notes=notes,
    )


def _committed_rows(warehouse, table: str, run: LoggedRun, rebuilt) -> tuple[Check | None, str | None]:
    """The rows the run's Dagster run committed to ``table`` (read back at that version)
    against the rebuilt rows."""
    if rebuilt is None:
        return None, f"the rebuild wrote no {table}"
    version = committed_version(warehouse, table, run.dagster_run_id)
    if version is None:
        return None, f"no {table} commit by Dagster run {run.dagster_run_id}: its rows not compared"
    where = partition_filter(table, run.partition_keys)
    try:
        frame = warehouse.read(table.split("/"), version=version).frame
    except Exception as exc:  # noqa: BLE001 - a vacuumed output only loses this one check
        return None, f"{table} v{version} (the run's commit) cannot be read: {exc}"
    if where is not None:
        frame = frame.filter(where)
        rebuilt = rebuilt.filter(where)
    what = f"{table} rows committed by its Dagster run (v{version}, {frame.height} rows)"
    return Check(what, rows_hash(frame), rows_hash(rebuilt)), None


def _environment_notes(run: LoggedRun, rebuilt) -> list[str]:
    from quant_assets.lineage import package_versions

    notes = []
    logged = run.lineage.get("packages") or {}
    now = package_versions()
    changed = [f"{name} {logged[name]} -> {now.get(name)}" for name in sorted(logged)
               if logged.get(name) != now.get(name)]
    if changed:
        notes.append("package versions differ: " + ", ".join(changed))
    device = run.tags.get("quant.device")
    if device and device != "cpu":
        notes.append(f"logged on {device}: bit-identity is only promised on the same device")
    return notes


# --- --at-commit ------------------------------------------------------------------------------


class PassThrough(Exception):
    """The logged commit's reproduce predates --json: its own output and exit code."""

    def __init__(self, output: str, code: int):
        super().__init__(output)
        self.output, self.code = output, code


def reproduce_at_commit(run: LoggedRun, settings: Settings, latest: bool, reason: str) -> Reproduction:
    """Run ``reproduce`` of the logged commit's code, checked out in a temporary worktree,
    against the same stores."""
    from quant_assets.cli.rebuild import _git

    commit = run.lineage.get("git_commit")
    if not commit or commit == "unknown":
        raise ReproduceError(f"run {run.run_id} logged no git commit: its code cannot be checked out")
    if run.lineage.get("git_dirty"):
        raise ReproduceError(
            f"run {run.run_id} ran from a checkout of {commit[:12]} with uncommitted changes: "
            "its code is in no commit, so it cannot be rebuilt at its commit"
        )
    root = repo_root()
    if root is None or _git("cat-file", "-e", f"{commit}^{{commit}}") is None:
        raise ReproduceError(f"commit {commit} is not in this checkout's repository (fetch it first)")
    with tempfile.TemporaryDirectory(prefix="quant-at-commit-") as tmp:
        src = Path(tmp) / "src"
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "--quiet", str(src), commit],
                       check=True, capture_output=True, timeout=300)
        # the commit's packages first on the path (before the editable install of this one)
        env = {**os.environ, **_absolute_settings(settings),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))}
        try:
            args = [sys.executable, "-m", "quant_assets", "reproduce", run.run_id,
                    *(["--latest"] if latest else []), *(["--reason", reason] if reason else [])]
            proc = subprocess.run([*args, "--json"], cwd=src, env=env, capture_output=True,
                                  text=True, timeout=6 * 3600)
            if "unrecognized arguments: --json" in proc.stderr:
                old = subprocess.run(args, cwd=src, env=env, capture_output=True, text=True,
                                     timeout=6 * 3600)
                raise PassThrough(f"(the reproduce of commit {commit[:12]}, which predates --json)\n"
                                  + old.stdout + old.stderr[-2000:], old.returncode)
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(src)],
                           capture_output=True, timeout=300)
    found = [line[len(JSON_MARKER):] for line in proc.stdout.splitlines() if line.startswith(JSON_MARKER)]
    if not found:
        tail = (proc.stdout[-1500:] + proc.stderr[-1500:]).strip()
        raise ReproduceError(f"the reproduce of commit {commit[:12]} gave no result (exit "
                             f"{proc.returncode}): {tail}")
    result = Reproduction.from_json(found[-1])
    result.rebuilt_at_commit = commit
    return result


def _absolute_settings(settings: Settings) -> dict[str, str]:
    """The stores as absolute settings: the worktree's working directory is not ours."""
    return {
        "QUANT_HOME": str(settings.quant_home),
        "QUANT_WAREHOUSE_URI": settings.warehouse_uri,
        "QUANT_MLFLOW_URI": settings.mlflow_uri,
        "QUANT_MLFLOW_ARTIFACTS": settings.mlflow_artifacts,
        "DAGSTER_HOME": str(settings.dagster_home),
        "QUANT_LANDING_DIR": str(settings.landing_dir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="quant_assets reproduce",
        description="Rebuild a logged run from its MLflow run id and compare its hashes.",
    )
    parser.add_argument("run_id", help=f"MLflow run id of a {', '.join(sorted(KINDS))} run")
    parser.add_argument("--latest", action="store_true",
                        help="rebuild on the current input versions instead of the logged ones")
    parser.add_argument("--at-commit", action="store_true",
                        help="when today's code differs, rebuild with the logged commit's code")
    parser.add_argument("--reason", default="", help="why (audit trail; required when "
                        "QUANT_REQUIRE_REASON=1)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args(argv)
    from resources.model_registry import RegistryError, require_reason

    try:
        reason = require_reason(args.reason, "reproduce")
        result = reproduce_run(args.run_id, latest_inputs=args.latest, reason=reason,
                               at_commit=args.at_commit)
    except (ReproduceError, RegistryError) as exc:
        print(f"reproduce: cannot reproduce: {exc}")
        return 2
    except PassThrough as passed:
        print(passed.output)
        return passed.code
    if args.json:
        print(JSON_MARKER + result.to_json())
    else:
        print(result.render())
    return 0 if result.matches else 1

