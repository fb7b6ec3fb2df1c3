"""Validation stage: statistics (PSR, DSR, PBO, bootstrap, performance metrics), purged CV and
the validation report. ``stats`` is a pure core (numpy/scipy only)."""
