"""Validation stage: statistics (PSR, DSR, PBO, bootstrap, performance metrics), purged CV,
regimes, stress windows and factor exposures, the validation report and its HTML tear sheet,
the promotion gate and the champion promotion.

Pure cores: ``stats`` (also the benchmark-relative statistics), ``benchmark`` (the named
benchmark and which one suits the book), ``analysis`` (the tear sheet's drawdown, signal and
trading analyses), ``cv``, ``regimes``, ``report``, ``trials``, ``gate``, ``tearsheet`` (no
Dagster, no MLflow). ``promotion`` is the registry side (MlflowClient). ``assets`` and
``checks`` wire them into Dagster."""
