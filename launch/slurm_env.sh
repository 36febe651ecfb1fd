#!/usr/bin/env bash
# Maps SLURM's variables to the ones cogito_jax.sharding.maybe_initialize_distributed reads.
# Sourced inside each srun task (and by the batch script); safe to source outside SLURM (does nothing).
if [ -n "${SLURM_JOB_ID:-}" ]; then
  first_node=$(scontrol show hostnames "${SLURM_JOB_NODELIST}" 2>/dev/null | head -n 1)
  first_node=${first_node:-${SLURMD_NODENAME:-localhost}}
  export COGITO_COORDINATOR="${first_node}:${COGITO_PORT:-12355}"
  export COGITO_NUM_PROCESSES="${SLURM_NTASKS:-${SLURM_NNODES:-1}}"
  export COGITO_PROCESS_ID="${SLURM_PROCID:-0}"
  # All of a node's GPUs belong to its one process.
  export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $(( ${SLURM_GPUS_ON_NODE:-8} - 1 )))}"
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
fi
