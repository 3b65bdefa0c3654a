#!/usr/bin/env bash
# One measurement call on a lent GPU machine, after the staging calls of ../shared/device/stage-wheels.sh (and
# benchmarks/stage_extras.sh): install what was staged, then gpu.py into $OUT, its log beside it.
#     call 3: carry [".dw0"], command: bash benchmarks/gpu_lease.sh 420 --sections model eval trainer reference \
#             loader profile compiled                                                 (timeout_s 480)
#     call 4: command: bash benchmarks/gpu_lease.sh 300 --sections suite --append     (same warm lease; timeout_s 330)
# Budgets for a 15-minute lease: ~30 s to start, ~10 s for calls 1-2, 20 s to install, then the budgets (gpu.py's
# includes its 40-60 s corpus); gpu.py skips (with a note) what would not fit.  Call 4 needs call 3's gpu.md copied to
# benchmarks/results/gpu.md here first (it travels with the working tree), or it writes the suite alone.
# Copy $OUT's gpu.md and gpu_profile.md into benchmarks/results/ here; the gpu_trace_*.json.gz beside them are the
# profiles' traces (read them in ui.perfetto.dev before the session ends: they are not committed).  gpu.py writes
# its table after every row, so a call stopped at the time limit still brings back what it measured.
set -euo pipefail
budget=${1:-420}
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
