#!/bin/bash
# Saliency maps on several GPU nodes: one torchrun per node, one process per GPU.
#
#   sbatch --nodes 4 scripts/slurm_generate.sh MODEL METHODS DATA OUT [more generate options]
#   sbatch --nodes 4 scripts/slurm_generate.sh vgg16 tgrad,gradcam /shared/val /shared/runs --batch-size 128
#
# DATA and OUT must be on a filesystem every node sees: process 0 merges every process's shard store.
# Submitting the same job again (with any number of nodes) completes an interrupted run.

#SBATCH --job-name=xaibench-generate
# Nodes of the allocation (overridden by `sbatch --nodes N`).
#SBATCH --nodes=2
# One task per node: the torchrun that starts that node's GPU processes.
#SBATCH --ntasks-per-node=1
# GPUs per node: torchrun starts one process per GPU (--nproc-per-node below).
#SBATCH --gpus-per-node=8
# Cores per node, shared by the processes and their image-decoding workers.
#SBATCH --cpus-per-task=64
#SBATCH --time=12:00:00
# One log for the job; each process also logs to OUT/MODEL/logs/rank-K.log.
#SBATCH --output=xaibench-generate-%j.out

# Stop at the first failing command or unset variable.
set -euo pipefail

usage="usage: sbatch scripts/slurm_generate.sh MODEL METHODS DATA OUT [generate options]"
MODEL=${1:?$usage}
METHODS=${2:?$usage}
DATA=${3:?$usage}
OUT=${4:?$usage}
shift 4

# The first node of the allocation hosts the rendezvous where the processes of all nodes meet.
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# Any free port on that node; the job id keeps two jobs on one node apart.
RDZV_PORT=$((29500 + SLURM_JOB_ID % 1000))
# Processes per node: the GPUs SLURM gave this node.
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-8}
# Threads per process for PyTorch's CPU-side work (torchrun would set 1); decoding has --workers.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

# srun starts one torchrun per node (--ntasks-per-node=1) and stops the others if one fails;
# every torchrun joins the same rendezvous (id, backend, endpoint) and starts its GPUs' processes;
# each process explains its share of the images into its own shard store on cuda:LOCAL_RANK, and
# process 0 merges the shards into OUT/MODEL/METHOD.h5 when all are done.
srun --kill-on-bad-exit=1 torchrun \
    --nnodes "$SLURM_NNODES" \
    --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-id "$SLURM_JOB_ID" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$HEAD_NODE:$RDZV_PORT" \
    -m xaibench generate \
    --model "$MODEL" --saliency "$METHODS" --data "$DATA" --out "$OUT" \
    --cuda --workers 4 "$@"
