#!/usr/bin/env bash
# Submits a multi-node GPU run of a svfap_jax command to SLURM.
#
#   launch/slurm.sh --nodes 2 --gpus-per-node 8 --partition gpu --time 48:00:00 \
#       --setup 'source ~/svfap_venv/bin/activate' \
#       --config configs/pretrain_voxceleb2.py --workdir /shared/runs/pretrain_base \
#       -- --config.data.dir=/shared/data/vox2
#
# Writes an sbatch script and submits it. Inside the job `srun` starts one task per node (each
# driving all of its node's GPUs; default) or one task per GPU (--per-gpu); SVFAP_DISTRIBUTED=1
# makes jax.distributed.initialize() read the coordinator, process count and process id from
# SLURM's environment. With one task per GPU, JAX gives each task the GPU numbered SLURM_LOCALID;
# with one task per node, JAX_LOCAL_DEVICE_IDS hands it every GPU of the node (JAX would
# otherwise pick GPU SLURM_LOCALID = 0 only).
# The job asks SLURM for SIGTERM 5 minutes before its time limit (--signal): the run checkpoints
# and exits, and submitting the same command again resumes it.
#
# --dry-run prints the sbatch script and the submit command instead.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
usage: launch/slurm.sh [options] [-- ARGS for python -m svfap_jax]

job:
  --nodes N               nodes (default 1)
  --gpus-per-node G       GPUs per node (default 8)
  --per-gpu               one task per GPU (default: one task per node)
  --cpus-per-task C       CPU cores per task (default: SLURM's)
  --partition P           partition
  --account A             account
  --qos Q                 quality of service
  --time T                time limit (default 24:00:00)
  --job-name NAME         (default svfap-<command>)
  --output PATTERN        log file (default slurm-%x-%j.out)
  --sbatch-arg ARG        extra #SBATCH line, repeatable (e.g. --sbatch-arg=--exclusive)
run:
  --command CMD           pretrain (default) | finetune | kfold | evaluate
  --config FILE           run config (required)
  --workdir DIR           run directory on shared storage or gs:// (required)
  --setup LINE            shell line run before srun (module load, venv activation), repeatable
  --python EXE            interpreter on the nodes (default python)
  --repo DIR              checkout the job runs in (default: the one holding this script)
  --script FILE           where to write the sbatch script (default slurm_svfap_<command>.sbatch)
  --xla-flags FLAGS       extra XLA flags
  --no-xla-flags          do not set the default XLA flags (see launch/gpu.sh)
  --dry-run               print the script and the sbatch command instead of submitting
  -h, --help              this text
EOF
}

NODES=1
GPUS=8
PER_GPU=0
CPUS=""
PARTITION=""
ACCOUNT=""
QOS=""
TIME="24:00:00"
JOB_NAME=""
OUTPUT="slurm-%x-%j.out"
SBATCH_ARGS=()
COMMAND="pretrain"
CONFIG=""
WORKDIR=""
SETUP=()
PYTHON_BIN="python"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT=""
EXTRA_XLA=""
DEFAULT_XLA=1
DRY_RUN=0
EXTRA=()

while (($#)); do
  case "$1" in
    --nodes) NODES="${2:?--nodes needs a value}"; shift 2 ;;
    --gpus-per-node) GPUS="${2:?--gpus-per-node needs a value}"; shift 2 ;;
    --per-gpu) PER_GPU=1; shift ;;
    --cpus-per-task) CPUS="${2:?--cpus-per-task needs a value}"; shift 2 ;;
    --partition) PARTITION="${2:?--partition needs a value}"; shift 2 ;;
    --account) ACCOUNT="${2:?--account needs a value}"; shift 2 ;;
    --qos) QOS="${2:?--qos needs a value}"; shift 2 ;;
    --time) TIME="${2:?--time needs a value}"; shift 2 ;;
    --job-name) JOB_NAME="${2:?--job-name needs a value}"; shift 2 ;;
    --output) OUTPUT="${2:?--output needs a value}"; shift 2 ;;
    --sbatch-arg) SBATCH_ARGS+=("${2:?--sbatch-arg needs a value}"); shift 2 ;;
    --sbatch-arg=*) SBATCH_ARGS+=("${1#--sbatch-arg=}"); shift ;;
    --command) COMMAND="${2:?--command needs a value}"; shift 2 ;;
    --config) CONFIG="${2:?--config needs a value}"; shift 2 ;;
    --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
    --setup) SETUP+=("${2:?--setup needs a value}"); shift 2 ;;
    --python) PYTHON_BIN="${2:?--python needs a value}"; shift 2 ;;
    --repo) REPO="${2:?--repo needs a value}"; shift 2 ;;
    --script) SCRIPT="${2:?--script needs a value}"; shift 2 ;;
    --xla-flags) EXTRA_XLA="${2:?--xla-flags needs a value}"; shift 2 ;;
    --no-xla-flags) DEFAULT_XLA=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
done

check_run_args "$COMMAND" "$CONFIG" "$WORKDIR"
[[ "$NODES" =~ ^[1-9][0-9]*$ && "$GPUS" =~ ^[1-9][0-9]*$ ]] ||
  die "--nodes and --gpus-per-node take positive whole numbers"
JOB_NAME="${JOB_NAME:-svfap-$COMMAND}"
SCRIPT="${SCRIPT:-slurm_svfap_$COMMAND.sbatch}"
TASKS_PER_NODE=$((PER_GPU ? GPUS : 1))

XLA=""
if ((DEFAULT_XLA)); then
  XLA="--xla_gpu_enable_latency_hiding_scheduler=true"
  XLA+=" --xla_gpu_all_reduce_combine_threshold_bytes=134217728"
  XLA+=" --xla_gpu_all_gather_combine_threshold_bytes=134217728"
  XLA+=" --xla_gpu_reduce_scatter_combine_threshold_bytes=134217728"
fi
XLA="$(echo "$XLA $EXTRA_XLA" | xargs)"

render() {
  echo "#!/bin/bash"
  echo "#SBATCH --job-name=$JOB_NAME"
  echo "#SBATCH --nodes=$NODES"
  echo "#SBATCH --ntasks-per-node=$TASKS_PER_NODE"
  echo "#SBATCH --gpus-per-node=$GPUS"
  [[ -n "$CPUS" ]] && echo "#SBATCH --cpus-per-task=$CPUS"
  [[ -n "$PARTITION" ]] && echo "#SBATCH --partition=$PARTITION"
  [[ -n "$ACCOUNT" ]] && echo "#SBATCH --account=$ACCOUNT"
  [[ -n "$QOS" ]] && echo "#SBATCH --qos=$QOS"
  echo "#SBATCH --time=$TIME"
  echo "#SBATCH --output=$OUTPUT"
  echo "#SBATCH --signal=TERM@300"
  local arg line
  for arg in ${SBATCH_ARGS[@]+"${SBATCH_ARGS[@]}"}; do
    echo "#SBATCH $arg"
  done
  echo "set -euo pipefail"
  echo "cd $(quote "$REPO")"
  for line in ${SETUP[@]+"${SETUP[@]}"}; do
    echo "$line"
  done
  echo "export SVFAP_DISTRIBUTED=1"
  echo "export XLA_FLAGS=$(quote "$XLA")"
  echo "export XLA_PYTHON_CLIENT_MEM_FRACTION=\${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
  if ((!PER_GPU)); then
    local ids
    ids="$(seq -s, 0 $((GPUS - 1)))"
    echo "export JAX_LOCAL_DEVICE_IDS=$ids   # one task drives every GPU of its node"
  fi
  echo "srun --kill-on-bad-exit=1 --ntasks-per-node=$TASKS_PER_NODE $(quote "$PYTHON_BIN" -m svfap_jax "$COMMAND" --config "$CONFIG" --workdir "$WORKDIR" ${EXTRA[@]+"${EXTRA[@]}"})"
}

if ((DRY_RUN)); then
  echo "# $SCRIPT"
  render
  printf '+ %s\n' "$(quote sbatch "$SCRIPT")"
  exit 0
fi
render >"$SCRIPT"
echo "slurm.sh: wrote $SCRIPT" >&2
exec sbatch "$SCRIPT"
