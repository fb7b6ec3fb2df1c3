"""``python -m quant_assets explain RUN_A RUN_B``: why two runs of the same asset differ.

"The backtest differs from yesterday": given two MLflow runs of one asset (e.g. yesterday's
and today's backtest of a month), prints what made them differ, most important first:

1. input tables whose Delta versions differ -- the tables the runs read (their lineage) and
   the tables upstream of those in the asset graph (at the version current when each run
   ran), upstream first, so the root cause leads and the tables that depend on it follow.
   For each: the commits between the two versions (Delta history: time, operation, the
   partitions its predicate replaced, the Dagster run that wrote it) and a keyed comparison
   of the two versions bounded by those partitions: rows added, removed and changed per
   partition, and for the first changed rows the columns with their old and new values;
2. feature definitions whose versions changed; 3. config keys that changed; 4. seeds;
5. package versions; 6. code (hash and git commits);
7. the effect: the hashes the runs logged and their headline statistics side by side.

Exit 0: the results are identical (hashes and metrics); 1: they differ; 2: the runs cannot be
compared (not the same asset, not results, no lineage). Reading the runs of registered models
is audited (``--reason``). Materialisations link here too: a run's Dagster metadata carries
``explain_previous``, this command against the previous run of the same partitions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from quant_assets.cli.rebuild import (
    LoggedRun,
    ReproduceError,
    _git,
    load_run,
    same_number,
    version_as_of,
)
from quant_assets.settings import Settings
from quant_assets.warehouse import Warehouse

HEADLINE = ("sharpe", "cagr", "max_drawdown", "annual_volatility", "psr", "dsr", "pbo",
            "mean_turnover", "rank_ic_mean", "oos_rank_ic", "valid_ic", "n_obs", "rows")
KEY_COLUMNS = ("date", "instrument_id", "trial_id", "metric", "column")
SHOW_CHANGED_ROWS = 5
SHOW_CHANGED_COLUMNS = 8
# predicates as quant_assets.warehouse writes them (delta-rs may add a ::date cast)
_WINDOW = re.compile(r"(\w+) >= '([^']+)'(?:::\w+)? AND \1 < '([^']+)'(?:::\w+)?")
_IN = re.compile(r"(\w+) IN \((.*)\)")


@dataclass
class Commit:
    version: int
    time: str
    operation: str
    partitions: str  # what its predicate replaced ("whole table" without one)
    dagster_run_id: str | None
    added_rows: int | None


@dataclass
class TableChange:
    table: str
    role: str  # "read by the runs" | "upstream of ..."
    version_a: int | None
    version_b: int | None
    commits: list[Commit] = field(default_factory=list)
    added: int = 0
    removed: int = 0
    changed: int = 0
    by_partition: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    note: str = ""

    def render(self) -> list[str]:
        lines = [f"  {self.table}  {_v(self.version_a)} -> {_v(self.version_b)}  ({self.role})"]
        for c in self.commits:
            by = f"Dagster run {c.dagster_run_id[:8]}" if c.dagster_run_id else "not by a Dagster run"
            lines.append(f"    v{c.version} {c.time} {c.operation} {c.partitions} ({by})")
        if self.note:
            lines.append(f"    {self.note}")
        else:
            lines.append(f"    rows: {self.added} added, {self.removed} removed, {self.changed} changed "
                         f"in {len(self.by_partition)} partition(s)")
            for part, counts in list(self.by_partition.items())[:10]:
                text = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
                lines.append(f"      {part}: {text}")
            if len(self.by_partition) > 10:
                lines.append(f"      ... {len(self.by_partition) - 10} more partitions")
            lines += [f"      {e}" for e in self.examples]
        return lines


@dataclass
class Explanation:
    asset: str
    runs: tuple[LoggedRun, LoggedRun]
    tables: list[TableChange]
    features: list[str]
    config: list[str]
    seeds: list[str]
    packages: list[str]
    code: list[str]
    hashes: list[tuple[str, str | None, str | None]]
    metrics: list[tuple[str, float | None, float | None]]
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return all(a == b for _, a, b in self.hashes) and all(same_number(a, b) for _, a, b in self.metrics)

    def render(self) -> str:
        a, b = self.runs
        lines = [f"explain {self.asset}: A = MLflow run {a.run_id} ({a.name}), B = {b.run_id} ({b.name})"]
        for label, run in (("A", a), ("B", b)):
            dagster = f"Dagster run {run.dagster_run_id} (UI: /runs/{run.dagster_run_id})" if run.dagster_run_id else "no Dagster run"
            lines.append(f"  {label}: {run.describe()} at {run.lineage.get('created_at', '?')}; {dagster}")
        lines += self.notes and [f"  note: {n}" for n in self.notes] or []
        sections = [
            ("Input tables whose versions differ (upstream first)",
             [line for t in self.tables for line in t.render()]),
            ("Feature definitions whose versions changed", self.features),
            ("Config keys that changed", self.config),
            ("Seeds", self.seeds),
            ("Package versions", self.packages),
            ("Code", self.code),
        ]
        for n, (title, body) in enumerate(sections, 1):
            lines.append(f"{n}. {title}:" + ("" if body else " none"))
            lines += [line if line.startswith("  ") else f"  {line}" for line in body]
        lines.append(f"{len(sections) + 1}. Effect (A | B):")
        for tag, va, vb in self.hashes:
            lines.append(f"  {tag:<28} {'same' if va == vb else 'DIFFERENT'}  {(va or '-')[:16]} | {(vb or '-')[:16]}")
        for name, va, vb in self.metrics:
            mark = "" if same_number(va, vb) else "  <- changed"
            lines.append(f"  {name:<28} {_num(va):>14} | {_num(vb):<14}{mark}")
        lines.append("RESULT: IDENTICAL" if self.identical else "RESULT: DIFFERENT")
        return "\n".join(lines)


def _v(version: int | None) -> str:
    return "-" if version is None else f"v{version}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (d or {}).items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def dict_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    fa, fb = _flat(a), _flat(b)
    return [f"{k}: {json.dumps(fa.get(k), default=str)} -> {json.dumps(fb.get(k), default=str)}"
            for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


# --- what changed in a table between two versions -------------------------------------------


def _partitions_of(predicate: str | None) -> tuple[str, pl.Expr | None]:
    """(text, row filter) of a commit predicate written by quant_assets.warehouse."""
    if not predicate:
        return "whole table", None
    if m := _WINDOW.fullmatch(predicate.strip()):
        col, start, end = m.groups()
        lo, hi = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
        return f"{col} in [{start}, {end})", (pl.col(col) >= lo) & (pl.col(col) < hi)
    if m := _IN.fullmatch(predicate.strip()):
        col, values = m.groups()
        keys = [v.strip().strip("'") for v in values.split(",")]
        return f"{col} in {keys[:5]}{' ...' if len(keys) > 5 else ''}", pl.col(col).is_in(keys)
    return predicate, None


def table_change(warehouse: Warehouse, table: str, role: str, va: int | None, vb: int | None) -> TableChange:
    change = TableChange(table, role, va, vb)
    key = table.split("/")
    lo, hi = sorted(v if v is not None else -1 for v in (va, vb))
    history = [h for h in warehouse.table(key).history() if lo < int(h["version"]) <= hi]
    filters: list[pl.Expr] | None = []
    for h in sorted(history, key=lambda h: int(h["version"])):
        text, expr = _partitions_of((h.get("operationParameters") or {}).get("predicate"))
        mode = (h.get("operationParameters") or {}).get("mode", "")
        if expr is None and mode == "Append" and lo >= 0:
            text = "rows appended"
        change.commits.append(Commit(
            int(h["version"]), dt.datetime.fromtimestamp(h["timestamp"] / 1000, dt.UTC).isoformat(timespec="seconds"),
            h.get("operation", ""), text, h.get("dagster.run_id"),
            (h.get("operationMetrics") or {}).get("num_added_rows"),
        ))
        if filters is not None:
            if expr is None:
                filters = None  # a commit without a predicate: compare the whole table
            else:
                filters.append(expr)
    bound = None
    if filters:
        bound = filters[0]
        for f in filters[1:]:
            bound = bound | f
    try:
        frame_a = _read(warehouse, key, va, bound)
        frame_b = _read(warehouse, key, vb, bound)
    except Exception as exc:  # noqa: BLE001 - a vacuumed version: the history is all we have
        change.note = f"rows not compared: a version cannot be read any more ({type(exc).__name__}: {str(exc)[:200]})"
        return change
    _keyed_diff(change, frame_a, frame_b)
    return change


def _read(warehouse: Warehouse, key: list[str], version: int | None, bound: pl.Expr | None) -> pl.DataFrame:
    if version is None:
        return pl.DataFrame()
    frame = warehouse.read(key, version=version).frame
    return frame.filter(bound) if bound is not None else frame


def _keyed_diff(change: TableChange, a: pl.DataFrame, b: pl.DataFrame) -> None:
    if a.is_empty() and b.is_empty():
        return
    columns = b.columns if not b.is_empty() else a.columns
    keys = [c for c in KEY_COLUMNS if c in columns and (a.is_empty() or c in a.columns)]
    if not keys:
        change.note = f"rows not compared: no key columns among {KEY_COLUMNS}"
        return
    from quant_assets.cli.rebuild import RUN_SPECIFIC

    # which run wrote a row is not its content (a rerun gets new run ids by design)
    shared = [c for c in columns if (a.is_empty() or c in a.columns) and c not in RUN_SPECIFIC]
    values = [c for c in shared if c not in keys]
    a = a.select(shared) if not a.is_empty() else pl.DataFrame(schema=b.select(shared).schema)
    b = b.select(shared) if not b.is_empty() else pl.DataFrame(schema=a.schema)
    added = b.join(a.select(keys), on=keys, how="anti")
    removed = a.join(b.select(keys), on=keys, how="anti")
    both = a.join(b, on=keys, how="inner", suffix="__b")
    if values:
        # row hashes compare every value, NaN and null included, bit for bit
        ha = both.select(values).hash_rows(seed=1)
        hb = both.select([f"{c}__b" for c in values]).rename({f"{c}__b": c for c in values}).hash_rows(seed=1)
        changed = both.filter(ha != hb)
    else:
        changed = both.clear()
    change.added, change.removed, change.changed = added.height, removed.height, changed.height
    part = keys[0]
    for name, frame in (("added", added), ("removed", removed), ("changed", changed)):
        for value, n in frame.group_by(part).len().sort(part).iter_rows():
            change.by_partition.setdefault(str(value), {"added": 0, "removed": 0, "changed": 0})[name] = n
    change.by_partition = dict(sorted(change.by_partition.items()))
    for row in changed.sort(keys).head(SHOW_CHANGED_ROWS).iter_rows(named=True):
        diffs = [f"{c} {_show(row[c])} -> {_show(row[c + '__b'])}" for c in values
                 if not _same(row[c], row[c + "__b"])]
        more = f", ... {len(diffs) - SHOW_CHANGED_COLUMNS} more columns" if len(diffs) > SHOW_CHANGED_COLUMNS else ""
        key_text = ", ".join(str(row[k]) for k in keys)
        change.examples.append(f"({key_text}): {', '.join(diffs[:SHOW_CHANGED_COLUMNS])}{more}")
    if added.height:
        change.examples.append(f"added: {', '.join(str(tuple(r)) for r in added.select(keys).head(3).iter_rows())}")
    if removed.height:
        change.examples.append(f"removed: {', '.join(str(tuple(r)) for r in removed.select(keys).head(3).iter_rows())}")


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        return same_number(x, y)
    return x == y


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.10g}"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- the explanation -------------------------------------------------------------------------


def _upstream_order(tables: Sequence[str]) -> tuple[dict[str, set[str]], list[str]]:
    """Parents of every asset upstream of ``tables`` and a topological order (upstream first)."""
    from dagster import AssetKey

    from quant_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    parents: dict[str, set[str]] = {}
    todo = list(tables)
    while todo:
        name = todo.pop()
        if name in parents:
            continue
        key = AssetKey.from_user_string(name)
        found = key in graph.get_all_asset_keys()
        parents[name] = {k.to_user_string() for k in graph.get(key).parent_keys} if found else set()
        parents[name].discard(name)  # a self-dependency (backtest's previous months)
        todo += list(parents[name])
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for parent in sorted(parents.get(name, ())):
            visit(parent)
        order.append(name)

    for name in sorted(parents):
        visit(name)
    return parents, order


def explain_runs(run_a: str, run_b: str, settings: Settings | None = None, *, reason: str = "") -> Explanation:
    from quant_assets.cli.reproduce import audit_model_reads
    from resources import build_resources

    settings = settings or Settings.from_env()
    tracking = build_resources(settings)["tracking"]
    a, b = load_run(tracking, run_a), load_run(tracking, run_b)
    if a.asset_key != b.asset_key:
        raise ReproduceError(f"run {run_a} is a {a.asset_key} run and {run_b} a {b.asset_key} run: "
                             "explain compares two runs of the same asset")
    for run in (a, b):
        audit_model_reads(tracking.client(), run, via="explain", reason=reason, root=settings.warehouse_uri)
    warehouse = Warehouse(settings.warehouse_uri)
    notes = []
    if a.partition_keys != b.partition_keys:
        notes.append("the runs cover different partitions: their statistics are not of the same period")

    direct_a, direct_b = a.input_tables(), b.input_tables()
    direct = sorted(set(direct_a) | set(direct_b))
    parents, order = _upstream_order(direct)
    versions: dict[str, tuple[int | None, int | None, str]] = {}
    for table in direct:
        versions[table] = (direct_a.get(table), direct_b.get(table), "read by the runs")
    when_a, when_b = a.created_at_ms(), b.created_at_ms()
    for table in order:
        if table in versions or table == a.asset_key or not warehouse.exists(table.split("/")):
            continue
        users = sorted(t for t in order if table in parents.get(t, ()) and t != table)
        versions[table] = (
            version_as_of(warehouse, table.split("/"), when_a) if when_a else None,
            version_as_of(warehouse, table.split("/"), when_b) if when_b else None,
            f"upstream of {', '.join(users)}; version current at each run's time",
        )
    tables = []
    for table in [t for t in order if t in versions] + [t for t in versions if t not in order]:
        va, vb, role = versions[table]
        if va != vb and warehouse.exists(table.split("/")):
            tables.append(table_change(warehouse, table, role, va, vb))

    la, lb = a.lineage, b.lineage
    code_lines = []
    ca, cb = la.get("code_sha256"), lb.get("code_sha256")
    if ca and cb:
        code_lines.append("code hash: same" if ca == cb else f"code hash: {ca[:12]} -> {cb[:12]} (the code differs)")
    commit_a, commit_b = la.get("git_commit"), lb.get("git_commit")
    if commit_a != commit_b or la.get("git_dirty") != lb.get("git_dirty"):
        code_lines.append(f"git: {str(commit_a)[:12]}{' (dirty)' if la.get('git_dirty') else ''} -> "
                          f"{str(commit_b)[:12]}{' (dirty)' if lb.get('git_dirty') else ''}")
        if commit_a and commit_b and commit_a != commit_b:
            log = _git("log", "--oneline", f"{commit_a}..{commit_b}", "--", "quant_assets", "resources", "sensors")
            code_lines += [f"  {line}" for line in (log or "").splitlines()[:10]]
    if not code_lines:
        code_lines.append(f"same commit {str(commit_a)[:12]}")

    hashes = [(t, a.tags.get(t), b.tags.get(t)) for t in sorted(set(a.logged_hashes()) | set(b.logged_hashes()))]
    names = sorted(set(a.metrics) | set(b.metrics))
    first = [n for n in HEADLINE if n in names]
    rest = [n for n in names if n not in first and not same_number(a.metrics.get(n), b.metrics.get(n))]
    metrics = [(n, a.metrics.get(n), b.metrics.get(n)) for n in first + rest]
    packages = dict_changes(la.get("packages") or {}, lb.get("packages") or {})
    if la.get("python") != lb.get("python"):
        packages.append(f"python: {la.get('python')} -> {lb.get('python')}")
    return Explanation(
        asset=a.asset_key, runs=(a, b), tables=tables,
        features=dict_changes(la.get("feature_versions") or {}, lb.get("feature_versions") or {}),
        config=dict_changes(la.get("config") or {}, lb.get("config") or {}),
        seeds=dict_changes(la.get("seeds") or {}, lb.get("seeds") or {}),
        packages=packages, code=code_lines, hashes=hashes, metrics=metrics, notes=notes,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quant_assets explain",
                                     description="Why two runs of the same asset differ.")
    parser.add_argument("run_a", help="MLflow run id (e.g. yesterday's)")
    parser.add_argument("run_b", help="MLflow run id of the same asset (e.g. today's)")
    parser.add_argument("--reason", default="", help="why (audit trail; required when "
                        "QUANT_REQUIRE_REASON=1)")
    args = parser.parse_args(argv)
    from resources.model_registry import RegistryError, require_reason

    try:
        explanation = explain_runs(args.run_a, args.run_b, reason=require_reason(args.reason, "explain"))
    except (ReproduceError, RegistryError) as exc:
        print(f"explain: cannot compare: {exc}")
        return 2
    print(explanation.render())
    return 0 if explanation.identical else 1
