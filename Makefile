# Two entry points that work on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo demo-full demo-real test venv lint lock clean ui ui-full mlflow-ui reliability-nightly soak soak-execute soak-daemon soak-daemon-short

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and alone: only this exact pin resolves to the local CPU wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m quant_assets demo

# The demo at the size of its published figures (README): 100 instruments, 2022-01..2024-12,
# 24 model months (~2.5 min on 2 cores), with its own state under $QUANT_HOME/full. `make
# demo` runs the embedded default: 30 instruments, 4 model months (~35 s).
# (bash expands a command's assignments left to right: DAGSTER_HOME sees the new QUANT_HOME)
FULL_DEMO_ENV = QUANT_HOME=$${QUANT_HOME:-$$PWD/.quant}/full DAGSTER_HOME=$$QUANT_HOME/dagster \
	QUANT_START_DATE=2022-01-03 QUANT_END_DATE=2024-12-31 QUANT_FIRST_MODEL_MONTH=2023-01 QUANT_N_INSTRUMENTS=100
demo-full: $(STAMP)
	$(FULL_DEMO_ENV) $(PY) -m quant_assets demo

# The golden flow on real prices: skfolio's wheel's S&P 500 closes (20 survivors, adjusted,
# close-only; the S&P 500 index as benchmark) written into the documented file layout under
# $QUANT_HOME/real/data, then the same demo through QUANT_SOURCE=files; the run's own state
# (warehouse, MLflow, Dagster) under $QUANT_HOME/real. REAL_* narrow or widen it.
REAL_START ?= 2015-01-02
REAL_END ?= 2022-11-30
REAL_SYMBOLS ?=
demo-real: $(STAMP)
	real=$${QUANT_HOME:-$$PWD/.quant}/real; \
	$(PY) -m quant_assets.data.real_layout "$$real/data" --start $(REAL_START) --end $(REAL_END) \
	  $(if $(REAL_SYMBOLS),--symbols $(REAL_SYMBOLS)) && \
	QUANT_HOME="$$real" QUANT_SOURCE=files QUANT_DATA_DIR="$$real/data" $(PY) -m quant_assets demo

# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
# --dist loadfile: a test file (and its module-scoped servers/flows) stays on one worker;
# pytest-xdist 3.8 with pytest 9.2 ignores xdist_group under --dist loadgroup.
# --no-loadscope-reorder: deal the files in collection order (tests/conftest.py puts the
# end-to-end ones first); by default xdist deals the files with the most tests first, which
# left the minutes-long few-test files to the end (tests/test_suite_order.py).
XDIST_ARGS := -n 2 --dist loadfile --no-loadscope-reorder
test: $(STAMP)
	$(PY) -m pytest $(XDIST_ARGS) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; fi; exit $$rc

# every bad-input kind through a real run; >= 50 SIGKILLs of a range backfill (~30-40 min)
reliability-nightly: $(STAMP)
	QUANT_NIGHTLY=1 QUANT_CRASH_KILLS=$${QUANT_CRASH_KILLS:-50} $(PY) -m pytest -p no:cacheprovider \
	  $(XDIST_ARGS) tests/reliability tests/test_security.py tests/test_audit.py

# weeks of unattended operation (tests/test_automation.py over four month ends, two late
# restatements); prints days, evaluations, runs, materialisations and wall time (~5-10 min)
soak: $(STAMP)
	QUANT_SOAK=1 $(PY) -m pytest -p no:cacheprovider -q -s tests/test_automation.py

# the short range (2023-11-20..2023-12-12, 10 instruments) with every build really run:
# the daily runs, each tick's requested partitions, a person's promotion after the first
# month's models, a rejected landing file; prints the figures (a few minutes)
soak-execute: $(STAMP)
	QUANT_SOAK_EXECUTE=1 $(PY) -m pytest -p no:cacheprovider -q -s tests/test_automation.py -k execute

# the real dagster-daemon and a gRPC code server on a fake clock (libfaketime), fed by the
# daily schedule, landing files and the automation sensor (tests/daemon_soak.py); prints fake
# days, runs, materialisations and wall time. soak-daemon: 32 trading days, two month ends
# (about an hour); soak-daemon-short: 12 trading days, one month end (about 25 minutes).
# Both pass (figures in the README, "Automation: what runs by itself").
soak-daemon: $(STAMP)
	QUANT_SOAK=1 QUANT_SOAK_DAEMON=1 $(PY) -m pytest -p no:cacheprovider -q -s tests/test_daemon_soak.py

soak-daemon-short: $(STAMP)
	QUANT_SOAK_DAEMON=1 $(PY) -m pytest -p no:cacheprovider -q -s tests/test_daemon_soak.py

# ruff, and the layout's import contracts ([tool.importlinter] in pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-logo

ui: $(STAMP)
	DAGSTER_HOME=$${DAGSTER_HOME:-$$PWD/.quant/dagster} $(VENV)/bin/dagster dev -w workspace.yaml

# the UI over what `make demo-full` built (its range and universe, its state)
ui-full: $(STAMP)
	$(FULL_DEMO_ENV) $(VENV)/bin/dagster dev -w workspace.yaml

mlflow-ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri $${QUANT_MLFLOW_URI:-sqlite:///$$PWD/.quant/mlflow.db} --host 127.0.0.1 --port 5000

lock: $(STAMP)
	{ echo "# Full pinned tree used by 'make' (pip constraints). Regenerate with: make lock"; \
	  $(PY) -m pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/'; } > requirements.lock

clean:
	rm -rf .quant
