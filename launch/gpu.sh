#!/usr/bin/env bash
# Runs a svfap_jax command on the GPUs of one host (or of several hosts started by hand).
#
#   launch/gpu.sh --config configs/pretrain_voxceleb2.py --workdir gs://bucket/runs/p \
#       -- --config.data.dir=/data/vox2
#   launch/gpu.sh --processes-per-host 8 --command finetune --config configs/finetune_dfew.py \
#       --workdir /runs/dfew1 -- --config.data.dir=/data/dfew_fold1 --config.init_from=/runs/p
#
# Default: one process drives every local GPU (no jax.distributed). With --processes-per-host N,
# N processes each see one GPU (CUDA_VISIBLE_DEVICES) and join through jax.distributed
# (--coordinator HOST:PORT --num-processes --process-id); process 0's output is shown, every
# process logs to LOG_DIR/process_<i>.log. Several hosts: run the same line on each with
# --num-hosts M --host-rank R --coordinator-host HOST0.
#
# XLA flags set here (XLA_FLAGS; --xla-flags adds more, --no-xla-flags drops these):
#   --xla_gpu_enable_latency_hiding_scheduler=true
#       schedules the gradient all-reduce (data parallel) and the parameter all-gathers /
#       gradient reduce-scatters (fsdp) asynchronously so they overlap with the backward and
#       forward matmuls instead of serialising after them; the single largest multi-GPU win.
#   --xla_gpu_all_reduce_combine_threshold_bytes=134217728 (and the all-gather / reduce-scatter
#   twins)
#       lets XLA merge the per-parameter collectives into ~128 MiB ones: SVFAP-B has ~300
#       parameter arrays, and many small NCCL calls are latency-bound.
# Environment:
#   XLA_PYTHON_CLIENT_MEM_FRACTION=0.92  JAX preallocates this share of each GPU (default 0.75);
#       the larger pool fits a larger per-device batch.
# Worth measuring per machine (bench/step_throughput.py), not set by default:
#   --xla_gpu_enable_triton_gemm=false   cuBLAS for every matmul instead of autotuned Triton
#       fusions: shorter compiles, and sometimes faster when autotuning picks poorly.
#   --xla_gpu_enable_command_buffer=     (empty) disables CUDA graphs if a driver misbehaves.
#
# --dry-run prints the environment and commands instead of running them.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
usage: launch/gpu.sh [options] [-- ARGS for python -m svfap_jax]

  --command CMD               pretrain (default) | finetune | kfold | evaluate
  --config FILE               run config (required)
  --workdir DIR               run directory, local or gs:// (required)
  --processes-per-host N      N processes with one GPU each (default: 1 process, all GPUs)
  --gpus LIST                 GPUs to use, e.g. 0,1,2,3 (default: all, from nvidia-smi)
  --num-hosts M               hosts taking part (default 1)
  --host-rank R               this host's rank, 0..M-1 (default 0)
  --coordinator-host HOST     host of process 0 (default 127.0.0.1; required with M > 1)
  --port PORT                 coordinator port (default 12355)
  --log-dir DIR               per-process logs (default ./gpu_logs)
  --python EXE                interpreter (default: python, or $PYTHON)
  --xla-flags FLAGS           extra XLA flags appended to the defaults
  --no-xla-flags              do not set the default XLA flags
  --dry-run                   print instead of running
  -h, --help                  this text
EOF
}

COMMAND="pretrain"
CONFIG=""
WORKDIR=""
PER_HOST=0
GPUS=""
NUM_HOSTS=1
HOST_RANK=0
COORD_HOST="127.0.0.1"
PORT=12355
LOG_DIR="gpu_logs"
PYTHON_BIN="${PYTHON:-python}"
EXTRA_XLA=""
DEFAULT_XLA=1
DRY_RUN=0
EXTRA=()

while (($#)); do
  case "$1" in
    --command) COMMAND="${2:?--command needs a value}"; shift 2 ;;
    --config) CONFIG="${2:?--config needs a value}"; shift 2 ;;
    --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
    --processes-per-host) PER_HOST="${2:?--processes-per-host needs a value}"; shift 2 ;;
    --gpus) GPUS="${2:?--gpus needs a value}"; shift 2 ;;
    --num-hosts) NUM_HOSTS="${2:?--num-hosts needs a value}"; shift 2 ;;
    --host-rank) HOST_RANK="${2:?--host-rank needs a value}"; shift 2 ;;
    --coordinator-host) COORD_HOST="${2:?--coordinator-host needs a value}"; shift 2 ;;
    --port) PORT="${2:?--port needs a value}"; shift 2 ;;
    --log-dir) LOG_DIR="${2:?--log-dir needs a value}"; shift 2 ;;
    --python) PYTHON_BIN="${2:?--python needs a value}"; shift 2 ;;
    --xla-flags) EXTRA_XLA="${2:?--xla-flags needs a value}"; shift 2 ;;
    --no-xla-flags) DEFAULT_XLA=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
done

check_run_args "$COMMAND" "$CONFIG" "$WORKDIR"
[[ "$PER_HOST" =~ ^[0-9]+$ && "$NUM_HOSTS" =~ ^[1-9][0-9]*$ && "$HOST_RANK" =~ ^[0-9]+$ ]] ||
  die "--processes-per-host, --num-hosts and --host-rank take whole numbers"
((HOST_RANK < NUM_HOSTS)) || die "--host-rank $HOST_RANK must be below --num-hosts $NUM_HOSTS"
if ((NUM_HOSTS > 1)) && [[ "$COORD_HOST" == 127.0.0.1 ]]; then
  die "--num-hosts $NUM_HOSTS needs --coordinator-host (the address of host rank 0)"
fi

if [[ -z "$GPUS" ]]; then
  if ((DRY_RUN)) && ! command -v nvidia-smi >/dev/null; then
    GPUS="0,1,2,3,4,5,6,7"   # what a dry run on a machine without GPUs shows
  else
    GPUS="$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)"
  fi
fi
IFS=, read -r -a GPU_LIST <<<"$GPUS"
((${#GPU_LIST[@]})) || die "no GPUs found (pass --gpus)"

XLA="${XLA_FLAGS:-}"
if ((DEFAULT_XLA)); then
  XLA+=" --xla_gpu_enable_latency_hiding_scheduler=true"
  XLA+=" --xla_gpu_all_reduce_combine_threshold_bytes=134217728"
  XLA+=" --xla_gpu_all_gather_combine_threshold_bytes=134217728"
  XLA+=" --xla_gpu_reduce_scatter_combine_threshold_bytes=134217728"
fi
XLA+=" $EXTRA_XLA"
XLA="$(echo "$XLA" | xargs)"   # tidy the spaces
MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"

BASE=("$PYTHON_BIN" -m svfap_jax "$COMMAND" --config "$CONFIG" --workdir "$WORKDIR"
      ${EXTRA[@]+"${EXTRA[@]}"})

if ((PER_HOST == 0)); then
  # One process, every listed GPU.
  ((NUM_HOSTS == 1)) || die "--num-hosts > 1 needs --processes-per-host"
  ENV=(CUDA_VISIBLE_DEVICES="$GPUS" XLA_FLAGS="$XLA" XLA_PYTHON_CLIENT_MEM_FRACTION="$MEM_FRACTION")
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(quote env "${ENV[@]}" "${BASE[@]}")"
    exit 0
  fi
  exec env "${ENV[@]}" "${BASE[@]}"
fi

((PER_HOST <= ${#GPU_LIST[@]})) || die "--processes-per-host $PER_HOST but only ${#GPU_LIST[@]} GPUs"
TOTAL=$((PER_HOST * NUM_HOSTS))
COORD="$COORD_HOST:$PORT"
((DRY_RUN)) || mkdir -p "$LOG_DIR"
PIDS=()

stop_all() {  # forwards SIGTERM (the runs checkpoint before exiting)
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
}
trap stop_all INT TERM

for ((i = 0; i < PER_HOST; i++)); do
  rank=$((HOST_RANK * PER_HOST + i))
  env_i=(CUDA_VISIBLE_DEVICES="${GPU_LIST[$i]}" JAX_LOCAL_DEVICE_IDS=0 XLA_FLAGS="$XLA"
         XLA_PYTHON_CLIENT_MEM_FRACTION="$MEM_FRACTION")
  cmd_i=("${BASE[@]}" --coordinator "$COORD" --num-processes "$TOTAL" --process-id "$rank")
  if ((DRY_RUN)); then
    printf '+ %s > %s 2>&1 &\n' "$(quote env "${env_i[@]}" "${cmd_i[@]}")" "$LOG_DIR/process_$rank.log"
    continue
  fi
  env "${env_i[@]}" "${cmd_i[@]}" >"$LOG_DIR/process_$rank.log" 2>&1 &
  PIDS+=("$!")
done
((DRY_RUN)) && exit 0

echo "gpu.sh: $PER_HOST processes started (ranks $((HOST_RANK * PER_HOST))..$((HOST_RANK * PER_HOST + PER_HOST - 1)) of $TOTAL); logs in $LOG_DIR" >&2
tail -n +1 -F "$LOG_DIR/process_$((HOST_RANK * PER_HOST)).log" &
TAIL=$!
status=0
for pid in "${PIDS[@]}"; do
  if ! wait "$pid"; then
    status=1
    stop_all   # one failed process would leave the others waiting at a collective
  fi
done
kill "$TAIL" 2>/dev/null || true
exit "$status"
