#!/usr/bin/env bash
# FSDP smoke test for a machine with >= 2 CUDA GPUs (the CPU-exact FSDP test runs in CI, on machines without a GPU) (e.g. 2 x H200), on the tiny checkpoint (no weights needed):
#   the GPU test: `accelerate launch --config_file examples/accelerate_fsdp.yaml --num_processes 2` (bf16, NCCL,
#      meta-device loading, fused AdamW on sharded params) vs a 1-GPU run — losses within 2 %, the exports in the
#      same format and close, and a resume from checkpoint-2 over NCCL.
# Prints one line "FSDP smoke: PASS ..." or "FSDP smoke: FAIL ..." at the end.
#   bash benchmarks/fsdp_smoke.sh           (PYTHON=... to pick an interpreter; default: python)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
n=$($PY -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "${n:-0}" -lt 2 ]; then echo "FSDP smoke: FAIL (needs >= 2 CUDA GPUs, found ${n:-0})"; exit 1; fi
log=$(mktemp)
$PY -m pytest -q -s -rs "tests/test_fsdp.py::test_fsdp_cuda" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
if [ "$rc" -eq 0 ] && grep -q "1 passed" "$log"; then
  echo "FSDP smoke: PASS (2 GPUs FSDP == 1 GPU within bf16 tolerance; exports same format; resume OK)"
else
  echo "FSDP smoke: FAIL (pytest exit $rc, see the log above: $log)"; exit 1
fi
