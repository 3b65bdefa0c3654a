#!/usr/bin/env bash
# One measurement call on a lent GPU machine, after the staging calls of ../shared/device/stage-wheels.sh (and
# benchmarks/stage_extras.sh): install what was staged, then gpu.py into $OUT, its log beside it.
#     call 3: carry [".dw0"], command: bash benchmarks/gpu_lease.sh 470              (every section but the suite)
#     call 4: command: bash benchmarks/gpu_lease.sh 500 --sections suite --append     (same warm lease; no install)
# Copy $OUT's gpu.md and gpu_profile.md into benchmarks/results/ here.  gpu.py writes its table after every row,
# so a call stopped at the time limit still brings back what it measured.
set -euo pipefail
budget=${1:-470}
shift || true
out=${OUT:?run on the device machine, where OUT is set}
export PYTHONPATH=/tmp/site:$PWD
if ! python3 -c "import deepspeed, nvidia.dali" > /dev/null 2>&1; then  # a warm lease keeps /tmp/site
  bash .dw0/install.sh
fi
if [ -f benchmarks/results/gpu.md ] && [[ " $* " == *" --append "* ]] && [ ! -f "$out/gpu.md" ]; then
  cp benchmarks/results/gpu.md "$out/gpu.md"  # --append adds to the table the first call brought back
fi
python3 benchmarks/gpu.py --out "$out/gpu.md" --budget "$budget" --work /tmp "$@" > "$out/gpu.log" 2>&1 || code=$?
tail -n 80 "$out/gpu.md" 2>/dev/null || tail -n 80 "$out/gpu.log"
exit "${code:-0}"
