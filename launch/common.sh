# Helpers shared by the launchers; sourced, not run.
# shellcheck shell=bash

# die MESSAGE: prints "<script>: MESSAGE" to stderr and exits 2 (a usage error).
die() {
  echo "${0##*/}: $*" >&2
  exit 2
}

# quote ARGS...: the arguments as one shell-safe line (for --dry-run output and remote commands).
quote() {
  local arg out=""
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@,+%^-]+$ ]]; then
      out+=" $arg"
    else
      out+=" '${arg//\'/\'\\\'\'}'"
    fi
  done
  printf '%s' "${out# }"
}

# check_run_args COMMAND CONFIG WORKDIR: the checks every launcher makes before doing anything.
check_run_args() {
  [[ -n "$2" ]] || die "--config is required"
  [[ -n "$3" ]] || die "--workdir is required"
  case "$1" in
    pretrain | finetune | kfold | evaluate) ;;
    *) die "--command must be pretrain, finetune, kfold or evaluate (got $1)" ;;
  esac
}
