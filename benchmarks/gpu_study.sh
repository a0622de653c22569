#!/usr/bin/env bash
# Second lent-GPU call: the LayerNorm formulation study on the GPU (benchmarks/formulations.py: flax.linen,
# jaxnorm's default and extreme_range=True kernels, plain one- and two-pass jnp, the copy kernel; time and
# accuracy against float64) and the model-level step (benchmarks/models.py). jaxnorm has no switches to turn
# off any more (one branch-free kernel; its CPU scheduling hints lower to nothing on a GPU), so models.py runs
# once. Writes to $OUT: study.log, models/models_full.json. Usage: bash benchmarks/gpu_study.sh
set -u
OUT=${OUT:-benchmarks/out/gpu}
mkdir -p "$OUT/models"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} XLA_PYTHON_CLIENT_MEM_FRACTION=0.5
PY=${PY:-python3}
SMOKE=${SMOKE:-}  # SMOKE=--smoke checks this script on any machine
step() {
  local limit=$1; shift
  echo "=== $(date -u +%T) $* (limit ${limit}s)"
  timeout "$limit" "$@"
  echo "=== exit $? after ${SECONDS}s in all"
}
{
  step "${STUDY_S:-120}" $PY benchmarks/formulations.py --repeats 21 $SMOKE
  step "${MODELS_S:-110}" $PY benchmarks/models.py $SMOKE --repeats 10 --out "$OUT/models"
} 2>&1 | tee "$OUT/study.log"
