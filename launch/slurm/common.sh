# Sourced by the sbatch scripts: environment, rendezvous address and requeue-on-pre-emption.
# Edit the module / venv lines for your cluster.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"                       # the repository checkout you submitted from
# module load cuda/13.0                          # <- your cluster's modules, if any
source .venv/bin/activate                         # <- the environment made by `make test` / pip install -e .

export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
export MASTER_PORT="${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"

# SLURM sends USR1 to this batch shell shortly before the time limit (--signal=B:USR1@...): requeue the job.
# Requeueing stops the job steps with SIGTERM; the trainer checkpoints at the end of its current step and
# exits with 75, and the requeued job resumes from that checkpoint (run.resume=auto, same run.name).
requeue() { echo "time limit near: requeueing job $SLURM_JOB_ID"; scontrol requeue "$SLURM_JOB_ID"; }
trap requeue USR1

# Run "$@" in the background (so the trap can fire), then requeue if the trainer was pre-empted.
run_step() {
    "$@" &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done   # a trapped signal interrupts wait: wait again
    local rc=0
    wait "$pid" || rc=$?                                              # the step's own exit status
    if [ "$rc" -eq 75 ]; then requeue; fi
    if [ "$rc" -eq 2 ]; then   # a bad setting, or no checkpoint that verifies: a rerun would fail the same way
        echo "the run cannot continue as it is (exit 2: see the error above); job $SLURM_JOB_ID is not requeued"
    fi
    return "$rc"
}
