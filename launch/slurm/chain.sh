#!/bin/bash
# The SIT chain as dependent jobs: CochlScene, then TAU22 from its model.pt (starts only if cochl succeeded;
# a requeued cochl job keeps the same job id, so the dependency waits for it).
#   bash launch/slurm/chain.sh [single_node|multi_node|multi_node_torchrun] [key=value ...]
# Overrides apply to both stages (e.g. optim.method=seq_ft for the Seq-FT baseline).
# Edit the sbatch scripts for partition / GPUs / time; the AudioSet checkpoint path is init_from in configs/cochl.yaml.
set -euo pipefail
script="launch/slurm/${1:-single_node}.sbatch"
shift || true
name="chain-$(date +%Y%m%d-%H%M%S)"
cochl=$(sbatch --parsable "$script" --stage cochl "$@" run.name="$name")
tau=$(sbatch --parsable --dependency=afterok:"$cochl" "$script" --stage tau "$@" run.name="$name" \
      init_from="runs/cochl/$name/model.pt")
echo "submitted cochl job $cochl and tau job $tau (after cochl); runs/cochl/$name, runs/tau/$name"
