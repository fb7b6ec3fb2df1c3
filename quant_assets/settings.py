"""One settings object for the whole platform, read from the environment.

Every variable has an embedded default so that a fresh checkout runs locally with no
configuration: everything a local run writes lives under QUANT_HOME (./.quant).

| variable | default | meaning |
|---|---|---|
| QUANT_HOME | ./.quant | root of all local state |
| QUANT_WAREHOUSE_URI | $QUANT_HOME/warehouse | Delta warehouse root (folder or s3://bucket/prefix) |
| QUANT_MLFLOW_URI | sqlite:///$QUANT_HOME/mlflow.db | MLflow tracking URI |
| QUANT_MLFLOW_ARTIFACTS | $QUANT_HOME/mlartifacts | default artifact root for new experiments |
| QUANT_MLFLOW_UI_URL | http://127.0.0.1:5000 | the MLflow UI that assets' run links open |
| DAGSTER_HOME | $QUANT_HOME/dagster | Dagster instance directory |
| QUANT_ENV | local | local (multiprocess executor) or k8s (k8s_job_executor) |
| QUANT_START_DATE | 2022-01-03 | first trading day of market data and daily partitions |
| QUANT_END_DATE | 2023-04-28 | last day of the range ("" = open-ended, up to today) |
| QUANT_FIRST_MODEL_MONTH | 2023-01 | first monthly partition (models, predictions, backtests) |
| QUANT_N_INSTRUMENTS | 30 | simulated universe size |
| QUANT_SEED | 7 | market simulator seed |
| QUANT_MODEL_SEED | 11 | model training seed |
| QUANT_CALENDAR | XNYS | exchange calendar (exchange_calendars name): sessions, partitions, horizons |
| QUANT_CALENDAR_CACHE | $XDG_CACHE_HOME/quant-assets/calendars | folder of the built calendars' cache (keyed by exchange_calendars version); off: build in every process |
| QUANT_CUTOFF_OFFSET | 0min | as-of cutoff of a session = its actual close + this offset (e.g. 30min, -15min, 1h30min) |
| QUANT_CUTOFF_TIME | "" | override: a fixed UTC time of day HH:MM instead of the session rule (ignores DST and half days) |
| QUANT_LABEL_HORIZON | 5 | label horizon h in trading days |
| QUANT_EMBARGO_DAYS | 5 | embargo, trading days, between training labels and the model month |
| QUANT_LANDING_DIR | $QUANT_HOME/landing | landing folder of the file source |
| QUANT_SOURCE | simulated | where the raw tables come from: simulated or files |
| QUANT_DATA_DIR | "" | folder in the documented layout (docs/data_layout.md); needed when QUANT_SOURCE=files |
| QUANT_FEATURE_MODULES | "" | comma-separated importable modules whose FEATURES join the feature catalogue (features/catalog.py) |
| QUANT_AUTOMATION | off | on: the automation sensor and the daily feature schedule start running by themselves (a deployment); off: switch them on in the UI |
| QUANT_AUTO_PROMOTE | wait | what a passing promotion gate does: wait (a person launches promotion_job) or promote (the automation promotes the gate's choice) |
| QUANT_FEATURE_DAYS_PER_RUN | 1040 | trading days per run of a pit_features range backfill (its BackfillPolicy) |
| QUANT_OPTUNA_STORAGE | sqlite:///$QUANT_HOME/optuna.db | the studies of adaptive sweeps (method: optuna); in a deployment a Postgres URL of its own schema (Optuna's tables would clash with MLflow's) |
| QUANT_SWEEP_TRIALS_PER_RUN | 50 | sweep trials per run (sweep_trials' BackfillPolicy, the sweep sensor's batches, `sweep --run`) |
| QUANT_LOCAL_EXECUTOR | multiprocess | local runs' executor: multiprocess (a process per step, the pools' limits) or in_process (the steps in the run's process: no import per step, no step parallelism) |
| QUANT_SIMULATOR_END | "" | last day the simulator draws when QUANT_END_DATE is empty ("" = today); fixes the simulated market while live partitions grow with a clock (tests/daemon_soak.py) |

The cutoff rule: with the defaults a regular XNYS session's cutoff is its 16:00 New York close,
21:00 UTC in winter and 20:00 UTC in summer; a half day's is earlier (2022-11-25: 18:00 UTC).
Set QUANT_CUTOFF_OFFSET to leave time for late data (bars known after the close must be known
by the cutoff to be seen the same day).
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from quant_assets import calendar


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None else value


def _parse_date(name: str, value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{name}={value!r} is not an ISO date (YYYY-MM-DD)") from exc


def _parse_int(name: str, value: str, minimum: int = 0) -> int:
    try:
        out = int(value)
    except ValueError as exc:
        raise ValueError(f"{name}={value!r} is not an integer") from exc
    if out < minimum:
        raise ValueError(f"{name}={value!r} must be >= {minimum}")
    return out


_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def parse_feature_modules(value: str, name: str = "QUANT_FEATURE_MODULES") -> tuple[str, ...]:
    """'pkg.mod, other' -> ('pkg.mod', 'other'): dotted module names, each once, in order."""
    out: list[str] = []
    for part in value.split(","):
        module = part.strip()
        if not module:
            continue
        if not _MODULE_NAME.match(module):
            raise ValueError(f"{name}={value!r}: {module!r} is not a dotted module name (e.g. my_research.features)")
        if module in out:
            raise ValueError(f"{name}={value!r} names {module!r} twice")
        out.append(module)
    return tuple(out)


_DURATION = re.compile(r"^([+-])?(?:(\d+)h)?(?:(\d+)min)?$")
SOURCES = ("simulated", "files")
AUTO_PROMOTE = ("wait", "promote")
LOCAL_EXECUTORS = ("multiprocess", "in_process")


def parse_duration(name: str, value: str) -> dt.timedelta:
    """'30min', '-15min', '1h', '1h30min' or '0' as a timedelta (errors name the variable)."""
    text = value.strip().replace(" ", "")
    match = _DURATION.match(text)
    if text in ("0", "+0", "-0"):
        return dt.timedelta(0)
    if not text or match is None or not (match.group(2) or match.group(3)):
        raise ValueError(f"{name}={value!r} is not a duration like 30min, -15min, 1h or 1h30min")
    sign = -1 if match.group(1) == "-" else 1
    return sign * dt.timedelta(hours=int(match.group(2) or 0), minutes=int(match.group(3) or 0))


def _cutoff_rule() -> calendar.Cutoff:
    fixed = _env("QUANT_CUTOFF_TIME", "")
    offset_raw = _env("QUANT_CUTOFF_OFFSET", "0min")
    offset = parse_duration("QUANT_CUTOFF_OFFSET", offset_raw)
    if not fixed:
        if abs(offset) >= dt.timedelta(hours=12):
            raise ValueError(f"QUANT_CUTOFF_OFFSET={offset_raw!r} must be within 12 hours of the close")
        return calendar.SessionCutoff(offset)
    if "QUANT_CUTOFF_OFFSET" in os.environ:
        raise ValueError("set QUANT_CUTOFF_TIME (a fixed UTC time) or QUANT_CUTOFF_OFFSET, not both")
    try:
        return dt.time.fromisoformat(fixed)
    except ValueError as exc:
        raise ValueError(f"QUANT_CUTOFF_TIME={fixed!r} is not HH:MM") from exc


@dataclass(frozen=True)
class Settings:
    quant_home: Path
    warehouse_uri: str
    mlflow_uri: str
    mlflow_artifacts: str
    dagster_home: Path
    env: str
    start_date: dt.date
    end_date: dt.date | None
    first_model_month: dt.date
    n_instruments: int
    seed: int
    model_seed: int
    # calendar.SessionCutoff (close + QUANT_CUTOFF_OFFSET) or a fixed UTC time of day
    cutoff_time: calendar.Cutoff
    label_horizon: int
    embargo_days: int
    landing_dir: Path
    calendar_name: str = calendar.DEFAULT_CALENDAR
    source: str = "simulated"
    data_dir: Path | None = None
    # plug-in feature modules, in catalogue order (quant_assets/features/catalog.py)
    feature_modules: tuple[str, ...] = ()
    automation: bool = False
    auto_promote: str = "wait"
    # pit_features' BackfillPolicy.multi_run(max_partitions_per_run=...): about four years a run
    feature_days_per_run: int = 1040
    # sweep_trials' BackfillPolicy.multi_run(max_partitions_per_run=...): a run loads the
    # inputs once for its batch of trials, and opens one MLflow child run for them
    sweep_trials_per_run: int = 50
    # Optuna's RDB storage of adaptive sweeps (trials/adaptive.py)
    optuna_storage: str = ""
    # where researchers open MLflow (`make mlflow-ui`): assets link each run there
    mlflow_ui_url: str = "http://127.0.0.1:5000"
    # the executor of local runs: "multiprocess" or "in_process"
    local_executor: str = "multiprocess"
    # the simulator's last day with live partitions (QUANT_END_DATE empty); None = today
    simulator_end: dt.date | None = None

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(_env("QUANT_HOME", ".quant")).expanduser().resolve()
        env = _env("QUANT_ENV", "local")
        if env not in ("local", "k8s"):
            raise ValueError(f"QUANT_ENV={env!r} must be 'local' or 'k8s'")
        end_raw = _env("QUANT_END_DATE", "2023-04-28")
        start = _parse_date("QUANT_START_DATE", _env("QUANT_START_DATE", "2022-01-03"))
        end = _parse_date("QUANT_END_DATE", end_raw) if end_raw else None
        if end is not None and end < start:
            raise ValueError(f"QUANT_END_DATE={end} is before QUANT_START_DATE={start}")
        fmm_raw = _env("QUANT_FIRST_MODEL_MONTH", "2023-01")
        first_model_month = _parse_date("QUANT_FIRST_MODEL_MONTH", fmm_raw + "-01")
        if first_model_month <= start:
            raise ValueError(
                f"QUANT_FIRST_MODEL_MONTH={fmm_raw} leaves no training history after "
                f"QUANT_START_DATE={start}"
            )
        cutoff_time = _cutoff_rule()
        calendar_name = _env("QUANT_CALENDAR", calendar.DEFAULT_CALENDAR)
        calendar.sessions(calendar_name)  # an unknown name fails here, naming the variable
        source = _env("QUANT_SOURCE", "simulated")
        if source not in SOURCES:
            raise ValueError(f"QUANT_SOURCE={source!r} must be one of {SOURCES}")
        data_raw = _env("QUANT_DATA_DIR", "")
        data_dir = Path(data_raw).expanduser().resolve() if data_raw else None
        if source == "files" and data_dir is None:
            raise ValueError("QUANT_SOURCE=files needs QUANT_DATA_DIR=<folder in the documented layout>")
        automation = _env("QUANT_AUTOMATION", "off").strip().lower()
        if automation not in ("on", "off"):
            raise ValueError(f"QUANT_AUTOMATION={automation!r} must be 'on' or 'off'")
        auto_promote = _env("QUANT_AUTO_PROMOTE", "wait").strip().lower()
        if auto_promote not in AUTO_PROMOTE:
            raise ValueError(f"QUANT_AUTO_PROMOTE={auto_promote!r} must be one of {AUTO_PROMOTE}")
        local_executor = _env("QUANT_LOCAL_EXECUTOR", "multiprocess").strip().lower()
        if local_executor not in LOCAL_EXECUTORS:
            raise ValueError(f"QUANT_LOCAL_EXECUTOR={local_executor!r} must be one of {LOCAL_EXECUTORS}")
        sim_end_raw = _env("QUANT_SIMULATOR_END", "")
        simulator_end = _parse_date("QUANT_SIMULATOR_END", sim_end_raw) if sim_end_raw else None
        warehouse = _env("QUANT_WAREHOUSE_URI", str(home / "warehouse"))
        return cls(
            quant_home=home,
            warehouse_uri=warehouse,
            mlflow_uri=_env("QUANT_MLFLOW_URI", f"sqlite:///{home / 'mlflow.db'}"),
            mlflow_artifacts=_env("QUANT_MLFLOW_ARTIFACTS", str(home / "mlartifacts")),
            dagster_home=Path(_env("DAGSTER_HOME", str(home / "dagster"))).resolve(),
            env=env,
            start_date=start,
            end_date=end,
            first_model_month=first_model_month,
            n_instruments=_parse_int("QUANT_N_INSTRUMENTS", _env("QUANT_N_INSTRUMENTS", "30"), 2),
            seed=_parse_int("QUANT_SEED", _env("QUANT_SEED", "7")),
            model_seed=_parse_int("QUANT_MODEL_SEED", _env("QUANT_MODEL_SEED", "11")),
            cutoff_time=cutoff_time,
            label_horizon=_parse_int("QUANT_LABEL_HORIZON", _env("QUANT_LABEL_HORIZON", "5"), 1),
            embargo_days=_parse_int("QUANT_EMBARGO_DAYS", _env("QUANT_EMBARGO_DAYS", "5")),
            landing_dir=Path(_env("QUANT_LANDING_DIR", str(home / "landing"))).resolve(),
            calendar_name=calendar_name,
            source=source,
            data_dir=data_dir,
            feature_modules=parse_feature_modules(_env("QUANT_FEATURE_MODULES", "")),
            automation=automation == "on",
            auto_promote=auto_promote,
            feature_days_per_run=_parse_int("QUANT_FEATURE_DAYS_PER_RUN",
                                            _env("QUANT_FEATURE_DAYS_PER_RUN", "1040"), 1),
            optuna_storage=_env("QUANT_OPTUNA_STORAGE", f"sqlite:///{home / 'optuna.db'}"),
            sweep_trials_per_run=_parse_int("QUANT_SWEEP_TRIALS_PER_RUN",
                                            _env("QUANT_SWEEP_TRIALS_PER_RUN", "50"), 1),
            mlflow_ui_url=_env("QUANT_MLFLOW_UI_URL", "http://127.0.0.1:5000").rstrip("/"),
            local_executor=local_executor,
            simulator_end=simulator_end,
        )

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


def get_settings() -> Settings:
    """The settings as the environment says now (command line, tests)."""
    return Settings.from_env()


@functools.cache
def load_settings() -> Settings:
    """The settings of this process's code location, read once: partitions, assets, sensors
    and resources built at load time must all see the same values."""
    return Settings.from_env()
