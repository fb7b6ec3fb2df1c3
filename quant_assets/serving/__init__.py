"""Serving: daily scores by the registry's champion, the low-latency scorer, drift and
realised-vs-backtest monitoring (pure cores: scoring, drift, monitor, auth (scorer tokens),
latency (the scorer's p99 verdict from its /metrics); MLflow registry access: registry;
Dagster wiring: assets; HTTP: scorer_app)."""
