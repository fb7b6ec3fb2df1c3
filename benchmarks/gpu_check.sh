#!/usr/bin/env bash
# GPU checks for a machine with an NVIDIA GPU (not CI): the GRU trains on CUDA, reruns are
# bit-identical, and the z-score grid's CUDA port against the CPU kernel on the host's cores.
#   bash benchmarks/gpu_check.sh [--fraction F]
# Wheels that the machine lacks (polars, lightgbm, exchange_calendars, ...) can be put in .whl/.
set -uo pipefail
cd "$(dirname "$0")/.."
FRACTION="${1:-1.0}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PWD" || exit 1
else
  export PYTHONPATH="$PWD"
fi
[ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ] && export CUDA_HOME=/usr/local/cuda
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, numba, numpy, llvmlite; print('torch', torch.__version__, 'numba', numba.__version__, 'llvmlite', llvmlite.__version__, 'numpy', numpy.__version__)"
echo "== GRU on CUDA: the model tests (the CUDA test runs here, not in CI)"
python3 -m pytest -q -p no:cacheprovider tests/models/test_seq.py -k "cuda or device or determin" -rs
echo "== GRU on CUDA: two trainings give the same weights"
python3 - <<'PY'
import dataclasses, sys
sys.path.insert(0, "tests/models")
import polars as pl, torch
from conftest import synthetic_frames
from quant_assets.models.seq import SeqConfig, train_seq
from quant_assets.models.walkforward import feature_columns, join_features_labels
feats, labels = synthetic_frames()
joined = join_features_labels(feats, labels)
cols = feature_columns(feats)
cfg = dataclasses.replace(SeqConfig(), device="cuda", epochs=2)
a, b = (train_seq(joined, cols, cfg) for _ in range(2))
print("device", a.metrics["device"], torch.cuda.get_device_name(0))
print("weights sha256", a.sha256, "rerun equal:", a.sha256 == b.sha256)
sys.exit(0 if a.sha256 == b.sha256 else 1)
PY
echo "== the z-score grid: CUDA vs the CPU kernel on this host's cores"
python3 benchmarks/grid_gpu.py --fraction 0.02 --repeats 1 || exit 1
python3 benchmarks/grid_gpu.py --fraction "$FRACTION"
