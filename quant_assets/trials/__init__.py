"""Sweeps: search spaces of model hyper-parameters x strategy parameters, trials run as
dynamic partitions, the trial registry that the validation report counts (DSR, PBO)."""
