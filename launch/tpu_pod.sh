#!/usr/bin/env bash
# Runs a svfap_jax command on every worker of a Cloud TPU VM slice.
#
#   launch/tpu_pod.sh --name svfap-v4 --zone us-central2-b --project my-project \
#       --accelerator-type v4-32 --command pretrain --config configs/pretrain_voxceleb2.py \
#       --workdir gs://my-bucket/runs/pretrain_base --gcsfuse my-bucket:/mnt/my-bucket \
#       -- --config.data.dir=/mnt/my-bucket/vox2
#
# Steps: create the slice unless it exists; copy this checkout to every worker and install it
# with its requirements and jax[tpu] into a venv; optionally mount a bucket with gcsfuse (the
# record reader needs file paths); start `python -m svfap_jax <command>` on all workers at once
# with SVFAP_DISTRIBUTED=1 (jax.distributed.initialize() finds the slice by itself); then stream
# worker 0's log. The run survives the end of the log stream (nohup); stop it with --stop (SIGTERM:
# it checkpoints first) and remove the slice with --delete.
#
# --dry-run prints every command instead of running it.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh --name NAME --zone ZONE [options] [-- ARGS for python -m svfap_jax]

slice:
  --name NAME               TPU VM name (required)
  --zone ZONE               zone, e.g. us-central2-b (required)
  --project PROJECT         Google Cloud project (default: gcloud's configured project)
  --accelerator-type TYPE   v4-32 (default), v5litepod-16, v5p-32, v6e-16, ...
  --version RUNTIME         TPU software version (default by type: tpu-ubuntu2204-base for v4,
                            v2-alpha-tpuv5-lite, v2-alpha-tpuv5, v2-alpha-tpuv6e)
  --spot                    create a Spot slice (runs resume from their last checkpoint)
  --no-create               fail instead of creating a missing slice
run:
  --command CMD             pretrain (default) | finetune | kfold | evaluate
  --config FILE             run config, e.g. configs/pretrain_voxceleb2.py (required to run)
  --workdir DIR             run directory; gs://bucket/... (required to run)
  --gcsfuse BUCKET:MOUNT    mount gs://BUCKET at MOUNT on every worker (datasets are read
                            through file paths)
  --repo DIR                checkout to install (default: the one holding this script)
  --skip-setup              the workers already have this checkout installed
  --no-follow               start the run and return without streaming worker 0's log
actions instead of a run:
  --setup-only              create/reuse the slice and install, start nothing
  --logs                    stream worker 0's log of the current run
  --stop                    SIGTERM the run on every worker (it checkpoints, then exits)
  --delete                  delete the slice
  --dry-run                 print the commands instead of running them
  -h, --help                this text
EOF
}

# Prints arguments as one shell-reusable line.
DRY_RUN=0
run() {
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(quote "$@")"
  else
    "$@"
  fi
}

NAME=""
ZONE=""
PROJECT=""
ACCELERATOR="v4-32"
VERSION=""
SPOT=0
CREATE=1
COMMAND="pretrain"
CONFIG=""
WORKDIR=""
GCSFUSE=""
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SETUP=1
FOLLOW=1
ACTION="run"
EXTRA=()

while (($#)); do
  case "$1" in
    --name) NAME="${2:?--name needs a value}"; shift 2 ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --accelerator-type) ACCELERATOR="${2:?--accelerator-type needs a value}"; shift 2 ;;
    --version) VERSION="${2:?--version needs a value}"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --no-create) CREATE=0; shift ;;
    --command) COMMAND="${2:?--command needs a value}"; shift 2 ;;
    --config) CONFIG="${2:?--config needs a value}"; shift 2 ;;
    --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
    --gcsfuse) GCSFUSE="${2:?--gcsfuse needs BUCKET:MOUNT}"; shift 2 ;;
    --repo) REPO="${2:?--repo needs a value}"; shift 2 ;;
    --skip-setup) SETUP=0; shift ;;
    --no-follow) FOLLOW=0; shift ;;
    --setup-only) ACTION="setup"; shift ;;
    --logs) ACTION="logs"; shift ;;
    --stop) ACTION="stop"; shift ;;
    --delete) ACTION="delete"; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
done

[[ -n "$NAME" ]] || die "--name is required"
[[ -n "$ZONE" ]] || die "--zone is required"
case "$COMMAND" in
  pretrain | finetune | kfold | evaluate) ;;
  *) die "--command must be pretrain, finetune, kfold or evaluate (got $COMMAND)" ;;
esac
if [[ -z "$VERSION" ]]; then
  case "$ACCELERATOR" in
    v5litepod-* | v5e-*) VERSION="v2-alpha-tpuv5-lite" ;;
    v5p-*) VERSION="v2-alpha-tpuv5" ;;
    v6e-*) VERSION="v2-alpha-tpuv6e" ;;
    *) VERSION="tpu-ubuntu2204-base" ;;
  esac
fi

LOCATION=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && LOCATION+=(--project="$PROJECT")
TPU=(gcloud compute tpus tpu-vm)
# These expand on the workers, not here.
# shellcheck disable=SC2016
REMOTE_DIR='$HOME/svfap_jax'
# shellcheck disable=SC2016
VENV='$HOME/svfap_venv'
# shellcheck disable=SC2016
LOG='$HOME/svfap_run.log'
# shellcheck disable=SC2016
PID='$HOME/svfap_run.pid'

on_workers() {  # on_workers WORKER REMOTE_COMMAND
  run "${TPU[@]}" ssh "$NAME" "${LOCATION[@]}" --worker="$1" --quiet --command="$2"
}

ensure_slice() {
  if ((DRY_RUN)); then
    echo "# create the slice unless 'describe' finds it:"
    run "${TPU[@]}" describe "$NAME" "${LOCATION[@]}"
  elif "${TPU[@]}" describe "$NAME" "${LOCATION[@]}" >/dev/null 2>&1; then
    echo "tpu_pod.sh: reusing slice $NAME" >&2
    return
  elif ((!CREATE)); then
    die "slice $NAME does not exist (and --no-create was given)"
  fi
  local create=("${TPU[@]}" create "$NAME" "${LOCATION[@]}" --accelerator-type="$ACCELERATOR"
                --version="$VERSION")
  if ((SPOT)); then
    create+=(--spot)
  fi
  run "${create[@]}"
}

setup_workers() {
  local tarball="${TMPDIR:-/tmp}/svfap_jax.$$.tgz"
  run tar -C "$REPO" --exclude=.git --exclude=.venv --exclude=__pycache__ --exclude=.pytest_cache \
    --exclude=workdirs --exclude=demo_out -czf "$tarball" .
  run "${TPU[@]}" scp "$tarball" "$NAME:svfap_jax.tgz" "${LOCATION[@]}" --worker=all --quiet
  if ((!DRY_RUN)); then
    rm -f "$tarball"
  fi
  # torch is only needed to read .pth files; the CPU wheel is not the default on PyPI, so it is
  # left out here (install it by hand for --config.init_from=*.pth).
  local install="set -e; rm -rf $REMOTE_DIR; mkdir -p $REMOTE_DIR; tar -xzf \$HOME/svfap_jax.tgz -C $REMOTE_DIR"
  install+="; (python3 -m venv $VENV || (sudo apt-get update -q && sudo apt-get install -y -q python3-venv && python3 -m venv $VENV))"
  install+="; $VENV/bin/pip install -q -U pip"
  install+="; grep -v '^torch' $REMOTE_DIR/requirements.txt > \$HOME/svfap_requirements.txt"
  install+="; $VENV/bin/pip install -q -r \$HOME/svfap_requirements.txt 'jax[tpu]>=0.10.2,<0.11'"
  install+="; $VENV/bin/pip install -q --no-deps -e $REMOTE_DIR"
  on_workers all "$install"
  if [[ -n "$GCSFUSE" ]]; then
    local bucket="${GCSFUSE%%:*}" mount="${GCSFUSE#*:}"
    [[ "$bucket" != "$GCSFUSE" && -n "$mount" ]] || die "--gcsfuse wants BUCKET:MOUNT"
    local fuse="set -e; if ! command -v gcsfuse >/dev/null; then"
    fuse+=" export GCSFUSE_REPO=gcsfuse-\$(lsb_release -c -s);"
    fuse+=" echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt \$GCSFUSE_REPO main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list;"
    fuse+=" curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null;"
    fuse+=" sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; fi"
    fuse+="; sudo mkdir -p $mount && sudo chown \$USER $mount"
    fuse+="; mountpoint -q $mount || gcsfuse --implicit-dirs -o ro $bucket $mount"
    on_workers all "$fuse"
  fi
}

start_run() {
  [[ -n "$CONFIG" ]] || die "--config is required to start a run"
  [[ -n "$WORKDIR" ]] || die "--workdir is required to start a run"
  [[ "$WORKDIR" == gs://* ]] ||
    echo "tpu_pod.sh: warning: --workdir $WORKDIR is not gs://; every worker writes its own copy" >&2
  local cmd
  cmd="$(quote python -m svfap_jax "$COMMAND" --config "$CONFIG" --workdir "$WORKDIR" ${EXTRA[@]+"${EXTRA[@]}"})"
  # nohup + a pid file: the run outlives this ssh session and can be stopped with --stop.
  on_workers all "cd $REMOTE_DIR && SVFAP_DISTRIBUTED=1 PATH=$VENV/bin:\$PATH nohup $cmd > $LOG 2>&1 < /dev/null & echo \$! > $PID"
}

follow_logs() {
  echo "tpu_pod.sh: streaming worker 0 ($LOG); Ctrl-C stops the stream, not the run" >&2
  on_workers 0 "tail -n +1 -F $LOG"
}

case "$ACTION" in
  delete)
    run "${TPU[@]}" delete "$NAME" "${LOCATION[@]}" --quiet
    ;;
  stop)
    on_workers all "test -f $PID && kill -TERM \$(cat $PID) || true"
    ;;
  logs)
    follow_logs
    ;;
  setup)
    ensure_slice
    setup_workers
    ;;
  run)
    ensure_slice
    if ((SETUP)); then
      setup_workers
    fi
    start_run
    if ((FOLLOW)); then
      follow_logs
    fi
    ;;
esac
exit 0
