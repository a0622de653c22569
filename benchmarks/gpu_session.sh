#!/usr/bin/env bash
# One lent-GPU session in one call (see /work/.library/device/README.md for the tool): what the machine is, then
# correctness of every kernel against float64 (benchmarks/gpu_check.py), then speed (run.py full shapes for the
# row ops with the Pallas kernels, models.py, run.py for BatchNorm/GroupNorm), each step under its own time
# limit so a slow step cannot take the later ones down. Writes to $OUT (default benchmarks/out/gpu):
#   session.log, rows/results_full.json, chan/results_full.json, models_full.json
# torch_cpu and flax_nnx are skipped: on a GPU machine the CPU figure compares nothing, and flax.nnx runs
# flax.linen's math. Usage: bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-benchmarks/out/gpu}
mkdir -p "$OUT/rows" "$OUT/chan"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} XLA_PYTHON_CLIENT_MEM_FRACTION=0.5
PY=${PY:-python3}
SIZE=${SIZE:---full}  # SIZE=--smoke checks this script on any machine (figures meaningless)
MODELS_SIZE=$([ "$SIZE" = --smoke ] && echo --smoke)
step() {  # step SECONDS COMMAND...: run with a time limit, log everything, never stop the session
  local limit=$1; shift
  echo "=== $(date -u +%T) $* (limit ${limit}s)"
  timeout "$limit" "$@"
  echo "=== exit $? after ${SECONDS}s in all"
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import jax, flax, torch, sys; print(sys.version.split()[0], 'jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'torch', torch.__version__, torch.cuda.is_available())"
  step "${CHECK_S:-90}" $PY benchmarks/gpu_check.py $MODELS_SIZE
  step "${ROWS_S:-240}" $PY benchmarks/run.py $SIZE --repeats 10 --only layer_norm rms_norm \
    --skip torch_cpu flax_nnx --out "$OUT/rows"
  step "${MODELS_S:-100}" $PY benchmarks/models.py $MODELS_SIZE --repeats 10 --out "$OUT"
  step "${CHAN_S:-140}" $PY benchmarks/run.py $SIZE --repeats 10 --only batch_norm group_norm \
    --skip torch_cpu flax_nnx --out "$OUT/chan"
  rm -f "$OUT"/*/*.png "$OUT"/*.png  # regenerated from the JSON here; keeps the files that come back few
} 2>&1 | tee "$OUT/session.log"
