"""Loading the code location stays light: every Dagster run, step process (multiprocess
executor), code server and CLI imports ``quant_assets.definitions``; torch, LightGBM,
scikit-learn, SciPy and matplotlib are imported only where a model is trained or scored, a
statistic computed or a chart drawn (together ~2 s of CPU a process on a 2-core machine), and
MLflow only where something talks to MLflow (another ~2 s: loading the definitions took
10.3 s with it and 8.1 s without on a slow 2-core host; most steps never log to MLflow)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightgbm", "sklearn", "scipy.stats", "matplotlib", "mlflow")


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "QUANT_HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_loading_the_definitions_imports_no_model_or_chart_library(tmp_path):
    out = _python(
        "import sys, quant_assets.definitions\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "", f"imported when the code location loads: {out.stdout.strip()}"


def test_a_pickled_gru_loads_in_a_fresh_process(tmp_path):
    # MLflow logs the GRU as a pickle naming quant_assets.models.seq.SeqNet: the class is
    # defined on first use, and a process that has not built a net must still find it
    from quant_assets.models.seq import SeqConfig, SeqNet, _build_net

    net = _build_net(SeqConfig(hidden=4, layers=1), 3)
    assert type(net) is SeqNet and SeqNet.__module__ == "quant_assets.models.seq"
    path = tmp_path / "net.pkl"
    path.write_bytes(pickle.dumps(net))
    out = _python(
        "import pickle, sys\n"
        f"net = pickle.loads(open({str(path)!r}, 'rb').read())\n"
        "import quant_assets.models.seq as seq\n"
        "assert type(net) is seq.SeqNet, type(net)\n"
        "print(sum(p.numel() for p in net.parameters()))", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.strip()) == sum(p.numel() for p in net.parameters())


def test_with_the_calendar_cached_loading_imports_neither_pandas_nor_exchange_calendars(tmp_path):
    """The first process builds the trading calendar (pandas + exchange_calendars, ~1-1.5 s
    on a 2-core host) and caches it; the next one reads it instead (quant_assets.calendar)."""
    cache = tmp_path / "calendars"
    code = ("import os, sys, quant_assets.definitions\n"
            "print(','.join(m for m in ('pandas', 'exchange_calendars') if m in sys.modules))")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "QUANT_HOME": str(tmp_path),
           "QUANT_CALENDAR_CACHE": str(cache)}
    outs = [subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300) for _ in range(2)]
    assert all(o.returncode == 0 for o in outs), outs[0].stderr[-3000:] + outs[1].stderr[-3000:]
    assert outs[0].stdout.strip() == "pandas,exchange_calendars"  # built: nothing cached yet
    assert len(list(cache.iterdir())) == 1
    assert outs[1].stdout.strip() == "", f"imported with the calendar cached: {outs[1].stdout.strip()}"
