"""Where every asset runs: the policy (``policy.py``, pure), the strict Kubernetes checks
(``kubernetes.py``) and the Dagster wiring (``apply.py``)."""
