#!/usr/bin/env bash
# The wheels gpu.py's optional rows and its suite section need on a lent GPU machine, which the shared staging
# script leaves out: torchao (the FP8 row), liger-kernel (the Liger LayerNorm row; Triton comes with torch there)
# and pytest-xdist + execnet (the suite's -n).  Run after ../shared/device/stage-wheels.sh, from the project root:
#     bash ../shared/device/stage-wheels.sh && bash benchmarks/stage_extras.sh
# They go into .dw0/whl/, which that script's install.sh installs into /tmp/site on the machine (~4.5 MB more).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
[ -d .dw0/whl ] || { echo "no .dw0/whl: run bash ../shared/device/stage-wheels.sh first" >&2; exit 1; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .dw0/whl \
  "torchao==0.18.0" "liger-kernel==0.8.5" "pytest-xdist>=3.6" "execnet>=2.1"
ls .dw0/whl | grep -E '^(torchao|liger_kernel|pytest_xdist|execnet)-' | sed 's/^/staged /'
