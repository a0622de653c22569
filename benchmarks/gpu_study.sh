#!/usr/bin/env bash
# Second lent-GPU call of issue 13's GPU item: where jaxnorm's time goes on a GPU (formulations.py's `gpu`
# study), and the model-level step with jaxnorm as shipped and with its CPU-tuned switches off. Writes to $OUT:
# study.log, models/models_full.json, models_off/models_full.json. Usage: bash benchmarks/gpu_study.sh
set -u
OUT=${OUT:-benchmarks/out/gpu}
mkdir -p "$OUT/models" "$OUT/models_off"
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
  step "${STUDY_S:-200}" $PY benchmarks/formulations.py --only gpu --repeats 20 $SMOKE
  step "${MODELS_S:-110}" $PY benchmarks/models.py $SMOKE --repeats 10 --out "$OUT/models"
  step "${MODELS_S:-100}" $PY -c "
import runpy, sys
from jaxnorm._src import fused, stats
stats._GUARD = stats._FRESH = False
fused.BLOCK_MIN_ROW = 1 << 62
sys.argv = ['models.py', *'$SMOKE'.split(), '--repeats', '10', '--out', '$OUT/models_off']
runpy.run_path('benchmarks/models.py', run_name='__main__')"
} 2>&1 | tee "$OUT/study.log"
