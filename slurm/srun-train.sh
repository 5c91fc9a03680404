#!/usr/bin/env bash
# Stage-command prefix for multi-node / multi-GPU jobs: put it at the head of runner.prefix,
#   runner.prefix: "slurm/srun-train.sh apptainer exec --nv --bind $PWD astrobatch.sif"
# The training stage of any study (`... astrobatch <study> train ...`) then runs under srun:
# one task per GPU on every node of the job, each with its rank from SLURM (Lightning's
# SLURMEnvironment; set <study>.training.devices = GPUs per node, num_nodes = nodes). Every
# other stage (simulate, prepare, evaluate) runs once, on the first node. Outside a SLURM job
# of more than one task, it just runs the command.
set -euo pipefail
args=("$@")
if [[ -n "${SLURM_JOB_ID:-}" && "${SLURM_NTASKS:-1}" -gt 1 ]]; then
  for ((i = 0; i + 2 < ${#args[@]}; i++)); do
    if [[ "$(basename -- "${args[i]}")" == astrobatch && "${args[i + 2]}" == train ]]; then
      exec srun --kill-on-bad-exit=1 "$@"
    fi
  done
fi
exec "$@"
